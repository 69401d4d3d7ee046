"""Segmentation metrics per case and class, and evaluation of a folder of predictions.

For each foreground label value (>= 1), in physical units from the spacing (numpy order): Dice,
IoU, precision, recall, HD95 and ASSD. Surface distances are exact Euclidean distances between
surface voxels (voxels of a mask with a face neighbour outside it; outside the image counts as
outside) at their physical positions, found with a k-d tree. HD95 is the larger of the two
directed 95th percentiles; ASSD is the mean of all surface distances in both directions.

Empty sets get explicit values, never an exception:

- reference and prediction both empty: Dice = IoU = precision = recall = 1.0, HD95 = ASSD = 0.0
  (perfect agreement);
- otherwise a ratio with a zero denominator is NaN (undefined), and HD95/ASSD are NaN when either
  mask is empty. So reference empty, prediction not: Dice = IoU = precision = 0.0, recall = NaN;
  prediction empty, reference not: Dice = IoU = recall = 0.0, precision = NaN.

Every row carries `reference_empty`. Summary means skip reference-empty rows (their Dice says nothing
about delineation, and counting them as 1.0 inflates rare classes, e.g. a vertebra seen in few scans)
and ignore NaN; per class the summary counts those cases and how many of them had false positives.
summary.json writes NaN as null (JSON has no NaN); summary.csv writes "nan".
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from autoseg import io
from autoseg.atomic import atomic_write
from autoseg.errors import AutosegError, DatasetError
from autoseg.progress import Advance, ProgressFactory, task
from autoseg.schema import json_safe, read_json, to_dict, write_json_atomic

logger = logging.getLogger(__name__)

MetricValues = dict[str, float | bool]
AVERAGED_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
MAX_LISTED = 10  # problems listed in an error; the rest are counted


# ---------------------------------------------------------------- metrics of one case
def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of a boolean mask with a face neighbour outside it (outside the image counts as outside)."""
    face_neighbours = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=face_neighbours, border_value=0)


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a | b grown by one voxel, so surfaces found inside it match the full image's."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(np.any(union, axis=tuple(i for i in range(union.ndim) if i != axis)))
        box.append(slice(max(hits[0] - 1, 0), hits[-1] + 2))
    return tuple(box)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and the reverse.

    Both masks must be non-empty booleans of one shape; the order of the distances is unspecified.
    Exact nearest-surface distances come from a k-d tree over the surface voxels' physical positions:
    it gives what a distance transform of the surface (distance_transform_edt with sampling=spacing)
    would, about 5x faster on large structures, as its cost follows the surface area, not the volume.
    """
    box = _union_box(pred, ref)  # erosion is the costly part of finding surfaces: skip empty space
    pred_surface, ref_surface = surface_voxels(pred[box]), surface_voxels(ref[box])
    shared = np.zeros(np.count_nonzero(pred_surface & ref_surface))  # voxels on both surfaces: 0 mm
    scale = np.asarray(spacing, dtype=np.float64)
    pred_points, ref_points = np.argwhere(pred_surface) * scale, np.argwhere(ref_surface) * scale
    to_ref, _ = cKDTree(ref_points).query(np.argwhere(pred_surface & ~ref_surface) * scale)
    to_pred, _ = cKDTree(pred_points).query(np.argwhere(ref_surface & ~pred_surface) * scale)
    return np.concatenate([shared, to_ref]), np.concatenate([shared, to_pred])


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def perfect_empty_metrics() -> MetricValues:
    """The row for a class absent from both reference and prediction (perfect agreement)."""
    return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0, "assd": 0.0,
            "n_ref": 0, "n_pred": 0, "reference_empty": True}


def class_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> MetricValues:
    """Metrics of one boolean prediction mask against one boolean reference mask.

    Empty sets: both empty -> Dice/IoU/precision/recall 1.0 and HD95/ASSD 0.0; otherwise a ratio
    with a zero denominator is NaN and HD95/ASSD are NaN when either mask is empty (so an empty
    reference with a non-empty prediction gives Dice/IoU/precision 0.0 and recall NaN).
    """
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    if n_ref == 0 and n_pred == 0:
        return perfect_empty_metrics()
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    hd95 = assd = math.nan
    if n_ref and n_pred:
        to_ref, to_pred = surface_distances(pred, ref, spacing)
        hd95 = float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))
        assd = float((to_ref.sum() + to_pred.sum()) / (to_ref.size + to_pred.size))
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "hd95": hd95, "assd": assd,
            "n_ref": n_ref, "n_pred": n_pred, "reference_empty": n_ref == 0}


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> dict[int, MetricValues]:
    """Metrics for each label value in `labels` of label maps `pred` and `ref` (same shape, numpy order).

    Returns {value: {"dice", "iou", "precision", "recall", "hd95", "assd", "n_ref", "n_pred",
    "reference_empty"}}; distances are in the units of `spacing`. Empty-set rule: see class_metrics.
    """
    if pred.shape != ref.shape:
        raise DatasetError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; "
                           "predict on the reference's grid")
    if len(spacing) != ref.ndim:
        raise DatasetError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {ref.ndim}D label map")
    return {int(v): class_metrics(pred == v, ref == v, spacing) for v in labels}


# ---------------------------------------------------------------- folder evaluation
@dataclass(frozen=True)
class MetricRow:
    """One case x class row of a summary."""

    case_id: str
    label: str
    value: int
    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    assd: float
    n_ref: int
    n_pred: int
    reference_empty: bool


@dataclass(frozen=True)
class EvaluationSummary:
    per_case: tuple[MetricRow, ...]
    mean_per_class: dict[str, dict[str, float]]  # label name -> metric means and case counts
    mean_foreground_dice: float  # mean over classes of the class mean Dice
    labels: dict[str, int]  # name -> value, foreground only
    summary_json: Path
    summary_csv: Path
    overlays: tuple[Path, ...] = ()
    task_metrics: dict | None = None  # the task's own metrics (autoseg/tasks), when it has any


def _normalize_ending(ending: str) -> str:
    return ending.lower() if ending.startswith(".") else "." + ending.lower()


def _dataset_json(ref_dir: Path) -> dict:
    """The dataset.json next to a labelsTr/labelsTs folder, or {} when there is none."""
    path = ref_dir.parent / "dataset.json"
    if not path.is_file():
        return {}
    data = read_json(path, DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    return data


def _infer_ending(ref_dir: Path) -> str:
    """dataset.json's file_ending if present, else the commonest image ending in the reference folder."""
    ending = _dataset_json(ref_dir).get("file_ending")
    if isinstance(ending, str):
        return _normalize_ending(ending)
    endings = [io.file_ending(p) for p in ref_dir.iterdir() if not p.name.startswith(".")]
    endings = [e for e in endings if e in io.IMAGE_ENDINGS]
    if not endings:
        raise DatasetError(f"{ref_dir}: no image files found in the reference folder; "
                           f"expected files ending in one of {', '.join(io.IMAGE_ENDINGS)}")
    return max(sorted(set(endings)), key=endings.count)  # sorted: ties resolve the same way every run


