"""Structure sizes from the fingerprint's label statistics (voxel fractions, component counts and
the foreground's extent)."""
from __future__ import annotations

import math
from statistics import median
from typing import Sequence

from autoseg.config import Fingerprint


def smallest_structure_mm(fingerprint: Fingerprint) -> float | None:
    """Equivalent diameter (mm) of the smallest labelled structure: per foreground label, the median
    over cases of (labelled volume / connected components), as the diameter of a disc (2D) or ball
    (3D) of that size; the smallest over labels. None without any labelled voxel.

    It overstates the thickness of thin or elongated structures (a cord's gray-matter horn is
    thinner than its ball), so the planner's floor on it is generous."""
    per_label: dict[str, list[float]] = {}
    for case in fingerprint.cases:
        voxel_volume = math.prod(case.spacing)
        image_voxels = math.prod(case.shape)
        for label, fraction in case.label_fractions.items():
            components = case.label_components.get(label, 0)
            if label == "0" or fraction <= 0 or components <= 0:
                continue
            per_label.setdefault(label, []).append(fraction * image_voxels * voxel_volume / components)
    if not per_label:
        return None
    smallest = min(median(sizes) for sizes in per_label.values())
    return _equivalent_diameter(smallest, fingerprint.ndim)


def structure_cover_mm(fingerprint: Fingerprint, min_voxels: int, spacing, axes: Sequence[int] | None = None) -> tuple[float, ...] | None:
    """What a patch must cover (mm per axis of `axes`, default all) to hold the labelled structures with
    context: the median foreground extent plus a margin of half the smallest of those extents (a quarter
    of the structures' thickness on each side), and never under `min_voxels` at `spacing` (given for
    `axes`). The margin scales with the thickness, not the length: a lumbar column 25 cm long but 10 cm
    thick needs its length covered, not 25 cm of context around it. None when the fingerprint has no
    foreground extents (older ones)."""
    axes = list(range(fingerprint.ndim)) if axes is None else list(axes)
    extents = [c.foreground_extent_mm for c in fingerprint.cases if c.foreground_extent_mm]
    if not extents:
        return None
    extent = [median(e[axis] for e in extents) for axis in axes]
    margin = min(extent) / 2.0
    return tuple(max(e + margin, min_voxels * s) for e, s in zip(extent, spacing))


def _equivalent_diameter(size: float, ndim: int) -> float:
    if ndim == 2:
        return 2.0 * math.sqrt(size / math.pi)
    return 2.0 * (3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0)
