"""Prediction speed, peak memory and Dice on this machine's CPU.

    .venv/bin/python benchmarks/predict_speed.py --xray-run RUN_2D --ct-run RUN_3D [--cases 20]

RUN_2D: a 2d run of ../shared/data/Dataset601_SpineXrayAP (e.g. `autoseg train ... 2d 0 --time-budget 10m`);
its fold's validation cases (unseen in training) are predicted. RUN_3D: a 3d_fullres run trained on the
lumbar-ct phantom at clinical spacing (`autoseg example lumbar-ct DIR --scale 2.5`); unseen phantom
cases (another seed, 96x160x160 at ~2.6x0.86x0.86 mm) are predicted. Training that model to a useful
Dice takes hours on this CPU, so `--ct-small-run` adds a 3D model that trains in minutes, to check
that the variants keep a trained model's Dice: the same phantom at scale 1.25 with L1-L5 and sacrum
merged into one class, written by `--prepare-ct-small DIR` and trained with
`autoseg train DIR/Dataset903_LumbarCT 3d_fullres 0 --time-budget 15m`. Every variant runs in a fresh subprocess; the table gives the wall time per
case (model loading, read, preprocess, sliding window, resample back, write; the process start and
`import torch` are not counted), the peak resident memory of the process tree and the mean
foreground Dice of the predictions.

Variants: `patch tiles, fp32` is nnU-Net's way (patch-sized tiles at half-patch steps, fp32 on CPU);
`patch tiles, bf16` adds bfloat16 autocast (`autoseg predict`'s default on CPUs with AVX512-BF16/AMX);
`grown tiles` lets tiles grow up to 1.5x the patch where that computes fewer voxels (opt-in,
`--max-tile-growth 1.5`). `agree` is the fraction of voxels whose label equals the
`patch tiles, fp32` prediction (a check that holds even for a briefly trained model).

`--nnunet-python PY` adds nnU-Net v2 itself, measured in the same run on the same cases (xray and ct;
benchmarks/nnunet_predict.py, run with nnU-Net's interpreter): `nnU-Net v2, own plan` is nnU-Net
with the network and patch its planner picks for the training dataset (xray: Dataset601; ct: the raw
dataset the ct run was trained on, `--ct-data`), `nnU-Net v2, same patch` the same network with
autoseg's patch, i.e. the very tiles of `patch tiles, fp32`. Its networks carry random weights (its
speed does not depend on them), so those rows have no Dice. Make the venv as in plan_vs_nnunet.py.
Results are appended to benchmarks/results/predict_speed.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from process_tree import PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
XRAY = ROOT.parent / "shared" / "data" / "Dataset601_SpineXrayAP"
VARIANTS = {  # name: (precision, max_tile_growth); the first is the reference for `agree`
    "patch tiles, fp32": ("fp32", 1.0),
    "patch tiles, bf16": ("bf16", 1.0),
    "grown tiles, bf16": ("bf16", 1.5),
}
# nnU-Net v2's rows: name -> (patch: "own" plan or autoseg's "same" patch, TTA modes measured). With its
# own plan and TTA, nnU-Net needs ~15 minutes for two CT cases; the same-patch row covers TTA.
NNUNET_VARIANTS = {
    "nnU-Net v2, own plan": ("own", ("no-tta",)),
    "nnU-Net v2, same patch": ("same", ("no-tta", "tta")),
}
NNUNET_CONFIG = {"xray": "2d", "ct": "3d_fullres"}
OUT = Path("/tmp/autoseg_predict_bench")


def _xray_cases(run: Path, count: int) -> tuple[list[Path], Path]:
    val = json.loads((run / "run.json").read_text())["val_cases"][:count]
    return [XRAY / "imagesTr" / f"{case}_0000.png" for case in val], XRAY / "labelsTr"


CT_SCALES = {"ct": 2.5, "ct-small": 1.25}  # phantom grid refinement per CT scenario


def _ct_cases(scenario: str, count: int) -> tuple[list[Path], Path]:
    from autoseg import api

    root = OUT / f"{scenario}_unseen"
    folder = root / "Dataset903_LumbarCT"
    if len(list(folder.glob("imagesTr/*_0000.nii.gz"))) < count:  # thicker slices than in training: other tile sizes
        api.example("lumbar-ct", root, cases=count, seed=101, scale=CT_SCALES[scenario], slice_factor=0.8, overwrite=True)
        if scenario == "ct-small":
            merge_labels(folder)
    return sorted((folder / "imagesTr").glob("*_0000.nii.gz"))[:count], folder / "labelsTr"


def prepare_ct_small(out_dir: Path) -> Path:
    """Training data for the ct-small model: 10 lumbar-ct phantoms at scale 1.25, labels merged."""
    from autoseg import api

    folder = api.example("lumbar-ct", out_dir, cases=10, seed=0, scale=CT_SCALES["ct-small"])
    merge_labels(folder)
    return folder


def merge_labels(folder: Path) -> None:
    """L1-L5 and sacrum as one class `spine` (a model that learns it in minutes; naming the levels
    takes hours of CPU training). Rewrites this benchmark's own generated files."""
    import numpy as np

    from autoseg.io import read_label, write_image

    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        label, geometry = read_label(path)
        write_image(path, (label > 0).astype(np.uint8), geometry)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "spine": 1}
    meta["description"] += " Labels merged into one class (benchmarks/predict_speed.py)."
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))


