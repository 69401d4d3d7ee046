"""Regional DTI metrics: mean FA, MD, AD, RD and voxel count per case and region, and the FA-index
error of a segmentation against a reference (`autoseg dti-metrics`, and the dti-cord report).

dti_metrics.csv is shaped like Spinal Cord Toolbox's `sct_extract_metric` output: one row per
case, metric and region with the slices covered, the region's size in voxels, the mean inside the
binary region (column "BIN()") and its standard deviation ("STD()"). With references,
fa_error.csv gives per case and region FA(pred), FA(ref) and the FA-index error
|FA(pred) - FA(ref)| / FA(ref) in percent (the measure of the SCS-Net study), and
fa_error_summary.csv its mean and SD over cases per region, left and right side by side.
"""
from __future__ import annotations

import csv
import datetime
import io as text_io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg.atomic import atomic_write
from autoseg.errors import DatasetError
from autoseg.io import IMAGE_ENDINGS, Geometry, file_ending, read_label
from autoseg.modalities import dti, dwi
from autoseg.tasks.cord_regions import label_names

log = logging.getLogger(__name__)

METRICS = ("FA", "MD", "AD", "RD")
METRICS_CSV, ERROR_CSV, ERROR_SUMMARY_CSV = "dti_metrics.csv", "fa_error.csv", "fa_error_summary.csv"
SCT_COLUMNS = ("Timestamp", "Software", "Filename", "Case", "Metric", "Slice (I->S)", "VertLevel", "Label",
               "Size [vox]", "BIN()", "STD()")


@dataclass(frozen=True)
class RegionValue:
    """One metric inside one region."""

    voxels: int
    mean: float | None
    std: float | None
    slices: str  # "first:last" slice index along the slowest axis, "" when empty


@dataclass
class CaseMetrics:
    case_id: str
    dwi_path: Path
    values: dict[str, dict[str, RegionValue]] = field(default_factory=dict)  # metric -> region -> value


# ---------------------------------------------------------------- computing
def region_values(maps: dict[str, np.ndarray], labels: np.ndarray,
                  names: dict[str, int]) -> dict[str, dict[str, RegionValue]]:
    """metric -> region name -> RegionValue, background left out."""
    result: dict[str, dict[str, RegionValue]] = {}
    for metric, values in maps.items():
        per_region = {}
        for name, value in names.items():
            if value == 0:
                continue
            inside = labels == value
            count = int(inside.sum())
            picked = values[inside]
            span = np.flatnonzero(inside.any(axis=tuple(range(1, inside.ndim))))
            per_region[name] = RegionValue(count, float(picked.mean()) if count else None,
                                           float(picked.std()) if count else None,
                                           f"{span[0]}:{span[-1]}" if count else "")
        result[metric] = per_region
    return result


def fa_index_error(fa_pred: float | None, fa_ref: float | None) -> float | None:
    """|FA(pred) - FA(ref)| / FA(ref) in percent; None when either region is empty or FA(ref) is 0."""
    if fa_pred is None or fa_ref is None or fa_ref <= 0:
        return None
    return abs(fa_pred - fa_ref) / fa_ref * 100.0



