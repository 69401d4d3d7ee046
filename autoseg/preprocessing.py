"""Turn raw cases into network-ready arrays on disk, and predictions back into the original grid.

One case: the task's case steps, if the plan names a task -> crop to the nonzero region ->
normalize per channel -> resample to the configuration's spacing (a 2d configuration of 3D data
resamples y and x only; slices stay slices) -> sample the voxel locations of every class for
foreground oversampling. A plan with `normalize_at == "loader"` resamples first and normalizes
after; its training folder stores the resampled raw intensities and each case's resolved
normalization (properties "normalization"), which the loader applies to every patch after the
augmentations that need raw intensities.

A configuration's folder (see autoseg.workdir) holds, per case:

    <case_id>.npy             float32 (C, *spatial), memory-mappable
    <case_id>_seg.npy         int8 (1, *spatial), absent for unlabelled cases
    <case_id>.json            properties: shapes, crop box, spacings, original geometry
    <case_id>_locations.npz   str(label value) -> int32 (N, spatial ndim) voxel coordinates
    <case_id>_<name>.nii.gz   what the task's case steps kept (keep_case_output), on the input's grid

and `preprocessing.json` (plan hash, config name, case ids, version), written last: a folder
without it was interrupted. Every file is written to a temp file and renamed into place.
"""
from __future__ import annotations

import logging
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autoseg import schema
from autoseg.atomic import UNTOUCHED_S, atomic_write, sweep_stale_temporaries
from autoseg.config import ConfigPlan, Plan
from autoseg.cropping import crop, nonzero_bbox, nonzero_mask, uncrop
from autoseg.errors import PlanError, PreprocessingError
from autoseg.io import Geometry, read_image, read_label, write_image
from autoseg.normalization import apply_normalization, normalize, resolve_normalization
from autoseg.resampling import resample_image, resample_label, resample_probabilities
from autoseg.tasks import run_case_steps
from autoseg.tasks.profile import collecting_case_outputs

log = logging.getLogger(__name__)

MANIFEST = "preprocessing.json"
_IN_PROGRESS = ".preprocessing_in_progress.json"  # plan hash of an unfinished run, so a resume can trust its cases
MAX_LOCATIONS_PER_CLASS = 10_000
_FIX = "re-run `autoseg preprocess --force` to rebuild the preprocessed data"
_PROPERTY_KEYS = ("case_id", "original_shape", "original_geometry", "crop_bbox", "cropped_shape",
                  "resampled_shape", "spacing_before", "spacing_after", "class_locations_file")


# ---------------------------------------------------------------- one case, in memory
def target_spacing(spacing_before: Sequence[float], config: ConfigPlan) -> tuple[float, ...]:
    """Spacing a case is resampled to; a 2d configuration of 3D data keeps the case's own z spacing."""
    ndim = len(spacing_before)
    if config.network.ndim == 2 and ndim == 3:
        return (float(spacing_before[0]), *(float(s) for s in config.spacing[-2:]))
    if len(config.spacing) != ndim:
        raise PlanError(f"configuration '{config.name}' has spacing {config.spacing} for {ndim}D images; re-run `autoseg plan`")
    return tuple(float(s) for s in config.spacing)


def _check_case_inputs(image: np.ndarray, geometry: Geometry, label: np.ndarray | None, case_id: str) -> None:
    if image.ndim != geometry.ndim + 1:
        raise PreprocessingError(f"case '{case_id}': image of shape {image.shape} does not match its {geometry.ndim}D geometry; "
                                 "expected (channels, *spatial)")
    if label is None:
        return
    if label.shape != image.shape[1:]:
        raise PreprocessingError(f"case '{case_id}': label shape {label.shape} differs from image shape {image.shape[1:]}; "
                                 "the label must be drawn on the image's grid")
    low, high = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if low < -128 or high > 127:
        raise PreprocessingError(f"case '{case_id}': label values {low}..{high} do not fit the int8 preprocessed format "
                                 "(expected 0..127); renumber the labels")