def _cases(scenario: str, run: str, count: int) -> tuple[list[Path], Path]:
    """A scenario's unseen image files and its reference label folder."""
    if scenario == "xray":
        return _xray_cases(Path(run), count)
    if scenario in CT_SCALES:
        return _ct_cases(scenario, count)
    folder = Path(scenario.split(":", 1)[1])  # "cxr:<dataset folder>"
    return sorted((folder / "imagesTr").glob("*.png"))[:count], folder / "labelsTr"


def child(args) -> None:
    """Predict in this process and write timing + Dice as JSON."""
    import torch  # noqa: F401  (imported before the clock starts: process start-up, not prediction)

    from autoseg import api
    from autoseg.inference.inputs import CaseInput
    from autoseg.io import file_ending

    files, labels = _cases(args.scenario, args.run, args.cases)
    precision, growth = VARIANTS[args.variant]
    out = _output_dir(args.scenario, args.variant, args.tta)
    shutil.rmtree(out, ignore_errors=True)
    cases = [CaseInput(f.name.split("_0000")[0], (f,), file_ending(f)) for f in files]  # ids as in labelsTr
    started = time.perf_counter()
    api.predict_folder(cases, out, [args.run], tta=args.tta == "tta", precision=precision, max_tile_growth=growth, device="cpu")
    seconds = (time.perf_counter() - started) / len(files)
    dice = api.evaluate(out, labels, workers=1, case_ids=[c.case_id for c in cases]).mean_foreground_dice
    Path(args.result).write_text(json.dumps({"seconds_per_case": seconds, "dice": dice, "cases": len(files)}))


def _output_dir(scenario: str, variant: str, tta: str) -> Path:
    return OUT / f"{scenario.split(':')[0]}-{variant.replace(', ', '-').replace(' ', '_')}-{tta}"


def label_agreement(folder: Path, reference: Path) -> float:
    """Fraction of voxels, over all cases, whose predicted label equals the reference prediction's."""
    import numpy as np

    from autoseg.io import read_label

    same = total = 0
    for ref in sorted(p for p in reference.iterdir() if not p.name.startswith("summary")):
        a, b = read_label(folder / ref.name)[0], read_label(ref)[0]
        same, total = same + int(np.count_nonzero(a == b)), total + a.size
    return same / max(total, 1)


def measure(scenario: str, run: str, variant: str, tta: str, cases: int) -> dict:
    result = OUT / "result.json"
    command = [sys.executable, __file__, "--child", scenario, "--run", run, "--variant", variant, "--tta", tta,
               "--cases", str(cases), "--result", str(result)]
    with PeakMemory() as peak:
        subprocess.run(command, check=True, cwd=ROOT)
    reference = _output_dir(scenario, next(iter(VARIANTS)), tta)
    return {**json.loads(result.read_text()), "peak_gb": peak.peak / 1024**3, "scenario": scenario, "variant": variant, "tta": tta,
            "agree": label_agreement(_output_dir(scenario, variant, tta), reference)}


