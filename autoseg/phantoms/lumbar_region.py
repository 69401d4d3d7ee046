"""A randomized lumbar region (T12-L5, sacrum, ilia, abdomen) shared by the lumbar CT and X-ray phantoms.

World origin sits at the L3 body center (before a random shift). The column follows a lumbar
lordosis whose depth, side bend and axial twist vary per case; the abdomen around it has a fat
layer, psoas and back muscles, kidneys, great vessels and bowel gas, the last being what most
often hides the spine on a real lumbar radiograph.

A `ColumnVariant` (all off by default, so default cases stay as they were) adds thoracic
vertebrae with ribs above T12 (for trunk-sized fields of view), a scoliotic side bend, or
transitional anatomy: a sixth lumbar vertebra ("L6", between L5 and the sacrum, unlabelled like
T12) or a sacralised L5 (bony bridges from L5's transverse processes to the sacral alae).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from autoseg.phantoms.solids import Part, Solid, axial_rotation, sagittal_rotation, shelled
from autoseg.phantoms.spine import (
    LUMBAR, Pose, VertebraShape, column_parts, column_rotation, disc_parts, rib_part, stack_poses,
)

LUMBAR_LEVELS = ("L1", "L2", "L3", "L4", "L5")
COLUMN_LEVELS = ("L5", "L4", "L3", "L2", "L1", "T12")  # bottom to top, the order of stacking
_LORDOSIS_DEG = (22.0, 12.0, 4.0, -3.0, -8.0, -11.0)  # superior axis tilt toward anterior, L5..T12
_SACRAL_SEGMENTS = 5


@dataclass(frozen=True)
class LumbarAnatomy:
    parts: list[Part]
    centers: dict[str, np.ndarray]  # level -> body center (world mm), incl. "S1"
    body_center: np.ndarray  # abdomen cylinder center
    body_semi_yx: tuple[float, float]


@dataclass(frozen=True)
class ColumnVariant:
    """Departures from the usual column (see the module docstring); the defaults change nothing."""

    thoracic_above: int = 0  # vertebrae above T12 (T11, T10, ...), unlabelled, each with a pair of ribs
    scoliosis_deg: float = 0.0  # side-bend amplitude per level in degrees (0: the usual mild bend)
    transitional: Literal["none", "L6", "sacralized_L5"] = "none"

    def levels(self) -> tuple[str, ...]:
        """Bottom to top, the order of stacking."""
        thoracic = tuple(f"T{11 - i}" for i in range(self.thoracic_above))
        return (("L6",) if self.transitional == "L6" else ()) + COLUMN_LEVELS + thoracic


def level_shapes(rng: np.random.Generator, levels: tuple[str, ...] = COLUMN_LEVELS) -> list[VertebraShape]:
    """Shapes for `levels` (bottom to top): lower levels are wider and deeper; the whole spine varies in size."""
    size = rng.uniform(0.9, 1.1)
    shapes = []
    for i, level in enumerate(levels):
        grow = 1.04 - 0.03 * i  # the lowest largest
        shape = LUMBAR.scaled(size)
        shape = replace(shape, body_width=shape.body_width * grow, body_depth=shape.body_depth * grow)
        if level.startswith("T"):
            shrink = 0.9 - 0.03 * (12 - int(level[1:]))  # thoracic bodies shrink upward
            shape = replace(shape.scaled(shrink), spinous_tilt_deg=25.0, transverse_length=10.0)
        shapes.append(shape)
    return shapes


def _lordosis(count: int) -> list[float]:
    """Superior axis tilts of `count` levels from the bottom: the lumbar lordosis, then a growing kyphosis."""
    return list(_LORDOSIS_DEG[:count]) + [_LORDOSIS_DEG[-1] - 3.0 * (i + 1) for i in range(count - len(_LORDOSIS_DEG))]


def column_poses(rng: np.random.Generator, shapes: list[VertebraShape],
                 scoliosis_deg: float = 0.0) -> tuple[list[Pose], list[float]]:
    """Poses from the bottom level up from a random lordosis, scoliosis and twist; returns poses and
    disc gaps. `scoliosis_deg` (signed) replaces the usual mild side bend by a scoliotic one."""
    depth = rng.uniform(0.7, 1.3)
    bend, twist = rng.uniform(-6, 6), rng.uniform(-5, 5)
    bend = scoliosis_deg or bend
    phase = rng.uniform(0, np.pi)
    rotations = []
    for i, base in enumerate(_lordosis(max(len(shapes), len(_LORDOSIS_DEG)))):
        wave = np.sin(phase + i * np.pi / 5)
        rotations.append(column_rotation(depth * base + rng.normal(0, 1.5), bend * wave, twist * wave))
    gaps = [float(rng.uniform(8, 12)) for _ in range(len(shapes) - 1)]
    base = Pose(np.zeros(3), rotations[0])
    return stack_poses(base, [s.body_height for s in shapes], gaps, rotations), gaps


def sacrum_parts(rng: np.random.Generator, l5: Pose, l5_shape: VertebraShape) -> tuple[list[Part], list[Part], Pose]:
    """S1-S5 as a curved chain of shrinking bodies below L5, with alae and a median crest.

    Returns the L5/S1 disc (to paint before any bone), the sacral bones and the S1 pose.
    """
    slope = np.degrees(np.arctan2(-l5.rotation[1, 0], l5.rotation[0, 0])) + rng.uniform(12, 20)
    heights = [l5_shape.body_height] + [28.0 - 4.5 * i for i in range(_SACRAL_SEGMENTS)]
    rotations = [l5.rotation] + [sagittal_rotation(slope - 14.0 * i) for i in range(_SACRAL_SEGMENTS)]
    gaps = [float(rng.uniform(9, 12))] + [-3.0] * (_SACRAL_SEGMENTS - 1)  # sacral segments are fused
    poses = stack_poses(l5, heights, gaps, rotations, upward=False)[1:]
    parts: list[Part] = []
    for i, pose in enumerate(poses):
        shrink = 1.0 - 0.17 * i
        semi = (heights[i + 1] / 2, 0.5 * l5_shape.body_depth * shrink, 0.5 * l5_shape.body_width * shrink)
        parts += shelled(Solid.make("cylinder", pose.center, semi, pose.rotation), 1.5, "S", "body")
        crest = pose.point((0.0, semi[1] + 14.0 * shrink, 0.0))
        crest_solid = Solid.make("ellipsoid", crest, (semi[0], 6.0, 5.0 * shrink), pose.rotation)
        parts.append(Part(crest_solid, "mixed_bone", "S", "posterior"))
    s1 = poses[0]
    for side in (-1.0, 1.0):
        ala = s1.point((-8.0, 8.0, side * (0.5 * l5_shape.body_width + 18.0)))
        parts += shelled(Solid.make("ellipsoid", ala, (26.0, 20.0, 24.0), s1.rotation), 2.0, "S", "posterior")
    disc = disc_parts(l5, s1, l5_shape, replace(l5_shape, body_height=heights[1]))
    return disc, parts, s1


def ilium_parts(s1: Pose, width: float) -> list[Part]:
    """Iliac wings flanking the sacrum: thin, fan-shaped plates opening forward (not labelled)."""
    parts: list[Part] = []
    for side in (-1.0, 1.0):
        center = s1.center + np.array([10.0, 5.0, side * (width / 2 + 62.0)])
        rotation = axial_rotation(side * 35.0)  # the wing's broad face turns forward and out
        plate = Solid.make("ellipsoid", center, (62.0, 9.0, 50.0), rotation)
        parts += [Part(plate, "mixed_bone", "", "ilium"), Part(plate.shrunk(3.0), "cancellous", "", "ilium")]
    return parts


def rib_parts(t12: Pose, shape: VertebraShape) -> list[Part]:
    """The short floating 12th ribs, sloping down and forward from the T12 transverse processes."""
    parts = []
    for side in (-1.0, 1.0):
        root = t12.point((0.0, 0.5 * shape.body_depth + 0.5 * shape.canal_depth, side * (0.5 * shape.canal_width + 16.0)))
        parts.append(rib_part(root, (75.0, 95.0), (0.35, 1.25), side, 25.0, half_height=4.5))
    return parts


def soft_tissue_parts(
    rng: np.random.Generator, centers: dict[str, np.ndarray]
) -> tuple[list[Part], np.ndarray, tuple[float, float]]:
    """Abdomen wall (fat over soft tissue), muscles, kidneys, great vessels and bowel gas."""
    semi_y, semi_x = rng.uniform(100, 135), rng.uniform(135, 175)
    back = centers["L3"][1] + 66.0 + rng.uniform(15, 40)  # skin behind the spinous processes
    body_center = np.array([0.0, back - semi_y, centers["L3"][2]])
    fat = rng.uniform(10, 35)
    parts = [
        Part(Solid.make("cylinder", body_center, (600.0, semi_y, semi_x)), "fat"),
        Part(Solid.make("cylinder", body_center, (600.0, semi_y - fat, semi_x - fat)), "soft"),
    ]
    l3 = centers["L3"]
    for side in (-1.0, 1.0):
        parts.append(Part(Solid.make("ellipsoid", l3 + [-40.0, 2.0, side * 42.0], (120.0, 20.0, 22.0)), "muscle"))
        parts.append(Part(Solid.make("ellipsoid", l3 + [10.0, 58.0, side * 38.0], (200.0, 24.0, 30.0)), "muscle"))
        kidney_center = centers["L1"] + [0.0, 10.0, side * 78.0]
        kidney = Solid.make("ellipsoid", kidney_center, (55.0, 25.0, 30.0), axial_rotation(side * 20))
        parts.append(Part(kidney, "organ"))
    vessel_top, vessel_bottom = centers["L1"][0] + 60.0, centers["L4"][0]
    vessel_mid, vessel_half = (vessel_top + vessel_bottom) / 2, (vessel_top - vessel_bottom) / 2
    parts.append(Part(Solid.make("cylinder", [vessel_mid, l3[1] - 32.0, l3[2] + 12.0], (vessel_half, 11.0, 11.0)), "blood"))
    parts.append(Part(Solid.make("cylinder", [vessel_mid, l3[1] - 30.0, l3[2] - 24.0], (vessel_half, 12.0, 13.0)), "blood"))
    for _ in range(int(rng.integers(3, 9))):
        center = [rng.uniform(-120, 90), rng.uniform(-105, -45) + l3[1], rng.uniform(-100, 100)]
        parts.append(Part(Solid.make("ellipsoid", center, rng.uniform(8, 24, size=3)), "gas"))
    return parts, body_center, (semi_y, semi_x)


def sacralization_parts(l5: Pose, s1: Pose, shape: VertebraShape) -> list[Part]:
    """A sacralised L5: a bony bridge on each side from L5's transverse process down to the sacral ala."""
    parts = []
    for side in (-1.0, 1.0):
        top = l5.point((0.0, 0.5 * shape.body_depth, side * (0.5 * shape.body_width + 18.0)))
        bottom = s1.point((-4.0, 8.0, side * (0.5 * shape.body_width + 18.0)))
        half = max(float(np.linalg.norm(top - bottom)) / 2 + 4.0, 8.0)
        parts.append(Part(Solid.make("ellipsoid", (top + bottom) / 2, (half, 9.0, 11.0), s1.rotation), "mixed_bone",
                          "L5", "transverse"))
    return parts