def _cases_in(folder: Path, ending: str) -> dict[str, Path]:
    """case id -> file, for visible files with `ending` (hidden files are half-written temp files)."""
    return {p.name[: -len(ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(ending)}


def _listed(problems: list[str]) -> list[str]:
    """At most MAX_LISTED problems, the rest counted."""
    more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    return problems[:MAX_LISTED] + more


def _match_cases(pred_dir: Path, ref_dir: Path, ending: str, case_ids: Sequence[str] | None,
                 only_predicted: bool = False) -> dict[str, tuple[Path, Path]]:
    """case id -> (prediction, reference); every wanted reference case needs a prediction."""
    refs, preds = _cases_in(ref_dir, ending), _cases_in(pred_dir, ending)
    wanted = list(case_ids) if case_ids is not None else sorted(refs)
    if only_predicted:
        wanted = [c for c in wanted if c in preds]
    problems = [f"case '{c}': no reference file {ref_dir / (c + ending)}" for c in wanted if c not in refs]
    unpredicted = [c for c in wanted if c in refs and c not in preds]
    problems += [f"case '{c}': prediction {pred_dir / (c + ending)} is missing" for c in unpredicted]
    if not set(preds) & set(wanted):
        raise DatasetError(f"{pred_dir}: no prediction matches a reference case in {ref_dir} (ending '{ending}'); "
                           "check both folders and the file ending", _listed(problems))
    if problems:
        message = f"{pred_dir}: cannot evaluate against {ref_dir}"
        if unpredicted:
            message += (f": {len(unpredicted)} of {len(wanted)} reference case(s) have no prediction; predict them, or "
                        f"pass --only-predicted (API: only_predicted=True) to score the "
                        f"{len(wanted) - len(unpredicted)} predicted case(s) only")
        raise DatasetError(message, _listed(problems))
    extra = sorted(set(preds) - set(wanted))
    if extra:
        logger.warning("%d prediction(s) without a reference are not evaluated, e.g. %s", len(extra), extra[0])
    return {c: (preds[c], refs[c]) for c in wanted}


def _check_grids(pairs: dict[str, tuple[Path, Path]]) -> None:
    """Prediction and reference must share shape and geometry (read from headers only)."""
    problems = []
    for pred_path, ref_path in pairs.values():
        pred_shape, _, pred_geometry = io.read_image_info(pred_path)
        ref_shape, _, ref_geometry = io.read_image_info(ref_path)
        if pred_shape != ref_shape:
            problems.append(f"{pred_path.name}: shape {pred_shape} but reference {ref_path.name} has {ref_shape}")
        elif not pred_geometry.matches(ref_geometry):
            problems.append(f"{pred_path.name}: spacing/origin/direction differ from reference {ref_path.name} "
                            f"(spacing {pred_geometry.spacing} vs {ref_geometry.spacing})")
    if problems:
        raise DatasetError("predictions must lie on their reference's grid; predict with autoseg so the "
                           "output keeps the input geometry", problems)


def _resolve_labels(labels: dict[str, int] | None, ref_dir: Path) -> dict[str, int] | None:
    """Foreground labels (name -> value): given, else dataset.json next to ref_dir, else None (use found)."""
    source = "labels argument"
    if labels is None:
        labels = _dataset_json(ref_dir).get("labels")
        if labels is None:
            return None
        source = f"{ref_dir.parent / 'dataset.json'} key 'labels'"
    if not isinstance(labels, dict):
        raise DatasetError(f"{source}: expected an object of name -> label value, found {labels!r}")
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(f"{source}: label '{name}' should be a whole number >= 0, found {value!r}; "
                               "region labels (lists) are not supported by evaluation")
    return {str(name): value for name, value in labels.items() if value >= 1}


def _evaluate_pair(pred_path: Path, ref_path: Path, values: tuple[int, ...] | None) -> dict[int, MetricValues]:
    """Metrics of one case; with `values` None, for every foreground value found in either map."""
    pred, _ = io.read_label(pred_path)
    ref, geometry = io.read_label(ref_path)
    if values is None:
        values = tuple(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v >= 1)
    return case_metrics(pred, ref, geometry.spacing_zyx, values)


def _evaluate_all(pairs: dict[str, tuple[Path, Path]], values: tuple[int, ...] | None, workers: int,
                  advance: Advance) -> dict[str, dict[int, MetricValues]]:
    """Run every case, in worker processes when there is more than one case and worker."""
    results: dict[str, dict[int, MetricValues]] = {}
    if workers <= 1 or len(pairs) <= 1:
        for case_id, (pred_path, ref_path) in pairs.items():
            results[case_id] = _evaluate_pair(pred_path, ref_path, values)
            advance(1)
        return results
    # spawn, not fork: the caller may hold torch/OpenMP threads that a forked child would inherit broken.
    with ProcessPoolExecutor(min(workers, len(pairs)), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_evaluate_pair, p, r, values): c for c, (p, r) in pairs.items()}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            advance(1)
    return {c: results[c] for c in pairs}


def _rows(results: dict[str, dict[int, MetricValues]], labels: dict[str, int]) -> tuple[MetricRow, ...]:
    """One row per case x label; a label missing from a case's results was absent from both maps."""
    rows = []
    for case_id, per_value in results.items():
        for name, value in labels.items():
            metrics = per_value.get(value) or perfect_empty_metrics()
            rows.append(MetricRow(case_id=case_id, label=name, value=value, **metrics))
    return tuple(rows)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(rows: Sequence[MetricRow], labels: dict[str, int]) -> tuple[dict[str, dict[str, float]], float]:
    """Per-class means over reference-present rows (NaN ignored) and the mean of the class mean Dice."""
    mean_per_class = {}
    for name in labels:
        present = [r for r in rows if r.label == name and not r.reference_empty]
        empty = [r for r in rows if r.label == name and r.reference_empty]
        means = {m: _nanmean([getattr(r, m) for r in present]) for m in AVERAGED_METRICS}
        means.update(cases=len(present), cases_reference_empty=len(empty),
                     false_positive_on_empty=sum(r.n_pred > 0 for r in empty))
        mean_per_class[name] = means
    return mean_per_class, _nanmean([m["dice"] for m in mean_per_class.values()])


def _write_csv_atomic(path: Path, rows: Sequence[MetricRow]) -> Path:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([field.name for field in dataclasses.fields(MetricRow)])
        writer.writerows(dataclasses.astuple(row) for row in rows)
    return path


def _write_overlays(pairs: dict[str, tuple[Path, Path]], rows: Sequence[MetricRow], count: int,
                    images_dir: Path, ending: str, out_dir: Path) -> tuple[Path, ...]:
    """Overlays of the `count` cases with the lowest mean Dice (the ones worth looking at)."""
    from autoseg.overlay import write_overlay_png

    case_dice = {c: _nanmean([r.dice for r in rows if r.case_id == c]) for c in pairs}
    worst = sorted(pairs, key=lambda c: (case_dice[c], c))[:count]
    written = []
    for case_id in worst:
        image_path = images_dir / f"{case_id}_0000{ending}"
        try:
            image, _ = io.read_image(image_path)
            pred, _ = io.read_label(pairs[case_id][0])
            ref, _ = io.read_label(pairs[case_id][1])
            written.append(write_overlay_png(image, pred, ref, out_dir / f"{case_id}.png"))
        except AutosegError as exc:  # an overlay is a convenience; the metrics are already written
            logger.warning("overlay for case '%s' skipped: %s", case_id, exc)
    return tuple(written)


def evaluate_folders(pred_dir: str | Path, ref_dir: str | Path, labels: dict[str, int] | None = None,
                     file_ending: str | None = None, workers: int = 2, progress: ProgressFactory | None = None,
                     overlays: int = 0, images_dir: str | Path | None = None,
                     case_ids: Sequence[str] | None = None, only_predicted: bool = False,
                     task_name: str | None = None) -> EvaluationSummary:
    """Evaluate the predictions in `pred_dir` against the reference labels in `ref_dir`.

    Files are matched by case id (file name minus `file_ending`, default: dataset.json's or the
    commonest in ref_dir). Every reference case (or only `case_ids`, e.g. one fold's validation
    cases; with `only_predicted`, only those that have one) needs a prediction on the same grid, else
    DatasetError lists the problems. `labels` is
    name -> value (background dropped); default dataset.json's "labels" next to ref_dir, else every
    value found. Writes summary.json and summary.csv into pred_dir, plus `overlays` PNGs of the
    worst cases into pred_dir/overlays when `images_dir` holds CASE_0000<ending> images.
    A clinical task's own metrics (e.g. lumbar-ct's identification rate) go under "task_metrics":
    the task is `task_name`, else the one the predictions' task reports or dataset.json name.
    `progress` (see autoseg.progress) is advanced once per case. With workers > 1 cases run in spawned
    processes, so scripts calling this need an `if __name__ == "__main__":` guard.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, role in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {role} folder not found; pass an existing folder of label files")
    ending = _normalize_ending(file_ending) if file_ending else _infer_ending(ref_dir)
    pairs = _match_cases(pred_dir, ref_dir, ending, case_ids, only_predicted)
    _check_grids(pairs)
    label_map = _resolve_labels(labels, ref_dir)
    values = tuple(label_map.values()) if label_map is not None else None
    results = _evaluate_all(pairs, values, workers, task(progress, "Evaluating", len(pairs)))
    if label_map is None:
        found = sorted({v for per_value in results.values() for v in per_value})
        label_map = {str(v): v for v in found}
    rows = _rows(results, label_map)
    mean_per_class, mean_dice = summarize(rows, label_map)
    document = {"labels": label_map, "mean_foreground_dice": mean_dice, "mean_per_class": mean_per_class,
                "per_case": to_dict(list(rows))}
    extra = _task_metrics(pred_dir, ref_dir, task_name, pairs, label_map)
    if extra is not None:
        document["task_metrics"] = extra
    json_path = write_json_atomic(pred_dir / "summary.json", json_safe(document))
    csv_path = _write_csv_atomic(pred_dir / "summary.csv", rows)
    written: tuple[Path, ...] = ()
    if overlays > 0 and images_dir is None:
        logger.warning("overlays=%d ignored: pass images_dir (the folder of CASE_0000 images)", overlays)
    elif overlays > 0:
        written = _write_overlays(pairs, rows, overlays, Path(images_dir), ending, pred_dir / "overlays")
    logger.info("evaluated %d cases: mean foreground Dice %.4f", len(pairs), mean_dice)
    return EvaluationSummary(rows, mean_per_class, mean_dice, label_map, json_path, csv_path, written, extra)


def _task_metrics(pred_dir: Path, ref_dir: Path, name: str | None, pairs, label_map: dict[str, int]) -> dict | None:
    """A task's own metrics (task `name`, else named by the predictions' reports or dataset.json; see
    autoseg/tasks/task_evaluation.py); None for predictions of no task or of one without any."""
    from autoseg.tasks.task_evaluation import task_metrics, task_of_predictions

    return task_metrics(task_of_predictions(pred_dir, ref_dir, name), pairs, label_map)