def measure_nnunet(scenario: str, run: str, variant: str, tta: str, cases: int, python: str, dataset: Path) -> dict:
    from autoseg.checkpoint import config_plan_of, load_checkpoint
    from autoseg.inference.ensemble import resolve_checkpoint

    files = _cases(scenario, run, cases)[0]
    result, out = OUT / "result.json", _output_dir(scenario, variant, tta)
    shutil.rmtree(out, ignore_errors=True)
    command = [python, str(ROOT / "benchmarks" / "nnunet_predict.py"), "--dataset", str(dataset), "--config", NNUNET_CONFIG[scenario],
               "--work", str(OUT / "nnunet"), "--out", str(out), "--result", str(result), *(["--tta"] if tta == "tta" else [])]
    if NNUNET_VARIANTS[variant][0] == "same":
        patch = config_plan_of(load_checkpoint(resolve_checkpoint(run), mmap=True)).patch_size
        command += ["--patch-size", ",".join(str(p) for p in patch)]
    with PeakMemory() as peak:
        done = subprocess.run([*command, *map(str, files)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"nnU-Net ({variant}, {scenario}, {tta}) failed:\n{done.stderr[-3000:]}")
    return {**json.loads(result.read_text()), "peak_gb": peak.peak / 1024**3, "scenario": scenario, "variant": variant,
            "tta": tta, "dice": None, "agree": None}


def _nnunet_rows(jobs, args) -> list[dict]:
    datasets = {"xray": XRAY, "ct": Path(args.ct_data) if args.ct_data else None}
    return [measure_nnunet(s, run, v, t, n, args.nnunet_python, datasets[s])
            for s, run, n in jobs if s in NNUNET_CONFIG for v, (_, modes) in NNUNET_VARIANTS.items() for t in modes]


def _cell(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xray-run")
    parser.add_argument("--ct-run")
    parser.add_argument("--prepare-ct-small", metavar="DIR", help="write the ct-small training dataset into DIR and exit")
    parser.add_argument("--ct-small-run", help="a 3d_fullres run on --prepare-ct-small's dataset (a 3D Dice check)")
    parser.add_argument("--cxr-run", help="a run of the cervical-xray phantom (e.g. make demo's), for a Dice check on a well-trained model")
    parser.add_argument("--cxr-data", help="unseen cervical-xray phantom dataset folder (e.g. demo_work/test_data/Dataset901_CervicalXray)")
    parser.add_argument("--cases", type=int, default=20, help="X-ray cases")
    parser.add_argument("--ct-cases", type=int, default=2, help="CT phantom cases")
    parser.add_argument("--nnunet-python", help="nnU-Net v2's python: adds nnU-Net's own timings (xray, ct)")
    parser.add_argument("--ct-data", help="the raw dataset the --ct-run was trained on (nnU-Net plans it)")
    parser.add_argument("--child")
    parser.add_argument("--run")
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--tta", choices=("tta", "no-tta"))
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.child:
        args.scenario = args.child
        return child(args)
    if args.prepare_ct_small:
        return print(prepare_ct_small(Path(args.prepare_ct_small)))
    OUT.mkdir(parents=True, exist_ok=True)
    jobs = [("xray", args.xray_run, args.cases)] if args.xray_run else []
    jobs += [("ct", args.ct_run, args.ct_cases)] if args.ct_run else []
    jobs += [("ct-small", args.ct_small_run, args.cases)] if args.ct_small_run else []
    jobs += [(f"cxr:{args.cxr_data}", args.cxr_run, args.cases)] if args.cxr_run else []
    if args.nnunet_python and args.ct_run and not args.ct_data:
        parser.error("--nnunet-python with --ct-run needs --ct-data (the dataset nnU-Net plans)")
    rows = [measure(s, run, v, t, n) for s, run, n in jobs for t in ("no-tta", "tta") for v in VARIANTS]
    rows += _nnunet_rows(jobs, args) if args.nnunet_python else []
    lines = [f"\n### {time.strftime('%Y-%m-%d')}, CPU (2 cores)\n",
             "| data | TTA | variant | s/case | peak memory | mean fg Dice | agree | cases |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario'].split(':')[0]} | {r['tta']} | {r['variant']} | {r['seconds_per_case']:.2f} | {r['peak_gb']:.2f} GB | "
              f"{_cell(r['dice'])} | {_cell(r['agree'])} | {r['cases']} |" for r in rows]
    results = ROOT / "benchmarks" / "results" / "predict_speed.md"
    with results.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