def preprocess_case(
    image: np.ndarray,
    geometry: Geometry,
    label: np.ndarray | None,
    config: ConfigPlan,
    case_id: str = "case",
    defer_normalization: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Case steps, crop, normalize and resample one case.

    image (C, *spatial) as read, label (*spatial) integer or None. Returns data float32
    (C, *spatial'), seg int8 (1, *spatial') or None, and the JSON-able properties that
    `restore_original` needs. Class locations come from `class_locations(seg, case_id)`.
    `defer_normalization` (training storage): where the plan normalizes in the loader, return the
    resampled raw intensities and record the normalization in properties["normalization"].
    """
    image = run_case_steps(config.task, image, geometry, case_id)
    _check_case_inputs(image, geometry, label, case_id)
    spacing_before = tuple(float(s) for s in geometry.spacing_zyx)
    spacing_after = target_spacing(spacing_before, config)
    bbox = nonzero_bbox(image)
    cropped = crop(image, bbox)
    recorded = None
    if config.normalize_at == "loader":
        data, recorded = _resample_then_normalize(cropped, spacing_before, spacing_after, config, defer_normalization)
    else:
        mask = nonzero_mask(cropped) if any(p.use_mask for p in config.normalization) else None
        data = normalize(cropped, config.normalization, mask)
        data = resample_image(data, spacing_before, spacing_after, config.resampling)
    seg = None
    if label is not None:
        resampled = resample_label(crop(label, bbox), spacing_before, spacing_after, config.resampling, out_shape=data.shape[1:])
        seg = resampled[None].astype(np.int8)
    properties = {
        "case_id": case_id,
        "original_shape": [int(s) for s in image.shape[1:]],
        "original_geometry": geometry.to_dict(),
        "crop_bbox": [[int(a), int(b)] for a, b in bbox],
        "cropped_shape": [int(s) for s in cropped.shape[1:]],
        "resampled_shape": [int(s) for s in data.shape[1:]],
        "spacing_before": list(spacing_before),
        "spacing_after": list(spacing_after),
        "class_locations_file": f"{case_id}_locations.npz",
    }
    if recorded is not None:
        properties["normalization"] = [n.to_dict() for n in recorded]
    return data, seg, properties


def _resample_then_normalize(cropped: np.ndarray, spacing_before, spacing_after, config: ConfigPlan,
                             keep_raw: bool) -> tuple[np.ndarray, list | None]:
    """Resample raw intensities, then resolve each channel's normalization on them (masks: every
    nonzero voxel, per voxel, as the loader sees a patch). keep_raw: return them with the resolved
    normalization instead of normalized data."""
    raw = resample_image(cropped.astype(np.float32, copy=False), spacing_before, spacing_after, config.resampling)
    mask = nonzero_mask(raw) if any(p.use_mask for p in config.normalization) else None
    resolved = resolve_normalization(raw, config.normalization, mask)
    if keep_raw:
        return raw.astype(np.float32, copy=False), resolved
    return apply_normalization(raw, resolved, mask), None


def class_locations(seg: np.ndarray, case_id: str, max_per_class: int = MAX_LOCATIONS_PER_CLASS) -> dict[str, np.ndarray]:
    """Voxel coordinates (N, spatial ndim) int32 of each label value >= 1 in `seg` ((1, *spatial) or
    (*spatial)); at most `max_per_class` each, drawn with a seed derived from `case_id`."""
    spatial = seg[0] if seg.ndim > 1 and seg.shape[0] == 1 else seg
    flat = spatial.ravel()
    foreground = np.flatnonzero(flat > 0)
    values = flat[foreground]
    order = np.argsort(values, kind="stable")  # one pass for all classes instead of one per class
    foreground, values = foreground[order], values[order]
    present, starts = np.unique(values, return_index=True)
    stops = list(starts[1:]) + [len(values)]
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    locations = {}
    for value, start, stop in zip(present, starts, stops):
        indices = foreground[start:stop]
        if len(indices) > max_per_class:
            indices = np.sort(rng.choice(indices, max_per_class, replace=False))
        locations[str(int(value))] = np.stack(np.unravel_index(indices, spatial.shape), axis=1).astype(np.int32)
    return locations


def restore_original(probabilities: np.ndarray, properties: dict[str, Any], config: ConfigPlan) -> np.ndarray:
    """Class probabilities (K, *resampled) -> (K, *original) float32 on the case's original grid.

    Outside the crop box everything is background: probability 1 for class 0, 0 for the others.
    """
    if list(probabilities.shape[1:]) != list(properties["resampled_shape"]):
        raise ValueError(f"probabilities of spatial shape {probabilities.shape[1:]} do not match the case's "
                         f"resampled shape {properties['resampled_shape']}")
    cropped = resample_probabilities(
        probabilities, properties["spacing_after"], properties["spacing_before"], config.resampling,
        out_shape=properties["cropped_shape"],
    )
    fill = [1.0] + [0.0] * (probabilities.shape[0] - 1)
    return uncrop(cropped.astype(np.float32, copy=False), properties["crop_bbox"], properties["original_shape"], fill)


# ---------------------------------------------------------------- one case, on disk
def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_case(folder: Path, data: np.ndarray, seg: np.ndarray | None, properties: dict[str, Any]) -> None:
    """Write one preprocessed case; its .json goes last, so it marks the case as complete."""
    case_id = properties["case_id"]
    _write_atomic(folder / f"{case_id}.npy", lambda f: np.save(f, np.ascontiguousarray(data, dtype=np.float32)))
    if seg is not None:
        _write_atomic(folder / f"{case_id}_seg.npy", lambda f: np.save(f, np.ascontiguousarray(seg, dtype=np.int8)))
        locations = class_locations(seg, case_id)
        _write_atomic(folder / properties["class_locations_file"], lambda f: np.savez(f, **locations))
    schema.write_json_atomic(folder / f"{case_id}.json", properties)


def _read_case(case) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
    """All channels of a case as (C, *spatial), the first channel's geometry, and the label."""
    arrays, geometry = [], None
    for path in case.images:
        array, geo = read_image(path)
        arrays.append(array)
        geometry = geometry or geo
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise PreprocessingError(f"case '{case.case_id}': channel files {[str(p) for p in case.images]} have different "
                                 f"shapes {sorted(shapes)}; run `autoseg validate` to see which")
    label = read_label(case.label)[0] if case.label is not None else None
    return np.concatenate(arrays, axis=0), geometry, label


