"""`autoseg evaluate-dose`: segmentation accuracy per simulated dose group, beside image quality.

For every dose f (full dose, f = 1, is always included: it is the reference), each image is
simulated (seeded as in simulate-dose), predicted by the model (the folds given are one ensemble),
and scored against its reference label: Dice and IoU per foreground class and overall (the mean
over the classes present in the reference), and PSNR/SSIM of the simulated image against the
original. Per dose group: mean and SD of each, mean PSNR and SSIM, and the p-value of a paired
Wilcoxon signed-rank test of the per-image overall Dice against full dose (scipy; 1.0 when every
pair is equal). The simulator protocol is the model's own when it was trained with the
cervical-lowdose task, else the default.

Outputs in OUT_DIR: dose_<f>/images and dose_<f>/predictions, dose_summary.json, dose_summary.csv
(one row per dose), dose_cases.csv (one row per image and dose) and dose_curve.png.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from autoseg import io, schema
from autoseg.errors import ConfigError
from autoseg.evaluation import case_metrics
from autoseg.inference.inputs import CaseInput, discover_cases
from autoseg.modalities.xray_dose import LowDoseProtocol
from autoseg.progress import ProgressFactory, task
from autoseg.tasks import cervical_lowdose, resolve
from autoseg.tasks.dose_curve import write_dose_curve
from autoseg.tasks.dose_study import check_doses, check_images, image_quality, image_seed, simulate_image, write_csv

log = logging.getLogger(__name__)

SUMMARY_JSON, SUMMARY_CSV, CASES_CSV, CURVE_PNG = "dose_summary.json", "dose_summary.csv", "dose_cases.csv", "dose_curve.png"
DEFAULT_DOSES = (1.0, 0.5, 0.25, 0.1, 0.075)


@dataclass(frozen=True)
class DoseEvaluation:
    groups: list[dict]  # per dose, full dose first
    cases: list[dict]  # per image and dose
    summary_json: Path
    summary_csv: Path
    cases_csv: Path
    curve_png: Path


# ---------------------------------------------------------------- inputs, checked before any work
def matched_cases(images_dir: Path, labels_dir: Path) -> list[tuple[CaseInput, Path]]:
    """Each case of `images_dir` with its label file in `labels_dir` (same case id); a folder pair
    that does not match is one error naming every case without a partner."""
    cases = discover_cases(images_dir)
    if not labels_dir.is_dir():
        raise ConfigError(f"{labels_dir}: label folder (-r) not found")
    labels = {_stem(p): p for p in labels_dir.iterdir() if p.is_file() and io.file_ending(p) in io.IMAGE_ENDINGS}
    missing = [c.case_id for c in cases if c.case_id not in labels]
    unused = sorted(set(labels) - {c.case_id for c in cases})
    if missing or unused:
        parts = ([f"no label for {_listed(missing)}"] if missing else []) + ([f"labels without an image: {_listed(unused)}"] if unused else [])
        raise ConfigError(f"{labels_dir}: the label folder does not match the images in {images_dir} ({'; '.join(parts)}); "
                          "labels must be named like the cases (CASE<ending> for CASE_0000<ending>)")
    pairs = [(c, labels[c.case_id]) for c in cases]
    for case, label in pairs:
        image_shape = io.read_image_info(case.files[0])[0]
        label_shape = io.read_image_info(label)[0]
        if image_shape != label_shape:
            raise ConfigError(f"{label}: label shape {label_shape} differs from its image {case.files[0]} {image_shape}")
    return pairs


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(io.file_ending(path))]


def _listed(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _check_output(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: output folder (-o) exists and is not empty; choose a new folder")


def protocol_for(config) -> LowDoseProtocol:
    """The model's own simulator protocol when it was trained for this task, else the default."""
    if config.task is not None and config.task.name == cervical_lowdose.NAME:
        return resolve(config.task)[1].protocol()
    return LowDoseProtocol()


# ---------------------------------------------------------------- the command
def evaluate_dose(models: Sequence[str | Path], images_dir: str | Path, labels_dir: str | Path, out_dir: str | Path,
                  doses: Sequence[float] = DEFAULT_DOSES, seed: int = 0, device: str = "auto", tta: bool = True,
                  progress: ProgressFactory | None = None) -> DoseEvaluation:
    from autoseg.inference.ensemble import load_models
    from autoseg.inference.predictor import Predictor

    images_dir, labels_dir, out_dir = Path(images_dir), Path(labels_dir), Path(out_dir)
    doses = tuple(sorted(set(check_doses(list(doses))) | {1.0}, reverse=True))
    pairs = matched_cases(images_dir, labels_dir)
    check_images([f for case, _ in pairs for f in case.files], progress)
    _check_output(out_dir)
    predictor = Predictor(load_models(models, device), device, tta=tta)
    protocol = protocol_for(predictor.ensemble.config)
    labels = {name: value for name, value in predictor.ensemble.labels.items() if value != 0}
    advance = task(progress, "Simulating, predicting, scoring", len(pairs) * len(doses))
    with _quiet("autoseg.inference.predictor"):  # a "wrote" line per image and dose would bury the progress
        rows = [row for dose in doses
                for row in _evaluate_group(predictor, pairs, dose, out_dir / f"dose_{dose:g}", seed, protocol, labels, advance)]
    groups = summarize(rows, doses, labels)
    return _write_outputs(out_dir, rows, groups, models, images_dir, labels_dir, seed, protocol)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _evaluate_group(predictor, pairs, dose: float, folder: Path, seed: int, protocol: LowDoseProtocol,
                    labels: dict[str, int], advance) -> list[dict]:
    rows = []
    for case, label_path in pairs:
        image, geometry = _read_channels(case)
        simulated = simulate_image(image, geometry.spacing_zyx, dose, protocol,
                                   image_seed(seed, case.files[0].name, dose))
        written = _write_simulated(folder / "images", case, simulated, geometry)
        prediction = predictor.predict_file(written, folder / "predictions" / case.output_name())
        reference, _ = io.read_label(label_path)
        predicted, _ = io.read_label(prediction)
        metrics = case_metrics(predicted, reference, geometry.spacing_zyx, list(labels.values()))
        peak, similarity = image_quality(image, simulated)
        rows.append(_case_row(case.case_id, dose, metrics, labels, peak, similarity))
        advance(1)
    return rows


