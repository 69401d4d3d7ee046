"""A randomized lumbar region (T12-L5, sacrum, ilia, abdomen) shared by the lumbar CT and X-ray phantoms.

World origin sits at the L3 body center (before a random shift). The column follows a lumbar
lordosis whose depth, side bend and axial twist vary per case; the abdomen around it has a fat
layer, psoas and back muscles, kidneys, great vessels and bowel gas, the last being what most
often hides the spine on a real lumbar radiograph.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

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


def level_shapes(rng: np.random.Generator) -> list[VertebraShape]:
    """Shapes for L5..T12: lower levels are wider and deeper; the whole spine varies in size."""
    size = rng.uniform(0.9, 1.1)
    shapes = []
    for i, level in enumerate(COLUMN_LEVELS):
        grow = 1.04 - 0.03 * i  # L5 largest
        shape = LUMBAR.scaled(size)
        shape = replace(shape, body_width=shape.body_width * grow, body_depth=shape.body_depth * grow)
        if level == "T12":
            shape = replace(shape.scaled(0.9), spinous_tilt_deg=25.0, transverse_length=10.0)
        shapes.append(shape)
    return shapes


def column_poses(rng: np.random.Generator, shapes: list[VertebraShape]) -> tuple[list[Pose], list[float]]:
    """Poses L5..T12 from a random lordosis, scoliosis and twist; returns poses and disc gaps."""
    depth = rng.uniform(0.7, 1.3)
    bend, twist = rng.uniform(-6, 6), rng.uniform(-5, 5)
    phase = rng.uniform(0, np.pi)
    rotations = []
    for i, base in enumerate(_LORDOSIS_DEG):
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


def lumbar_anatomy(rng: np.random.Generator) -> LumbarAnatomy:
    """The whole randomized lumbar region, centered near L3 and shifted by up to 10 mm."""
    shapes = level_shapes(rng)
    poses, gaps = column_poses(rng, shapes)
    shift = -poses[2].center + rng.uniform(-10, 10, size=3)
    poses = [Pose(p.center + shift, p.rotation) for p in poses]
    lumbosacral_disc, sacrum, s1 = sacrum_parts(rng, poses[0], shapes[0])
    centers = {level: pose.center for level, pose in zip(COLUMN_LEVELS, poses)}
    centers["S1"] = s1.center
    soft, body_center, body_semi = soft_tissue_parts(rng, centers)
    column = column_parts(shapes, poses, list(COLUMN_LEVELS), gaps)
    bones = sacrum + ilium_parts(s1, shapes[0].body_width) + rib_parts(poses[-1], shapes[-1])
    return LumbarAnatomy(soft + lumbosacral_disc + column + bones, centers, body_center, body_semi)