def _process_case(case, config: ConfigPlan, folder: Path) -> str:
    """Worker: read, preprocess and write one case; returns its id (nothing big crosses processes)."""
    image, geometry, label = _read_case(case)
    with collecting_case_outputs() as kept:  # a task's by-products (e.g. a body mask), on the image's grid
        data, seg, properties = preprocess_case(image, geometry, label, config, case.case_id, defer_normalization=True)
    for name, array in kept.items():
        write_image(folder / f"{case.case_id}_{name}.nii.gz", array, geometry)
    write_case(folder, data, seg, properties)
    log.debug("preprocessed %s: %s -> %s", case.case_id, properties["original_shape"], properties["resampled_shape"])
    return case.case_id


# ---------------------------------------------------------------- whole dataset
def _case_complete(folder: Path, case) -> bool:
    names = [f"{case.case_id}.npy", f"{case.case_id}.json"]
    if case.label is not None:
        names += [f"{case.case_id}_seg.npy", f"{case.case_id}_locations.npz"]
    return all((folder / n).is_file() for n in names)


def _remove_case_files(folder: Path, ids: Sequence[str]) -> None:
    for case_id in ids:
        for ending in (".npy", "_seg.npy", ".json", "_locations.npz"):
            (folder / f"{case_id}{ending}").unlink(missing_ok=True)


def _recorded_hash(path: Path) -> str | None:
    """The plan hash stored in a manifest or in-progress marker; None when absent or unreadable."""
    try:
        return schema.read_json(path, PreprocessingError).get("plan_hash")
    except (PreprocessingError, AttributeError):
        return None


def _manifest_lists(manifest: Path, ids: list[str]) -> bool:
    """True when a (readable) manifest exists and lists exactly these case ids."""
    try:
        return manifest.is_file() and schema.read_json(manifest, PreprocessingError).get("cases") == ids
    except (PreprocessingError, AttributeError):
        return False


def _version() -> str:
    try:
        return metadata.version("autoseg")
    except metadata.PackageNotFoundError:
        return "unknown"


