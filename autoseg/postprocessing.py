"""Post-processing of predicted label maps: pure functions on numpy arrays.

`keep_largest_component` removes small false-positive islands, a common clean-up for organs or
structures that occur exactly once per image (e.g. one sacrum, one spinal canal). Connectivity is
face-to-face (scipy's default structuring element), so diagonal touches do not join components.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest connected component of `mask` (all False when `mask` is empty).

    Ties go to the component found first in C (row-major) order, so the result is deterministic.
    """
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # the background of `mask` is not a component
    return components == int(np.argmax(sizes))


def keep_largest_component(
    label: np.ndarray,
    classes: Sequence[int] | None = None,
    foreground_as_one: bool = False,
) -> np.ndarray:
    """Keep only the largest connected component of each class; the rest becomes 0 (background).

    classes: label values to clean (default: every value > 0 present in `label`); other values
    are left untouched. foreground_as_one: treat all of `classes` as one structure, keep its
    largest component and set every listed class outside it to 0 (labels inside keep their
    values). Returns a new array of the same shape and dtype.
    """
    result = np.array(label, copy=True)
    wanted = _classes_to_clean(label, classes)
    if not wanted:
        return result
    if foreground_as_one:
        union = np.isin(label, wanted)
        result[union & ~largest_component_mask(union)] = 0
        return result
    for value in wanted:
        mask = label == value
        result[mask & ~largest_component_mask(mask)] = 0
    return result


def _classes_to_clean(label: np.ndarray, classes: Sequence[int] | None) -> list[int]:
    if classes is None:
        return [int(v) for v in np.unique(label) if v > 0]
    return sorted({int(c) for c in classes if int(c) != 0})  # background is never "cleaned"