def _write_simulated(folder: Path, case: CaseInput, simulated: np.ndarray, geometry: io.Geometry) -> list[Path]:
    """Under the input's file names: one channel per file, or all channels in one (colour) file."""
    if len(case.files) == 1:
        image = simulated[0] if simulated.shape[0] == 1 else simulated
        return [io.write_image(folder / case.files[0].name, image, geometry)]
    return [io.write_image(folder / f.name, channel, geometry) for f, channel in zip(case.files, simulated)]


def _read_channels(case: CaseInput) -> tuple[np.ndarray, io.Geometry]:
    arrays, geometries = zip(*(io.read_image(path) for path in case.files))
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), geometries[0]


def _case_row(case_id: str, dose: float, metrics: dict, labels: dict[str, int], peak: float, similarity: float) -> dict:
    row: dict = {"dose": dose, "case_id": case_id}
    for metric in ("dice", "iou"):
        scores = {name: (math.nan if metrics[value]["reference_empty"] else float(metrics[value][metric]))
                  for name, value in labels.items()}
        row.update({f"{metric}_{name}": score for name, score in scores.items()})
        present = [s for s in scores.values() if not math.isnan(s)]
        row[metric] = float(np.mean(present)) if present else math.nan
    row.update(psnr_db=peak, ssim=similarity)
    return row


# ---------------------------------------------------------------- summary
def summarize(rows: list[dict], doses: Sequence[float], labels: dict[str, int]) -> list[dict]:
    full = {r["case_id"]: r["dice"] for r in rows if r["dose"] == 1.0}
    groups = []
    for dose in doses:
        group = [r for r in rows if r["dose"] == dose]
        entry: dict = {"dose": dose, "n": len(group)}
        for key in ("dice", "iou", *(f"{m}_{name}" for m in ("dice", "iou") for name in labels)):
            entry.update(_mean_sd(key, [r[key] for r in group]))
        entry["psnr_db_mean"] = _finite_mean([r["psnr_db"] for r in group])
        entry["ssim_mean"] = float(np.mean([r["ssim"] for r in group]))
        entry["wilcoxon_p"] = None if dose == 1.0 else wilcoxon_p([r["dice"] for r in group], [full[r["case_id"]] for r in group])
        groups.append(entry)
    return groups


def _mean_sd(key: str, values: Sequence[float]) -> dict[str, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    mean = float(finite.mean()) if finite.size else math.nan
    sd = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan)
    return {f"{key}_mean": mean, f"{key}_sd": sd}


def _finite_mean(values: Sequence[float]) -> float | None:
    """Mean PSNR; None (unchanged images, infinite PSNR) at full dose."""
    return None if any(math.isinf(v) for v in values) else float(np.mean(values))


def wilcoxon_p(values: Sequence[float], reference: Sequence[float]) -> float | None:
    """Two-sided paired Wilcoxon signed-rank p-value; 1.0 when every pair is equal, None without pairs."""
    from scipy.stats import wilcoxon

    pairs = [(a, b) for a, b in zip(values, reference) if not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return None
    a, b = map(np.asarray, zip(*pairs))
    if np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def _write_outputs(out_dir: Path, rows: list[dict], groups: list[dict], models, images_dir: Path, labels_dir: Path,
                   seed: int, protocol: LowDoseProtocol) -> DoseEvaluation:
    document = {"models": [str(m) for m in models], "images": str(images_dir), "labels": str(labels_dir), "seed": seed,
                "protocol": schema.to_dict(protocol), "groups": groups, "cases": rows}
    summary_json = schema.write_json_atomic(out_dir / SUMMARY_JSON, schema.json_safe(_no_infinity(document)))
    summary_csv = write_csv(out_dir / SUMMARY_CSV, groups)
    cases_csv = write_csv(out_dir / CASES_CSV, rows)
    curve = write_dose_curve(out_dir / CURVE_PNG, groups)
    return DoseEvaluation(groups, rows, summary_json, summary_csv, cases_csv, curve)


def _no_infinity(value):
    """JSON has no Infinity: an unchanged image's PSNR is written as null."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: _no_infinity(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_infinity(v) for v in value]
    return value