def _run_cases(cases: Sequence, config: ConfigPlan, folder: Path, workers: int, advance: Callable[[int], Any]) -> None:
    if workers <= 1 or len(cases) <= 1:
        for case in cases:
            _process_case(case, config, folder)
            advance(1)
        return
    # spawn, not fork: the parent may hold threads (torch, BLAS) that a forked child would deadlock on
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=context) as pool:
        futures = [pool.submit(_process_case, case, config, folder) for case in cases]
        try:
            for future in as_completed(futures):
                future.result()
                advance(1)
        except BrokenProcessPool:
            raise PreprocessingError(f"{folder}: a preprocessing worker died (often out of memory); "
                                     "retry with fewer workers (--workers 1)") from None
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def preprocess_dataset(
    dataset,
    plan: Plan,
    config_name: str,
    out_dir: str | Path,
    workers: int = 2,
    progress: Callable[[int], Any] | None = None,
    force: bool = False,
) -> Path:
    """Preprocess every case of `dataset` (an autoseg.dataset.Dataset or a sequence of Case) for one
    configuration into `out_dir`, the configuration's folder (Workdir.preprocessed_dir). Returns it.

    Skips all work when the folder's manifest has the same plan hash and case list; otherwise only
    cases missing from a run with the same plan hash are redone. `force` redoes everything.
    `progress(n)` is called as cases finish (reused cases count too).
    """
    config = plan.config(config_name)
    cases = list(getattr(dataset, "cases", dataset))
    folder = Path(out_dir)
    advance = progress or (lambda n: None)
    plan_hash = schema.content_hash(config)
    ids = [c.case_id for c in cases]
    manifest = folder / MANIFEST
    # fragments of a killed run; another training may be preprocessing here too, so only untouched ones
    sweep_stale_temporaries(folder, min_age_s=UNTOUCHED_S)
    previous = _recorded_hash(manifest) if manifest.is_file() else _recorded_hash(folder / _IN_PROGRESS)
    reusable = not force and previous == plan_hash
    if reusable and _manifest_lists(manifest, ids) and all(_case_complete(folder, c) for c in cases):
        log.info("%s is up to date (%d cases); nothing to do", folder, len(ids))
        advance(len(ids))
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if not reusable:  # files of another plan must not survive into a run that may be resumed
        _remove_case_files(folder, ids)
    schema.write_json_atomic(folder / _IN_PROGRESS, {"plan_hash": plan_hash, "config": config_name})
    manifest.unlink(missing_ok=True)  # from here on the folder must not look complete
    pending = [c for c in cases if not (reusable and _case_complete(folder, c))]
    advance(len(cases) - len(pending))
    log.info("preprocessing %d of %d cases for %s into %s", len(pending), len(cases), config_name, folder)
    _run_cases(pending, config, folder, workers, advance)
    schema.write_json_atomic(manifest, {"plan_hash": plan_hash, "config": config_name, "cases": ids,
                                        "autoseg_version": _version()})
    (folder / _IN_PROGRESS).unlink(missing_ok=True)
    return folder


# ---------------------------------------------------------------- reading back
def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise PreprocessingError(f"{path}: file is missing; {_FIX}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated or not a .npy file
        raise PreprocessingError(f"{path}: cannot be read as a .npy array ({exc}); the file is truncated or corrupt; {_FIX}") from None


def _load_properties(path: Path) -> dict[str, Any]:
    try:
        properties = schema.read_json(path, PreprocessingError)
    except PreprocessingError as exc:
        raise PreprocessingError(f"{exc}; {_FIX}") from None
    missing = [k for k in _PROPERTY_KEYS if not isinstance(properties, dict) or k not in properties]
    if missing:
        raise PreprocessingError(f"{path}: missing key(s) {missing}; {_FIX}")
    return properties


def load_case(folder: str | Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read one preprocessed case: data (C, *spatial), seg (1, *spatial) or None when the case has
    no label file, and its properties. Arrays are read-only memory maps unless `mmap` is False."""
    folder = Path(folder)
    properties = _load_properties(folder / f"{case_id}.json")
    data_path, seg_path = folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy"
    data = _load_npy(data_path, mmap)
    expected = tuple(properties["resampled_shape"])
    if data.ndim != len(expected) + 1 or data.shape[1:] != expected:
        raise PreprocessingError(f"{data_path}: shape {data.shape}, expected (channels, *{expected}) as recorded in "
                                 f"{case_id}.json; {_FIX}")
    seg = _load_npy(seg_path, mmap) if seg_path.exists() else None
    if seg is not None and seg.shape != (1, *expected):
        raise PreprocessingError(f"{seg_path}: shape {seg.shape}, expected {(1, *expected)} to match {data_path.name}; {_FIX}")
    return data, seg, properties


def load_class_locations(folder: str | Path, case_id: str) -> dict[int, np.ndarray]:
    """Label value -> (N, spatial ndim) int32 voxel coordinates of a preprocessed case."""
    path = Path(folder) / f"{case_id}_locations.npz"
    if not path.is_file():
        raise PreprocessingError(f"{path}: file is missing; {_FIX}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {int(k): archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise PreprocessingError(f"{path}: cannot be read ({exc}); {_FIX}") from None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The folder's preprocessing.json; PreprocessingError when the folder was never completed."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PreprocessingError(f"{path}: missing, so preprocessing of this configuration never finished; "
                                 "run `autoseg preprocess`")
    return schema.read_json(path, PreprocessingError)
