"""Crop images to their nonzero region and put results back.

Many scans carry a border of exact zeros (outside the scanner's field of view, or padding from
conversion). Cropping it away before resampling saves memory and time; the bounding box is kept
so that predictions can be placed back onto the original grid.

A bounding box is a list of (start, stop) pairs, one per spatial axis, in numpy order, with
`stop` exclusive, like a slice.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BBox = list[tuple[int, int]]


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask (*spatial) of voxels where any channel of `image` (C, *spatial) is nonzero."""
    return np.any(image != 0, axis=0)


def nonzero_bbox(image: np.ndarray) -> BBox:
    """Bounding box of the nonzero voxels of `image` (C, *spatial); the whole image when all are zero."""
    mask = nonzero_mask(image)
    bbox: BBox = []
    for axis in range(mask.ndim):
        # Project onto this axis: which slices along it hold any nonzero voxel.
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others)) if others else np.flatnonzero(mask)
        if hits.size == 0:
            return [(0, size) for size in mask.shape]
        bbox.append((int(hits[0]), int(hits[-1]) + 1))
    return bbox


def _spatial_slices(array: np.ndarray, bbox: Sequence[Sequence[int]]) -> tuple[slice, ...]:
    """Index that keeps leading (channel) axes whole and cuts the last len(bbox) axes."""
    lead = array.ndim - len(bbox)
    if lead < 0:
        raise ValueError(f"bounding box has {len(bbox)} axes but the array only {array.ndim}")
    return (slice(None),) * lead + tuple(slice(int(a), int(b)) for a, b in bbox)


def crop(array: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """Cut `bbox` out of the last len(bbox) axes of `array` (a view, no copy)."""
    return array[_spatial_slices(array, bbox)]


def uncrop(
    array: np.ndarray,
    bbox: Sequence[Sequence[int]],
    full_shape: Sequence[int],
    fill: float | Sequence[float] = 0,
) -> np.ndarray:
    """Place `array` (*lead, *cropped) back into a new array of spatial shape `full_shape`.

    `fill` is the value outside the box: one number, or one per entry of the first axis (e.g.
    probability 1 for background and 0 for every other class).
    """
    lead_shape = array.shape[: array.ndim - len(bbox)]
    out = np.empty(tuple(lead_shape) + tuple(int(s) for s in full_shape), dtype=array.dtype)
    if np.ndim(fill) == 0:
        out[...] = fill
    else:
        fill = np.asarray(fill, dtype=array.dtype)
        if not lead_shape or len(fill) != lead_shape[0]:
            raise ValueError(f"uncrop: {len(fill)} fill values for a first axis of {lead_shape[:1]}")
        out[...] = fill.reshape((-1,) + (1,) * (out.ndim - 1))
    out[_spatial_slices(out, bbox)] = array
    return out