def lumbar_anatomy(rng: np.random.Generator, variant: ColumnVariant = ColumnVariant()) -> LumbarAnatomy:
    """The whole randomized lumbar region, centered near L3 and shifted by up to 10 mm."""
    levels = variant.levels()
    shapes = level_shapes(rng, levels)
    poses, gaps = column_poses(rng, shapes, variant.scoliosis_deg)
    shift = -poses[levels.index("L3")].center + rng.uniform(-10, 10, size=3)
    poses = [Pose(p.center + shift, p.rotation) for p in poses]
    lumbosacral_disc, sacrum, s1 = sacrum_parts(rng, poses[0], shapes[0])
    centers = {level: pose.center for level, pose in zip(levels, poses)}
    centers["S1"] = s1.center
    soft, body_center, body_semi = soft_tissue_parts(rng, centers)
    column = column_parts(shapes, poses, list(levels), gaps)
    bones = sacrum + ilium_parts(s1, shapes[0].body_width)
    for i in range(levels.index("T12"), len(levels)):
        bones += rib_parts(poses[i], shapes[i])
    if variant.transitional == "sacralized_L5":
        bones += sacralization_parts(poses[0], s1, shapes[0])
    return LumbarAnatomy(soft + lumbosacral_disc + column + bones, centers, body_center, body_semi)
