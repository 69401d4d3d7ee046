"""Crop a region of interest out of an image with its exact geometry, and paste results back.

A crop box is a list of (start, stop) voxel pairs in numpy order, stop exclusive (as in
autoseg.cropping). A crop keeps the spacing and direction; its origin is the world position of
its first voxel, origin + direction @ (start * spacing) in ITK (x, y, z) order, which is what
SimpleITK's RegionOfInterest gives. Pasting back puts the crop's voxels at the same indices, so
a round trip is exact whatever the direction matrix and origin.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autoseg.cropping import BBox, crop, uncrop
from autoseg.io import Geometry


def box_around(mask: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> BBox | None:
    """Bounding box of `mask`'s voxels grown by `margin_mm` per side, clipped to the image; None when empty."""
    if not mask.any():
        return None
    box: BBox = []
    for axis, (size, spacing) in enumerate(zip(mask.shape, spacing_zyx)):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        grow = int(math.ceil(margin_mm / float(spacing) - 1e-9))
        box.append((max(int(hits[0]) - grow, 0), min(int(hits[-1]) + 1 + grow, size)))
    return box


def crop_geometry(geometry: Geometry, box: BBox) -> Geometry:
    """The geometry of `box` cut out of an image with `geometry`: same spacing and direction, shifted origin."""
    ndim = geometry.ndim
    direction = np.asarray(geometry.direction, dtype=float).reshape(ndim, ndim)
    start_xyz = np.array([start for start, _ in box][::-1], dtype=float)
    origin = np.asarray(geometry.origin, dtype=float) + direction @ (start_xyz * np.asarray(geometry.spacing, dtype=float))
    return Geometry(tuple(geometry.spacing), tuple(float(o) for o in origin), tuple(geometry.direction))


def crop_image(image: np.ndarray, geometry: Geometry, box: BBox) -> tuple[np.ndarray, Geometry]:
    """image (C, *spatial) or (*spatial) cut to `box` (a copy), with the crop's geometry."""
    return np.ascontiguousarray(crop(image, box)), crop_geometry(geometry, box)


def paste_back(cropped: np.ndarray, box: BBox, full_shape: Sequence[int], fill: int = 0) -> np.ndarray:
    """A label map (*crop) placed at `box` in a new map of `full_shape`, `fill` elsewhere."""
    return uncrop(cropped, box, full_shape, fill)


def box_document(box: BBox | None, geometry: Geometry, margin_mm: float) -> dict:
    """The crop box as written per case: voxel box, its world origin and extent, the margin."""
    if box is None:
        return {"box_zyx": None, "margin_mm": margin_mm}
    cut = crop_geometry(geometry, box)
    return {"box_zyx": [[int(a), int(b)] for a, b in box], "origin_mm": list(cut.origin),
            "size_mm_zyx": [round((b - a) * s, 3) for (a, b), s in zip(box, geometry.spacing_zyx)],
            "margin_mm": margin_mm}
