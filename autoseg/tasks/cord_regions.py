"""Eight cord regions from a white/gray matter label map, slice by axial slice.

The rule (per axial slice; "axial" is the array axis closest to the patient's head-foot axis in
the direction matrix, coordinates are physical, in LPS: +x left, +y posterior):

1. Frame: the cord (white + gray matter) gives the centre (its centroid) and the left-right axis
   (the major axis of its cross-section, which is wider than deep), turned to point to the
   patient's left; the anterior-posterior axis is perpendicular, pointing back. A nearly round
   cross-section (axis ratio below 1.15) has no reliable major axis: the image's own left-right
   axis is used. Left / right is the side of the midline through the centre along that axis.
2. Gray matter is left or right gray matter by side.
3. White matter is split by angle around the gray matter's centroid, measured from the posterior
   direction toward the voxel's side (0-180 degrees): dorsal below the angle of that side's dorsal
   horn tip (the gray-matter voxel of the posterior half farthest from the centroid), ventral
   above the angle of the ventral horn tip (likewise, anterior half), lateral in between.
4. A slice without gray matter borrows the horn angles of the nearest slice with gray matter; with
   none in the volume, 35 and 130 degrees (the dti-cord phantom's template).

Limits: the columns are angular sectors, not the anatomical tract boundaries; a horn drawn thin,
broken or missing (1-2 voxels at DWI resolution) moves its boundary, and a cord that is not wider
than deep (compression, myelopathy) falls back to the image axes, so a tilted image then tilts the
midline. Labels outside {0, white, gray} are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoseg.errors import DatasetError
from autoseg.io import Geometry
from autoseg.modalities.dti import CORD_REGIONS

REGIONS = CORD_REGIONS
TISSUE_LABELS = {"background": 0, "white_matter": 1, "gray_matter": 2}
FALLBACK_HORN_DEG = (35.0, 130.0)  # dorsal, ventral tip angles from posterior
ROUND_RATIO = 1.15
_LEFT, _RIGHT = 0, 1


@dataclass(frozen=True)
class HornAngles:
    """Angles (degrees from posterior, toward the side) of the horn tips, per side (left, right)."""

    dorsal: tuple[float, float]
    ventral: tuple[float, float]


def label_names(values_seen: set[int], where: str = "label maps") -> dict[str, int]:
    """The 8 cord regions when any value above 2 occurs, else white/gray matter."""
    if values_seen - set(REGIONS.values()):
        raise DatasetError(f"{where}: label values {sorted(values_seen - set(REGIONS.values()))} are neither the 8 "
                           "cord regions (1-8) nor white/gray matter (1, 2)")
    return dict(REGIONS) if max(values_seen, default=0) > 2 else dict(TISSUE_LABELS)


def eight_regions(tissue: np.ndarray, geometry: Geometry, white: int = 1, gray: int = 2,
                  where: str = "label map") -> np.ndarray:
    """The REGIONS map (uint8) of a 3D white/gray matter label map on the same grid."""
    tissue = np.asarray(tissue)
    _check(tissue, geometry, white, gray, where)
    axis = slice_axis(geometry)
    coords = np.moveaxis(physical_xy(tissue.shape, geometry), 1 + axis, 1)  # (2, slices, a, b)
    slices = np.moveaxis(tissue, axis, 0)
    horns = [horn_angles(s == white, s == gray, c) for s, c in zip(slices, coords.transpose(1, 0, 2, 3))]
    filled = fill_missing(horns)
    out = np.stack([_slice_regions(s == white, s == gray, c, h)
                    for s, c, h in zip(slices, coords.transpose(1, 0, 2, 3), filled)])
    return np.moveaxis(out, 0, axis)


def _check(tissue: np.ndarray, geometry: Geometry, white: int, gray: int, where: str) -> None:
    if tissue.ndim != 3 or geometry.ndim != 3:
        raise DatasetError(f"{where}: a 3D label map is needed to find axial slices, found {tissue.ndim}D")
    unknown = sorted(set(np.unique(tissue).tolist()) - {0, white, gray})
    if unknown:
        raise DatasetError(f"{where}: label values {unknown} are neither background (0), white matter ({white}) "
                           f"nor gray matter ({gray}); give a two-label map (set the values with --white/--gray)")


def slice_axis(geometry: Geometry) -> int:
    """The numpy axis closest to the patient's head-foot (world z) axis."""
    direction = np.reshape(geometry.direction, (3, 3))  # columns: ITK axes x, y, z in world coordinates
    return 2 - int(np.argmax(np.abs(direction[2])))  # ITK axis i is numpy axis 2 - i


