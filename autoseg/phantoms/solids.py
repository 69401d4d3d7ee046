"""Analytic solids painted onto voxel grids: the building blocks of every phantom's anatomy.

World coordinates are millimetres in numpy order (z, y, x) with the patient in LPS: z points
superior, y posterior, x to the patient's left. A phantom's anatomy is a list of `Part`s (a
solid, the material it is made of and anatomical tags). `paint` draws them in list order; a
later part overwrites earlier ones in the intensity and the label volume alike, so the two can
never disagree. Each solid is evaluated only inside its bounding box, which keeps painting fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal

import numpy as np

from autoseg.io import Geometry

SolidKind = Literal["ellipsoid", "cylinder", "box", "ring"]


def sagittal_rotation(degrees: float) -> np.ndarray:
    """Tilt the superior axis toward anterior (-y) by `degrees` (rotation about x)."""
    a = np.radians(degrees)
    return np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def coronal_rotation(degrees: float) -> np.ndarray:
    """Tilt the superior axis toward the patient's left (+x) by `degrees` (rotation about y)."""
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0.0, -np.sin(a)], [0.0, 1.0, 0.0], [np.sin(a), 0.0, np.cos(a)]])


def axial_rotation(degrees: float) -> np.ndarray:
    """Turn the posterior axis toward the patient's left (+x) by `degrees` (rotation about z)."""
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def frame_from_axis(axis: np.ndarray, up_hint: np.ndarray | None = None) -> np.ndarray:
    """A rotation whose local axis 0 points along `axis` (used to lay cylinders along a direction)."""
    a0 = np.asarray(axis, float) / np.linalg.norm(axis)
    hint = np.array([1.0, 0.0, 0.0]) if up_hint is None else np.asarray(up_hint, float)
    if abs(np.dot(hint, a0)) > 0.95:  # hint almost parallel: any other axis will do
        hint = np.array([0.0, 1.0, 0.0]) if abs(a0[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    a1 = hint - np.dot(hint, a0) * a0
    a1 /= np.linalg.norm(a1)
    return np.column_stack([a0, a1, np.cross(a0, a1)])


@dataclass(frozen=True, eq=False)
class Solid:
    """A convex-ish analytic shape in its own local frame.

    `rotation` has the local axes as columns (world = center + rotation @ local). `semi_axes`
    are half sizes along local axes 0, 1, 2. Kinds: an ellipsoid; an elliptic cylinder whose
    axis is local 0; a box; a ring, the elliptic band of radial half thickness `thickness`
    around the ellipse with semi axes (1, 2) in the local (1, 2) plane, extruded along local 0
    and kept only where its angle atan2(l2/b, l1/a) lies in `arc` (radians).
    """

    kind: SolidKind
    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    thickness: float = 0.0
    arc: tuple[float, float] = (-np.pi, np.pi)

    @classmethod
    def make(cls, kind: SolidKind, center, semi_axes, rotation=None, **extra) -> "Solid":
        rot = np.eye(3) if rotation is None else np.asarray(rotation, float)
        return cls(kind, np.asarray(center, float), np.asarray(semi_axes, float), rot, **extra)

    def shrunk(self, margin: float) -> "Solid":
        """The same solid with every semi axis reduced by `margin` mm (never below 30 %)."""
        return replace(self, semi_axes=np.maximum(self.semi_axes - margin, 0.3 * self.semi_axes))

    def transformed(self, matrix: np.ndarray, offset=(0.0, 0.0, 0.0)) -> "Solid":
        """The solid seen in a rotated frame: world point p becomes matrix @ p + offset."""
        return replace(self, center=matrix @ self.center + np.asarray(offset, float), rotation=matrix @ self.rotation)

    def half_extent(self) -> np.ndarray:
        """Half size of the world-axis bounding box (tight for ellipsoids, safe for the rest)."""
        weighted = self.rotation * self._outer_semi_axes()[None, :]
        if self.kind == "ellipsoid":
            return np.sqrt((weighted**2).sum(axis=1))
        if self.kind == "cylinder":
            return np.abs(weighted[:, 0]) + np.sqrt((weighted[:, 1:] ** 2).sum(axis=1))
        return np.abs(weighted).sum(axis=1)

    def _outer_semi_axes(self) -> np.ndarray:
        if self.kind == "ring":
            return self.semi_axes + np.array([0.0, self.thickness, self.thickness])
        return self.semi_axes

    def contains(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Inside test for broadcastable world coordinate arrays (e.g. open-mesh axes)."""
        rel = (z - self.center[0], y - self.center[1], x - self.center[2])
        local = [sum(rel[j] * self.rotation[j, i] for j in range(3)) for i in range(3)]
        if self.kind == "ring":
            return self._ring_contains(local)
        u = [local[i] / self.semi_axes[i] for i in range(3)]
        if self.kind == "ellipsoid":
            return u[0] ** 2 + u[1] ** 2 + u[2] ** 2 <= 1.0
        if self.kind == "cylinder":
            return (u[1] ** 2 + u[2] ** 2 <= 1.0) & (np.abs(u[0]) <= 1.0)
        return (np.abs(u[0]) <= 1.0) & (np.abs(u[1]) <= 1.0) & (np.abs(u[2]) <= 1.0)

    def hit_by_rays(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which rays along +x through (z, y) cross the solid.

        A ring counts as its outer elliptic cylinder (hole and arc ignored), which is exact for a
        closed ring seen from the side, the only way labelled rings are used.
        """
        z, y = np.broadcast_arrays(z, y)
        origin = np.stack([z - self.center[0], y - self.center[1], np.full(z.shape, -self.center[2])], -1)
        semi = self._outer_semi_axes()
        p = origin @ self.rotation / semi  # local, unit-scaled coordinates
        d = self.rotation[2] / semi
        lo, hi = np.full(p.shape[:-1], -np.inf), np.full(p.shape[:-1], np.inf)
        round_axes = {"ellipsoid": (0, 1, 2), "cylinder": (1, 2), "ring": (1, 2), "box": ()}[self.kind]
        if round_axes:
            lo, hi = _clip_to_quadric(p[..., round_axes], d[list(round_axes)], lo, hi)
        for i in (i for i in range(3) if i not in round_axes):
            lo, hi = _clip_to_slab(p[..., i], d[i], lo, hi)
        return lo <= hi

    def _ring_contains(self, local: list[np.ndarray]) -> np.ndarray:
        half_length, a, b = self.semi_axes
        t = self.thickness
        outer = (local[1] / (a + t)) ** 2 + (local[2] / (b + t)) ** 2 <= 1.0
        inner = (local[1] / max(a - t, 1e-6)) ** 2 + (local[2] / max(b - t, 1e-6)) ** 2 >= 1.0
        angle = np.arctan2(local[2] / b, local[1] / a)
        in_arc = (angle >= self.arc[0]) & (angle <= self.arc[1])
        return outer & inner & in_arc & (np.abs(local[0]) <= half_length)


def _clip_to_quadric(p: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersect ray intervals with |p + t d| <= 1 (unit ball/disc in the given local axes)."""
    a = float(d @ d)
    c = (p**2).sum(-1) - 1.0
    if a < 1e-12:  # ray parallel to a cylinder's axis: inside everywhere or nowhere
        return lo, np.where(c <= 0, hi, -np.inf)
    b = 2.0 * (p @ d)
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t0, t1 = (-b - root) / (2 * a), (-b + root) / (2 * a)
    return np.maximum(lo, t0), np.where(disc >= 0, np.minimum(hi, t1), -np.inf)


def _clip_to_slab(p: np.ndarray, d: float, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersect ray intervals with |p + t d| <= 1 along one local axis."""
    if abs(d) < 1e-12:
        return lo, np.where(np.abs(p) <= 1.0, hi, -np.inf)
    t0, t1 = (-1.0 - p) / d, (1.0 - p) / d
    return np.maximum(lo, np.minimum(t0, t1)), np.minimum(hi, np.maximum(t0, t1))


@dataclass(frozen=True)
class Part:
    """One painted piece of anatomy; `level` (e.g. "L3") and `role` (e.g. "pedicle") drive labels."""

    solid: Solid
    material: str
    level: str = ""
    role: str = ""


def shelled(solid: Solid, cortex_mm: float, level: str = "", role: str = "") -> list[Part]:
    """A bone: cortical shell of `cortex_mm` around cancellous interior."""
    return [Part(solid, "cortical", level, role), Part(solid.shrunk(cortex_mm), "cancellous", level, role)]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape, spacing and the world position of voxel (0, 0, 0), all (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centered(cls, shape, spacing, center) -> "Grid":
        """The grid whose middle lies at world point `center`."""
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
        origin = tuple(float(c - (n - 1) * s / 2) for c, n, s in zip(center, shape, spacing))
        return cls(shape, spacing, origin)

    def axis(self, i: int) -> np.ndarray:
        return self.origin[i] + self.spacing[i] * np.arange(self.shape[i])

    def geometry(self) -> Geometry:
        """Image geometry (identity direction) in SimpleITK's (x, y, z) order."""
        spacing, origin = (tuple(float(v) for v in reversed(t)) for t in (self.spacing, self.origin))
        return Geometry(spacing, origin, tuple(np.eye(3).ravel().tolist()))

    def index_box(self, center: np.ndarray, half_extent: np.ndarray) -> tuple[slice, ...] | None:
        """Voxel slices covering a world box, or None when the box misses the grid."""
        slices = []
        for i in range(3):
            lo = int(np.ceil((center[i] - half_extent[i] - self.origin[i]) / self.spacing[i]))
            hi = int(np.floor((center[i] + half_extent[i] - self.origin[i]) / self.spacing[i])) + 1
            lo, hi = max(lo, 0), min(hi, self.shape[i])
            if lo >= hi:
                return None
            slices.append(slice(lo, hi))
        return tuple(slices)


def paint(
    grid: Grid,
    parts: list[Part],
    values: dict[str, float],
    label_of: Callable[[Part], int],
    background: float,
    ray_jitter: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterize `parts` in order into a float32 value volume and a uint8 label volume.

    `ray_jitter` (shape[:2], values in [0, 1)) shifts each column of voxels along the last axis
    by that fraction of a step: summing such a volume along that axis is stratified sampling of
    a line integral, which turns the rings and stripes of regular sampling into faint noise.
    """
    volume = np.full(grid.shape, background, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    axes = [grid.axis(i) for i in range(3)]
    for part in parts:
        box = grid.index_box(part.solid.center, part.solid.half_extent() + (0.0, 0.0, grid.spacing[2]))
        if box is None:
            continue
        z, y, x = axes[0][box[0]][:, None, None], axes[1][box[1]][None, :, None], axes[2][box[2]][None, None, :]
        if ray_jitter is not None:
            x = x + ray_jitter[box[0], box[1]][:, :, None] * grid.spacing[2]
        inside = part.solid.contains(z, y, x)
        volume[box][inside] = values[part.material]
        labels[box][inside] = label_of(part)
    return volume, labels


def transform_parts(parts: list[Part], matrix: np.ndarray, offset=(0.0, 0.0, 0.0)) -> list[Part]:
    """Every part seen in a rotated/shifted frame (see `Solid.transformed`)."""
    return [replace(p, solid=p.solid.transformed(matrix, offset)) for p in parts]
