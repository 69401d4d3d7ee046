"""Compare autoseg's default planner with nnU-Net v2's ExperimentPlanner on the same datasets.

    .venv/bin/python benchmarks/plan_vs_nnunet.py [--nnunet-python /tmp/nnvenv/bin/python]
        [--data-dir ../shared/data] [--nnunet-plans /tmp/nn/pre] [--synthetic-only]

For each dataset both planners get the same facts: autoseg plans from an autoseg Fingerprint, and
nnU-Net's planner (`nnUNetv2_plan_experiment -d ID`, run in a subprocess with nnUNet_raw,
nnUNet_preprocessed and nnUNet_results pointing into a temporary folder) plans from the same
numbers written as nnU-Net's dataset_fingerprint.json. nnU-Net's planner reads only that file,
dataset.json (numTraining, channel_names, labels, file_ending) and one image of imagesTr (to pick
its reader class), so tiny stand-in image files are enough for the synthetic datasets.

Datasets: three synthetic fingerprints (a thick-slice CT, an isotropic MR, a high-resolution 2D
X-ray set) and the shared datasets 601/611/621/631. For a shared dataset autoseg measures the
fingerprint itself and nnU-Net plans from the same numbers ("same facts"); when nnU-Net has also
planned it end to end (`--nnunet-plans/DatasetXXX/nnUNetPlans.json`, from nnU-Net's own
fingerprint) a second row compares with that. The table goes to benchmarks/results/plan_vs_nnunet.md.

nnU-Net is not an autoseg dependency. The script skips (exit 0) when its venv is absent; make one:

    python -m venv /tmp/nnvenv
    /tmp/nnvenv/bin/pip install torch==2.13.0
    /tmp/nnvenv/bin/pip install -c <(echo torch==2.13.0) nnunetv2
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.config import CaseFingerprint, ChannelFingerprint, Fingerprint, IntensityStats, Plan
from autoseg.dataset import load_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.io import Geometry, write_image
from autoseg.planners import plan_dataset

log = logging.getLogger("plan_vs_nnunet")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "plan_vs_nnunet.md"
DEFAULT_NNUNET_PYTHON = Path("/tmp/nnvenv/bin/python")
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
DEFAULT_NNUNET_PLANS = Path("/tmp/nn/pre")
SHARED_DATASETS = ("Dataset601_SpineXrayAP", "Dataset611_LumbarCT", "Dataset621_SkeletonCT", "Dataset631_CordGM")
CONFIGS = ("2d", "3d_fullres", "3d_lowres")
GPU_MEMORY_GB = 8.0  # nnU-Net's default target


@dataclass(frozen=True)
class Summary:
    """The decisions compared, in numpy axis order."""

    spacing: tuple[float, ...]
    patch: tuple[int, ...]
    batch: int
    stages: int


# ---------------------------------------------------------------- synthetic fingerprints
def _stats(mean: float, std: float, low: float, high: float) -> IntensityStats:
    return IntensityStats(mean, std, mean, low, high, low, high)


def _fingerprint(name: str, channel: str, modality: str, stats: IntensityStats,
                 spacings: list[tuple[float, ...]], shapes: list[tuple[int, ...]]) -> Fingerprint:
    cases = tuple(
        CaseFingerprint(f"case_{i:03d}", sp, sh, sh, {"0": 0.9, "1": 0.1}, {"0": 0, "1": 1})
        for i, (sp, sh) in enumerate(zip(spacings, shapes))
    )
    return Fingerprint(name, len(shapes[0]), ".png" if len(shapes[0]) == 2 else ".nii.gz",
                       {"background": 0, "target": 1}, (ChannelFingerprint(channel, modality, stats),), cases)


def anisotropic_ct_cases(count: int = 60) -> tuple[list[tuple[float, ...]], list[tuple[int, ...]]]:
    """Thick-slice CT: 2.5-5 mm slices, 0.7-0.8 mm in-plane, 512x512, 200-300 mm of coverage
    (so 40-120 slices). Deterministic; tests/test_planner.py rebuilds the same cases."""
    spacings, shapes = [], []
    for i in range(count):
        slice_mm = 2.5 + 2.5 * ((i * 5) % 11) / 10
        in_plane = 0.7 + 0.1 * ((i * 7) % 11) / 10
        coverage_mm = 200 + 100 * ((i * 3) % 7) / 6
        spacings.append((slice_mm, in_plane, in_plane))
        shapes.append((round(coverage_mm / slice_mm), 512, 512))
    return spacings, shapes


def synthetic_fingerprints() -> dict[str, Fingerprint]:
    ct = anisotropic_ct_cases()
    mr_shapes = [(160 + (i * 7) % 31, 192 + (i * 11) % 41, 160 + (i * 13) % 29) for i in range(40)]
    xray_shapes = [(2000 + (i * 37) % 501, 1600 + (i * 53) % 401) for i in range(100)]
    return {
        "Dataset901_SynthThickCT": _fingerprint("Dataset901_SynthThickCT", "CT", "CT", _stats(300, 250, -100, 1500), *ct),
        "Dataset902_SynthIsoMR": _fingerprint("Dataset902_SynthIsoMR", "T1", "MR", _stats(400, 120, 100, 800),
                                              [(1.0, 1.0, 1.0)] * len(mr_shapes), mr_shapes),
        "Dataset903_SynthXray": _fingerprint("Dataset903_SynthXray", "xray", "xray", _stats(140, 45, 20, 240),
                                             [(0.143, 0.143)] * len(xray_shapes), xray_shapes),
    }


# ---------------------------------------------------------------- nnU-Net side
def nnunet_fingerprint_json(fp: Fingerprint) -> dict:
    """autoseg facts in nnU-Net's dataset_fingerprint.json format (2D images as 1 x H x W, spacing 999)."""
    def to3d(values, pad):
        return [pad, *values] if fp.ndim == 2 else list(values)

    ratios = [math.prod(c.cropped_shape) / math.prod(c.shape) for c in fp.cases]
    fg = {str(i): {k: getattr(c.foreground, k) for k in ("max", "mean", "median", "min", "percentile_00_5",
                                                          "percentile_99_5", "std")}
          for i, c in enumerate(fp.channels)}
    return {
        "foreground_intensity_properties_per_channel": fg,
        "median_relative_size_after_cropping": float(np.median(ratios)),
        "shapes_after_crop": [to3d(c.cropped_shape, 1) for c in fp.cases],
        "spacings": [to3d(c.spacing, 999.0) for c in fp.cases],
    }