# ---------------------------------------------------------------- folders
def label_files(folder: Path, what: str) -> dict[str, Path]:
    """case id -> label file of a folder (names as for DWI cases: ending and a trailing _dwi dropped)."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder not found")
    files = {dwi.case_id_of(p): p for p in sorted(folder.iterdir())
             if p.is_file() and file_ending(p) in IMAGE_ENDINGS and not p.name.startswith(".")}
    if not files:
        raise DatasetError(f"{folder}: no label files in the {what} folder")
    return files


def matched_cases(dwi_files: Sequence[Path], predictions: dict[str, Path],
                  references: dict[str, Path] | None) -> list[tuple[str, Path, Path, Path | None]]:
    """(case, DWI, prediction, reference) for every predicted case; a missing partner is an error."""
    by_case = {dwi.case_id_of(p): p for p in dwi_files}
    no_dwi = sorted(set(predictions) - set(by_case))
    if no_dwi:
        raise DatasetError(f"predictions without a DWI series: {', '.join(no_dwi)}; name each prediction like its "
                           "case (CASE.nii.gz for CASE_dwi.nii.gz or CASE.nii.gz)")
    if references is not None and set(predictions) - set(references):
        missing = ", ".join(sorted(set(predictions) - set(references)))
        raise DatasetError(f"no reference label for: {missing}; the reference folder must hold every predicted case")
    return [(c, by_case[c], predictions[c], references[c] if references is not None else None)
            for c in sorted(predictions)]


def read_on_grid(path: Path, geometry: Geometry, shape: tuple[int, ...]) -> np.ndarray:
    label, found = read_label(path)
    if label.shape != shape or not found.matches(geometry):
        raise DatasetError(f"{path}: label grid {label.shape} does not match its DWI's grid {shape} (spacing, origin "
                           "and direction must agree); predict on the DWI or its b=0 image")
    return label


def case_metrics(case_id: str, dwi_path: Path, prediction: Path, reference: Path | None,
                 fit_method: str = "WLS", b0_threshold: float = dwi.B0_THRESHOLD) -> tuple[CaseMetrics, CaseMetrics | None, dict[str, int]]:
    """Metrics of one case inside the predicted regions (and the reference ones)."""
    series = dwi.read_dwi(dwi_path)
    shape = series.data.shape[1:]
    pred = read_on_grid(prediction, series.geometry, shape)
    ref = read_on_grid(reference, series.geometry, shape) if reference is not None else None
    seen = set(np.unique(pred).tolist()) | (set(np.unique(ref).tolist()) if ref is not None else set())
    names = label_names(seen, f"{prediction}" + (f", {reference}" if reference is not None else ""))
    maps = dti.fit_tensor(series.data, series.bvals, series.bvecs, fit_method=fit_method,
                          b0_threshold=b0_threshold).maps()
    predicted = CaseMetrics(case_id, dwi_path, region_values(maps, pred, names))
    referenced = CaseMetrics(case_id, dwi_path, region_values(maps, ref, names)) if ref is not None else None
    return predicted, referenced, names


# ---------------------------------------------------------------- CSVs
def sct_rows(cases: Sequence[CaseMetrics], software: str) -> list[dict[str, Any]]:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    rows = []
    for case in cases:
        for metric, regions in case.values.items():
            for name, value in regions.items():
                rows.append({"Timestamp": stamp, "Software": software, "Filename": str(case.dwi_path),
                             "Case": case.case_id, "Metric": metric, "Slice (I->S)": value.slices, "VertLevel": "",
                             "Label": name, "Size [vox]": value.voxels, "BIN()": _fmt(value.mean),
                             "STD()": _fmt(value.std)})
    return rows


def error_rows(predicted: Sequence[CaseMetrics], referenced: Sequence[CaseMetrics]) -> list[dict[str, Any]]:
    rows = []
    for pred, ref in zip(predicted, referenced):
        for name, value in pred.values["FA"].items():
            fa_ref = ref.values["FA"][name].mean
            rows.append({"case": pred.case_id, "region": name, "voxels_pred": value.voxels,
                         "voxels_ref": ref.values["FA"][name].voxels, "FA_pred": value.mean, "FA_ref": fa_ref,
                         "FA_error_percent": fa_index_error(value.mean, fa_ref)})
    return rows


def error_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per region pair (left, right): mean and SD of the FA-index error over cases; 'all' last."""
    by_region: dict[str, list[float]] = {}
    for row in rows:
        if row["FA_error_percent"] is not None:
            by_region.setdefault(row["region"], []).append(row["FA_error_percent"])
    pairs = dict.fromkeys(r.rsplit("_", 1)[0] if r.endswith(("_left", "_right")) else r for r in
                          dict.fromkeys(row["region"] for row in rows))
    summary = []
    for pair in pairs:
        entry: dict[str, Any] = {"region": pair}
        for side in ("left", "right"):
            values = by_region.get(f"{pair}_{side}", by_region.get(pair) if side == "left" else None) or []
            entry[f"{side}_mean"] = float(np.mean(values)) if values else None
            entry[f"{side}_sd"] = float(np.std(values)) if values else None
            entry[f"{side}_cases"] = len(values)
        both = [v for side in ("left", "right") for v in by_region.get(f"{pair}_{side}", [])] or by_region.get(pair, [])
        entry["both_mean"] = float(np.mean(both)) if both else None
        summary.append(entry)
    every = [v for values in by_region.values() for v in values]
    summary.append({"region": "all", "both_mean": float(np.mean(every)) if every else None})
    return summary


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else _fmt(v) if isinstance(v, float) else v) for k, v in row.items()}
                     for row in rows)
    with atomic_write(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------- the command
@dataclass(frozen=True)
class MetricsResult:
    metrics_csv: Path
    error_csv: Path | None
    summary_csv: Path | None
    summary: list[dict[str, Any]]  # the FA-error summary rows (empty without references)
    cases: int


def run_dti_metrics(dwi_source: str | Path, pred_dir: str | Path, out_dir: str | Path, ref_dir: str | Path | None = None,
                    fit_method: str = "WLS", b0_threshold: float = dwi.B0_THRESHOLD, progress=None) -> MetricsResult:
    """Every predicted case measured on its DWI; CSVs written only once every case is measured."""
    from autoseg import __version__
    from autoseg.workdir import check_folder, make_folder

    out_dir = check_folder(out_dir, "output folder (-o)")
    predictions = label_files(Path(pred_dir), "prediction (-p)")
    references = label_files(Path(ref_dir), "reference (-r)") if ref_dir is not None else None
    cases = matched_cases(dwi.find_dwi_files(dwi_source), predictions, references)
    predicted, referenced = [], []
    for case_id, dwi_path, prediction, reference in cases:
        pred, ref, _ = case_metrics(case_id, dwi_path, prediction, reference, fit_method, b0_threshold)
        predicted.append(pred)
        referenced.append(ref)
        if progress is not None:
            progress(1)
    make_folder(out_dir, "output folder (-o)")
    metrics_csv = write_csv(out_dir / METRICS_CSV, sct_rows(predicted, f"autoseg {__version__}"), SCT_COLUMNS)
    if references is None:
        return MetricsResult(metrics_csv, None, None, [], len(cases))
    errors = error_rows(predicted, referenced)
    summary = error_summary(errors)
    return MetricsResult(metrics_csv, write_csv(out_dir / ERROR_CSV, errors),
                         write_csv(out_dir / ERROR_SUMMARY_CSV, summary), summary, len(cases))