def physical_xy(shape: tuple[int, ...], geometry: Geometry) -> np.ndarray:
    """World x (left) and y (posterior) of every voxel centre, (2, *shape) in mm."""
    direction = np.reshape(geometry.direction, (3, 3))
    index = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")  # numpy order z, y, x
    itk_index = [index[2], index[1], index[0]]
    world = [geometry.origin[r] + sum(direction[r, c] * geometry.spacing[c] * itk_index[c] for c in range(3))
             for r in range(2)]
    return np.stack(world)


def cord_frame(cord: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Centre, left axis and posterior axis (unit 2-vectors) of one slice's cord; None without cord."""
    points = xy[:, cord].T  # (V, 2)
    if len(points) == 0:
        return None
    centre = points.mean(axis=0)
    left = np.array([1.0, 0.0])
    if len(points) >= 3:
        values, vectors = np.linalg.eigh(np.cov((points - centre).T))
        if values[0] > 0 and np.sqrt(values[1] / values[0]) >= ROUND_RATIO:
            left = vectors[:, 1] * (1.0 if vectors[0, 1] >= 0 else -1.0)
    posterior = np.array([-left[1], left[0]])
    if posterior[1] < 0:
        posterior = -posterior
    return centre, left, posterior


def _local(xy: np.ndarray, frame) -> tuple[np.ndarray, np.ndarray]:
    """Posterior and left coordinates in the cord frame."""
    centre, left, posterior = frame
    dx, dy = xy[0] - centre[0], xy[1] - centre[1]
    return dx * posterior[0] + dy * posterior[1], dx * left[0] + dy * left[1]


def horn_angles(white: np.ndarray, gray: np.ndarray, xy: np.ndarray) -> HornAngles | None:
    """This slice's horn-tip angles, or None when it has no gray matter on both sides."""
    frame = cord_frame(white | gray, xy)
    if frame is None or not gray.any():
        return None
    p, l = _local(xy, frame)
    p0, l0 = p[gray].mean(), l[gray].mean()
    dorsal, ventral = [], []
    for side in (_LEFT, _RIGHT):
        on_side = gray & ((l >= 0) if side == _LEFT else (l < 0))
        back, front = on_side & (p >= p0), on_side & (p < p0)
        if not back.any() or not front.any():
            return None
        dorsal.append(_tip_angle(p[back] - p0, np.abs(l[back] - l0)))
        ventral.append(_tip_angle(p[front] - p0, np.abs(l[front] - l0)))
    return HornAngles(tuple(dorsal), tuple(ventral))


def _tip_angle(dp: np.ndarray, dl: np.ndarray) -> float:
    tip = int(np.argmax(dp * dp + dl * dl))
    return float(np.degrees(np.arctan2(dl[tip], dp[tip])))


def fill_missing(horns: list[HornAngles | None]) -> list[HornAngles]:
    """Slices without horns take the nearest slice's (ties: the lower one), else the fallback."""
    known = [i for i, h in enumerate(horns) if h is not None]
    if not known:
        fallback = HornAngles((FALLBACK_HORN_DEG[0],) * 2, (FALLBACK_HORN_DEG[1],) * 2)
        return [fallback] * len(horns)
    return [h if h is not None else horns[min(known, key=lambda k: (abs(k - i), k))] for i, h in enumerate(horns)]


def _slice_regions(white: np.ndarray, gray: np.ndarray, xy: np.ndarray, horns: HornAngles) -> np.ndarray:
    out = np.zeros(white.shape, np.uint8)
    frame = cord_frame(white | gray, xy)
    if frame is None:
        return out
    p, l = _local(xy, frame)
    right = (l < 0).astype(np.uint8)
    out[gray] = REGIONS["gm_left"] + right[gray]
    p0, l0 = (p[gray].mean(), l[gray].mean()) if gray.any() else (0.0, 0.0)
    angle = np.degrees(np.arctan2(np.abs(l - l0), p - p0))
    dorsal_limit = np.where(right == 1, horns.dorsal[_RIGHT], horns.dorsal[_LEFT])
    ventral_limit = np.where(right == 1, horns.ventral[_RIGHT], horns.ventral[_LEFT])
    column = np.where(angle < dorsal_limit, 0, np.where(angle > ventral_limit, 2, 1))  # dorsal, lateral, ventral
    values = (REGIONS["wm_dorsal_left"] + 2 * column + right).astype(np.uint8)
    out[white] = values[white]
    return out