def _dataset_json(fp: Fingerprint) -> dict:
    return {"channel_names": {str(i): c.name for i, c in enumerate(fp.channels)}, "labels": fp.labels,
            "numTraining": len(fp.cases), "file_ending": fp.file_ending}


def write_nnunet_inputs(fp: Fingerprint, raw: Path, preprocessed: Path, source: Path | None) -> None:
    """nnU-Net's raw folder (the real dataset, linked, or stand-in images) and its fingerprint file."""
    raw_dir = raw / fp.dataset_name
    if source is not None:
        raw_dir.symlink_to(source, target_is_directory=True)
    else:
        (raw_dir / "imagesTr").mkdir(parents=True)
        (raw_dir / "dataset.json").write_text(json.dumps(_dataset_json(fp), indent=2))
        tiny = np.zeros((2,) * fp.ndim, np.uint8)
        for case in fp.cases:
            write_image(raw_dir / "imagesTr" / f"{case.case_id}_0000{fp.file_ending}", tiny, Geometry.default(fp.ndim))
    (preprocessed / fp.dataset_name).mkdir(parents=True)
    text = json.dumps(nnunet_fingerprint_json(fp), indent=2)
    (preprocessed / fp.dataset_name / "dataset_fingerprint.json").write_text(text)


def run_nnunet_planner(nnunet_python: Path, fp: Fingerprint, source: Path | None) -> dict:
    """nnU-Net's nnUNetPlans.json for `fp`, planned in a throwaway nnUNet_* tree."""
    dataset_id = int(fp.dataset_name[len("Dataset"):len("Dataset") + 3])
    with tempfile.TemporaryDirectory(prefix="plan_vs_nnunet_") as tmp:
        raw, pre, results = (Path(tmp) / n for n in ("raw", "pre", "results"))
        for folder in (raw, pre, results):
            folder.mkdir()
        write_nnunet_inputs(fp, raw, pre, source)
        env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(results)}
        command = [str(nnunet_python.parent / "nnUNetv2_plan_experiment"), "-d", str(dataset_id)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed for {fp.dataset_name}:\n{done.stderr[-3000:]}")
        return json.loads((pre / fp.dataset_name / "nnUNetPlans.json").read_text())


def nnunet_summaries(plans: dict) -> dict[str, Summary]:
    """Configurations of an nnUNetPlans.json, 3D ones transposed back to the image's axis order."""
    forward = plans["transpose_forward"]
    summaries = {}
    for name, cfg in plans["configurations"].items():
        if name not in CONFIGS:
            continue  # 3d_cascade_fullres only refers to the others
        spacing, patch = list(cfg["spacing"]), list(cfg["patch_size"])
        if len(patch) == 3:
            spacing, patch = _untranspose(spacing, forward), _untranspose(patch, forward)
        stages = cfg["architecture"]["arch_kwargs"]["n_stages"]
        summaries[name] = Summary(tuple(map(float, spacing)), tuple(map(int, patch)), int(cfg["batch_size"]), stages)
    return summaries


def _untranspose(values: list, forward: list[int]) -> list:
    result = [None] * len(values)
    for position, axis in enumerate(forward):
        result[axis] = values[position]
    return result


def nnunet_version(nnunet_python: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('nnunetv2'))"
    return subprocess.run([str(nnunet_python), "-c", code], capture_output=True, text=True).stdout.strip() or "?"


# ---------------------------------------------------------------- autoseg side
def autoseg_summaries(plan: Plan) -> dict[str, Summary]:
    return {
        name: Summary(tuple(cfg.spacing), tuple(cfg.patch_size), cfg.batch_size, cfg.network.num_stages)
        for name, cfg in plan.configurations.items()
    }


# ---------------------------------------------------------------- comparison
def _fmt(values, digits: int = 3) -> str:
    return "x".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def verdict(ours: Summary, theirs: Summary) -> tuple[float, str]:
    """Patch voxel ratio (ours / nnU-Net) and 'ok' when the spacing matches (1%) and patch voxels
    and batch size are within a factor of 2; otherwise what differs."""
    patch_ratio = math.prod(ours.patch) / math.prod(theirs.patch)
    batch_ratio = ours.batch / theirs.batch
    problems = []
    if not np.allclose(ours.spacing, theirs.spacing, rtol=0.01):
        problems.append("spacing differs")
    if not 0.5 <= patch_ratio <= 2:
        problems.append(f"patch {patch_ratio:.2f}x")
    if not 0.5 <= batch_ratio <= 2:
        problems.append(f"batch {batch_ratio:.2f}x")
    return patch_ratio, "ok" if not problems else ", ".join(problems)


def table_rows(dataset: str, source: str, ours: dict[str, Summary], theirs: dict[str, Summary]) -> list[str]:
    rows = []
    for name in CONFIGS:
        a, b = ours.get(name), theirs.get(name)
        if a is None and b is None:
            continue
        if a is None or b is None:
            only = "autoseg" if b is None else "nnU-Net"
            s = a or b
            cells = [_fmt(s.spacing), _fmt(s.patch), str(s.batch), str(s.stages)]
            cells = [f"{c} / -" if b is None else f"- / {c}" for c in cells]
            rows.append(f"| {dataset} | {source} | {name} | " + " | ".join(cells) + f" | - | only {only} |")
            continue
        ratio, text = verdict(a, b)
        rows.append(f"| {dataset} | {source} | {name} | {_fmt(a.spacing)} / {_fmt(b.spacing)} | {_fmt(a.patch)} / "
                    f"{_fmt(b.patch)} | {a.batch} / {b.batch} | {a.stages} / {b.stages} | {ratio:.2f} | {text} |")
    return rows


def render(rows: list[str], version: str) -> str:
    ok = sum(1 for r in rows if r.endswith("| ok |"))
    return "\n".join([
        "# autoseg vs nnU-Net v2: planned configurations",
        "",
        f"Produced by `benchmarks/plan_vs_nnunet.py` with nnU-Net {version} (`ExperimentPlanner`, the default",
        f"`nnUNetPlans`) and autoseg's `default` planner, both at a {GPU_MEMORY_GB:g} GB GPU memory target.",
        "Cells read `autoseg / nnU-Net`; sizes and spacings in numpy axis order (z, y, x) / (y, x).",
        "`source`: `same facts` means nnU-Net planned from autoseg's fingerprint; `nnU-Net end to end`",
        "means nnU-Net's own plans (its own fingerprint of the same images).",
        "Verdict `ok`: spacing within 1%, patch voxels and batch size within a factor of 2.",
        "",
        "| dataset | source | config | spacing (mm) | patch | batch | stages | patch voxel ratio | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"{ok} of {len(rows)} configurations ok.",
        "",
        "Why they can differ: both planners share the rules for target spacing, topology (pooling and",
        "kernel sizes), the 5% batch cap and the 3d_lowres coarsening step; the memory model differs",
        "(autoseg asks its network for the activations it keeps, nnU-Net scales reference constants),",
        "so patch and batch sizes (and with the patch, the number of stages) differ.",
        "3d_lowres coarsens the spacing until its patch covers 25% of the median image, so a larger",
        "fullres patch stops the coarsening earlier: a lowres spacing difference follows from the patch.",
        "",
    ])


# ---------------------------------------------------------------- driver
def compare_synthetic(nnunet_python: Path) -> list[str]:
    rows = []
    for name, fp in synthetic_fingerprints().items():
        log.info("planning %s", name)
        theirs = nnunet_summaries(run_nnunet_planner(nnunet_python, fp, None))
        rows += table_rows(name, "same facts", autoseg_summaries(plan_dataset(fp, GPU_MEMORY_GB)), theirs)
    return rows


def compare_shared(nnunet_python: Path, data_dir: Path, nnunet_plans: Path) -> list[str]:
    rows = []
    for name in SHARED_DATASETS:
        if not (data_dir / name).is_dir():
            log.warning("skipping %s: not found in %s", name, data_dir)
            continue
        log.info("fingerprinting and planning %s", name)
        fp = compute_fingerprint(load_dataset(data_dir / name), workers=2)
        ours = autoseg_summaries(plan_dataset(fp, GPU_MEMORY_GB))
        same_facts = run_nnunet_planner(nnunet_python, fp, data_dir / name)
        rows += table_rows(name, "same facts", ours, nnunet_summaries(same_facts))
        existing = nnunet_plans / name / "nnUNetPlans.json"
        if existing.is_file():
            end_to_end = json.loads(existing.read_text())
            rows += table_rows(name, "nnU-Net end to end", ours, nnunet_summaries(end_to_end))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare autoseg's plans with nnU-Net v2's on the same datasets.")
    parser.add_argument("--nnunet-python", type=Path, default=DEFAULT_NNUNET_PYTHON)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--nnunet-plans", type=Path, default=DEFAULT_NNUNET_PLANS,
                        help="nnUNet_preprocessed folder holding nnU-Net's own plans of the shared datasets")
    parser.add_argument("--synthetic-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.nnunet_python.is_file():
        log.warning("nnU-Net venv not found (%s); skipping. See this script's docstring to create it.", args.nnunet_python)
        return 0
    rows = compare_synthetic(args.nnunet_python)
    if not args.synthetic_only:
        rows += compare_shared(args.nnunet_python, args.data_dir, args.nnunet_plans)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, nnunet_version(args.nnunet_python)))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
