"""Reading every file of a dataset once: readable, finite, declared labels, one grid per case.

Used by `autoseg.dataset.validate_dataset`; problems are lines naming the file relative to the
dataset folder.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from autoseg.errors import ImageIOError
from autoseg.io import PLAIN_2D_ENDINGS, Geometry, read_image, read_label


class Case(Protocol):
    """What the checks read of a case (autoseg.dataset.Case, which imports this module)."""

    case_id: str
    images: Sequence[Path]
    label: Path | None


DATASET_JSON = "dataset.json"


def check_contents(cases: list[Case], meta, root: Path, workers: int,
                    progress: Callable[[int], object] | None) -> list[str]:
    """Read every case once, `workers` cases in parallel (SimpleITK and numpy release the GIL)."""
    reports: list[tuple[list[str], int | None]] = [([], None)] * len(cases)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_check_case, case, meta, root): i for i, case in enumerate(cases)}
        for future in as_completed(futures):
            reports[futures[future]] = future.result()
            if progress is not None:
                progress(1)
    problems = [line for lines, _ in reports for line in lines]  # case order, not completion order
    mixed = _mixed_dimensions(cases, [ndim for _, ndim in reports])
    return problems + ([mixed] if mixed else [])


def _check_case(case: Case, meta, root: Path) -> tuple[list[str], int | None]:
    """All problems of one case and its spatial dimensionality (None if nothing was readable)."""
    problems: list[str] = []
    reference = _check_label(case.label, meta.labels, root, problems) if case.label is not None else None
    expected_components = len(meta.channel_names) if len(case.images) == 1 else 1
    for path in case.images:
        grid = _check_image(path, expected_components, meta.file_ending, root, problems)
        if grid is None:
            continue
        if reference is None:
            reference = (path, *grid)
        else:
            problems.extend(_grid_mismatch(path, grid, reference, root))
    return problems, (len(reference[1]) if reference else None)


def _check_label(path: Path, labels: dict[str, int] | None, root: Path,
                 problems: list[str]) -> tuple[Path, tuple[int, ...], Geometry] | None:
    try:
        label, geometry = read_label(path)
    except ImageIOError as exc:
        problems.append(relative_message(exc, root))
        return None
    if labels is not None:
        undeclared = sorted(set(_label_values(label)) - set(labels.values()))
        if undeclared:
            problems.append(f"{rel(path, root)}: label value(s) {preview(undeclared)} not declared in {DATASET_JSON} "
                            f"labels (declared 0..{len(labels) - 1}); fix the label file or declare the values")
    return path, label.shape, geometry


def _check_image(path: Path, expected_components: int, ending: str, root: Path,
                 problems: list[str]) -> tuple[tuple[int, ...], Geometry] | None:
    try:
        array, geometry = read_image(path)  # NaN/inf (in any format) and truncation are read errors
    except ImageIOError as exc:
        problems.append(relative_message(exc, root))
        return None
    found = array.shape[0]
    if found != expected_components:
        problems.append(_component_problem(rel(path, root), found, expected_components, ending))
    return array.shape[1:], geometry


def _component_problem(name: str, found: int, expected: int, ending: str) -> str:
    if expected == 1:
        kind = "color components" if ending in PLAIN_2D_ENDINGS else "channels (4D or vector image)"
        return (f"{name}: has {found} {kind}, expected grayscale; convert it to one channel, or store one "
                f"file per channel, or declare {found} channels in {DATASET_JSON} for a colour file")
    return (f"{name}: has {found} component(s), expected {expected} because {DATASET_JSON} declares {expected} "
            "channels and this case has only this file; add the missing _0001.. channel files")


def _grid_mismatch(path: Path, grid: tuple[tuple[int, ...], Geometry],
                   reference: tuple[Path, tuple[int, ...], Geometry], root: Path) -> list[str]:
    (shape, geometry), (ref_path, ref_shape, ref_geometry) = grid, reference
    if shape != ref_shape:
        return [f"{rel(path, root)}: shape {shape} differs from {rel(ref_path, root)} shape {ref_shape}; "
                "all channels and the label of a case must share one grid"]
    if not geometry.matches(ref_geometry):
        return [f"{rel(path, root)}: geometry differs from {rel(ref_path, root)} "
                f"({_geometry_difference(geometry, ref_geometry)}); resample one onto the other's grid"]
    return []


def _geometry_difference(a: Geometry, b: Geometry) -> str:
    parts = [f"{name} {getattr(a, name)} vs {getattr(b, name)}" for name in ("spacing", "origin", "direction")
             if not np.allclose(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-4)]
    return "; ".join(parts) or "differences above tolerance"


def _label_values(label: np.ndarray) -> list[int]:
    """Distinct values; bincount is far faster than np.unique for the usual small non-negative labels."""
    if label.size and label.min() >= 0 and label.max() < 65536:
        return np.flatnonzero(np.bincount(label.ravel())).tolist()
    return np.unique(label).tolist()


def _mixed_dimensions(cases: list[Case], ndims: list[int | None]) -> str | None:
    by_ndim: dict[int, list[str]] = {}
    for case, ndim in zip(cases, ndims):
        if ndim is not None:
            by_ndim.setdefault(ndim, []).append(case.case_id)
    if len(by_ndim) < 2:
        return None
    listing = ", ".join(f"{ndim}D: {preview(ids, 3)}" for ndim, ids in sorted(by_ndim.items()))
    return f"cases mix 2D and 3D images ({listing}); a dataset must be all 2D or all 3D"


def rel(path: Path, root: Path) -> str:
    """Paths relative to the dataset folder keep problem lines short; the header names the folder."""
    return path.relative_to(root).as_posix()


def relative_message(exc: Exception, root: Path) -> str:
    return str(exc).replace(f"{root}{os.sep}", "")


def preview(items: Iterable[object], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{f', ... (+{len(items) - limit} more)' if len(items) > limit else ''}]"
