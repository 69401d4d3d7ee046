"""`cervical-xray`: lateral radiographs of the cervical spine with C1-C7 labelled "spine".

The neck is a soft-tissue cylinder holding the airway and a lordotic column: the atlas ring,
the axis with its dens, C3-C7 (bodies, pedicles, articular pillars, laminae, spinous processes)
and unlabelled T1-T2 below. Skull base, mandible and hyoid sit on top; the shoulders with
clavicles and humeral heads overlap the lower levels at a random height, which is what makes
C7 hard to see on real lateral films. Patient rotation of a few degrees doubles the contours
of the posterior elements. The default image is 160 x 128 pixels of 1.25 mm; `scale` multiplies
the pixel count (finer pixels, same field of view).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from autoseg.io import Geometry
from autoseg.phantoms.common import BONE_MATERIALS, Phantom, PhantomCase, scaled_shape
from autoseg.phantoms.radiography import XRAY_MU, beam_matrix, expose, project, radiograph_rows, to_display
from autoseg.phantoms.solids import Grid, Part, Solid, frame_from_axis, sagittal_rotation, shelled
from autoseg.phantoms.spine import (
    CERVICAL, THORACIC, Pose, VertebraShape, canal_parts, column_rotation, disc_parts, stack_poses, vertebra_parts,
)

LABELS = {"background": 0, "spine": 1}
CERVICAL_LEVELS = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
STACK_LEVELS = ("T2", "T1", "C7", "C6", "C5", "C4", "C3", "C2", "C1")  # bottom to top
_LORDOSIS_DEG = (22.0, 20.0, 15.0, 10.0, 4.0, -2.0, -7.0, -12.0, -15.0)
_SPINOUS_MM = {"T2": 36.0, "T1": 34.0, "C7": 32.0, "C6": 22.0, "C5": 17.0, "C4": 15.0, "C3": 15.0, "C2": 24.0}
BASE_DETECTOR = (160, 128)
BASE_PIXEL_MM = 1.25
RAY_STEP_MM = 3.0


def spine_label(part: Part) -> int:
    return int(part.level in CERVICAL_LEVELS and part.material in BONE_MATERIALS)


def tube(start, end, radius_y: float, radius_x: float, material: str, level: str = "", role: str = "") -> Part:
    """An elliptic cylinder from `start` to `end` (world mm)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    rotation = frame_from_axis(end - start, up_hint=np.array([0.0, 1.0, 0.0]))
    semi = (np.linalg.norm(end - start) / 2, radius_y, radius_x)
    return Part(Solid.make("cylinder", (start + end) / 2, semi, rotation), material, level, role)


def level_shapes(rng: np.random.Generator) -> list[VertebraShape]:
    """Shapes bottom to top (T2..C2; C1 is built separately), varied in size per patient."""
    size = rng.uniform(0.9, 1.1)
    shapes = []
    for level in STACK_LEVELS[:-1]:
        base = THORACIC.scaled(0.8) if level.startswith("T") else CERVICAL
        shape = replace(base.scaled(size), spinous_length=_SPINOUS_MM[level] * size)
        if level == "C2":
            shape = replace(shape, body_height=shape.body_height * 1.25)
        shapes.append(shape)
    shapes.append(replace(CERVICAL.scaled(size), body_height=10.0 * size))  # C1: ring height only
    return shapes


def column_poses(rng: np.random.Generator, shapes: list[VertebraShape]) -> list[Pose]:
    """T2..C1 with a random depth of lordosis (from straightened to deep) and a slight side bend."""
    depth, bend = rng.uniform(0.2, 1.3), rng.uniform(-4, 4)
    rotations = [column_rotation(depth * a + rng.normal(0, 1.5), bend * np.sin(i / 3)) for i, a in enumerate(_LORDOSIS_DEG)]
    gaps = [float(rng.uniform(4.5, 6.5)) for _ in range(len(shapes) - 2)] + [3.0]  # no disc between C2 and C1
    return stack_poses(Pose(np.zeros(3), rotations[0]), [s.body_height for s in shapes], gaps, rotations)


def atlas_parts(pose: Pose, shape: VertebraShape) -> list[Part]:
    """C1: a bony ring (anterior and posterior arches) with lateral masses and transverse processes."""
    ring_center = pose.point((0.0, 0.6 * shape.body_depth, 0.0))
    ring_semi = (4.5, 0.5 * shape.body_depth + 0.75 * shape.canal_depth, 0.55 * shape.canal_width)
    ring = Solid.make("ring", ring_center, ring_semi, pose.rotation, thickness=3.0)
    parts = [Part(ring, "mixed_bone", "C1", "posterior")]
    for side in (-1.0, 1.0):
        mass = pose.point((0.0, 0.35 * shape.body_depth, side * 0.6 * shape.canal_width))
        parts += shelled(Solid.make("ellipsoid", mass, (8.0, 8.0, 6.5), pose.rotation), 1.5, "C1", "posterior")
        tip = pose.point((0.0, 0.4 * shape.body_depth, side * (0.6 * shape.canal_width + 16.0)))
        parts.append(tube(mass, tip, 3.5, 3.5, "mixed_bone", "C1", "posterior"))
    return parts


def dens_parts(c2: Pose, shape: VertebraShape) -> list[Part]:
    """The odontoid peg rising from the C2 body into the atlas ring."""
    base = c2.point((shape.body_height / 2 - 2.0, 0.0, 0.0))
    tip = c2.point((shape.body_height / 2 + 15.0, 0.5, 0.0))
    return [tube(base, tip, 5.0, 5.0, "cortical", "C2", "body"), tube(base, tip, 3.5, 3.5, "cancellous", "C2", "body")]


def column(rng: np.random.Generator) -> tuple[list[Part], dict[str, Pose]]:
    """Discs and canal, then T2..C2 vertebrae, the dens and the atlas; poses by level."""
    shapes = level_shapes(rng)
    poses = column_poses(rng, shapes)
    by_level = dict(zip(STACK_LEVELS, poses))
    soft: list[Part] = []
    for i in range(len(poses) - 2):
        soft += disc_parts(poses[i + 1], poses[i], shapes[i + 1], shapes[i])
    for pose, shape in zip(poses[:-1], shapes[:-1]):
        soft += canal_parts(pose, shape, 5.0)
    bones: list[Part] = []
    for level, pose, shape in zip(STACK_LEVELS[:-1], poses[:-1], shapes[:-1]):
        bones += vertebra_parts(shape, pose, level)
    bones += dens_parts(by_level["C2"], shapes[-2]) + atlas_parts(by_level["C1"], shapes[-1])
    return soft + bones, by_level


def neck_parts(rng: np.random.Generator, poses: dict[str, Pose], shoulder_top: float) -> list[Part]:
    """Neck soft tissue with a fat layer, the airway in front of the column, and the shoulders."""
    c4 = poses["C4"].center
    semi_y, semi_x = rng.uniform(52, 66), rng.uniform(50, 64)
    center = c4 + np.array([0.0, -rng.uniform(2, 10), 0.0])
    parts = [
        Part(Solid.make("cylinder", center, (400.0, semi_y, semi_x)), "fat"),
        Part(Solid.make("cylinder", center, (400.0, semi_y - 6.0, semi_x - 6.0)), "soft"),
    ]
    front = {lvl: poses[lvl].point((0.0, -9.0 - rng.uniform(3, 7), 0.0)) for lvl in ("C1", "C4", "T1")}
    width = rng.uniform(7, 10)
    parts.append(tube(front["C1"] + [25.0, -4.0, 0.0], front["C4"] + [0.0, -3.0, 0.0], width, 12.0, "air"))
    parts.append(tube(front["C4"] + [0.0, -3.0, 0.0], front["T1"] + [-40.0, -8.0, 0.0], width * 0.9, 9.0, "air"))
    c1 = poses["C1"].center
    face = Solid.make("ellipsoid", c1 + [25.0, -42.0, 0.0], (70.0, 58.0, 62.0))  # face and floor of the mouth
    parts.append(Part(face, "soft"))
    for side in (-1.0, 1.0):
        shoulder = Solid.make("ellipsoid", [shoulder_top - 80.0, c4[1] + 5.0, side * 140.0], (80.0, 70.0, 95.0))
        parts.append(Part(shoulder, "muscle"))
    return parts


def head_and_shoulder_bones(rng: np.random.Generator, poses: dict[str, Pose], shoulder_top: float) -> list[Part]:
    """Skull base, mandible, hyoid, clavicles and humeral heads (all unlabelled bone)."""
    c1, c3, t1 = poses["C1"].center, poses["C3"].center, poses["T1"].center
    skull = Solid.make("ellipsoid", c1 + [78.0, 12.0, 0.0], (72.0, 92.0, 70.0))
    parts = [Part(skull, "mixed_bone"), Part(skull.shrunk(7.0), "soft")]
    jaw = c1 + [-rng.uniform(12, 25), -rng.uniform(42, 52), 0.0]
    slope = sagittal_rotation(rng.uniform(15, 30))  # the mandible's lower border drops toward the chin
    for arc in ((1.75, np.pi), (-np.pi, -1.75)):
        body = Solid.make("ring", jaw + [0.0, 18.0, 0.0], (12.0, 42.0, 44.0), slope, thickness=4.5, arc=arc)
        parts.append(Part(body, "mixed_bone"))
    for side in (-1.0, 1.0):
        parts.append(tube(jaw + [0.0, 22.0, side * 44.0], jaw + [48.0, 30.0, side * 46.0], 12.0, 3.5, "mixed_bone"))
    hyoid = c3 + [-4.0, -40.0 + 18.0, 0.0]
    parts.append(Part(Solid.make("ring", hyoid, (2.5, 18.0, 20.0), thickness=2.0, arc=(1.9, np.pi)), "mixed_bone"))
    parts.append(Part(Solid.make("ring", hyoid, (2.5, 18.0, 20.0), thickness=2.0, arc=(-np.pi, -1.9)), "mixed_bone"))
    for side in (-1.0, 1.0):
        notch = t1 + [-25.0, -55.0, side * 20.0]
        parts += [tube(notch, [shoulder_top - 25.0, t1[1] - 10.0, side * 150.0], 7.0, 7.0, "mixed_bone")]
        humeral_head = Solid.make("ellipsoid", [shoulder_top - 55.0, t1[1] + 5.0, side * 175.0], (24.0, 24.0, 22.0))
        parts += shelled(humeral_head, 2.0)
    return parts


def beam_grid(poses: dict[str, Pose], angle_deg: float, scale: float, rng: np.random.Generator) -> Grid:
    rows, cols = scaled_shape(BASE_DETECTOR, scale)
    pixel = BASE_PIXEL_MM * BASE_DETECTOR[0] / rows
    c1, c4, c7 = poses["C1"].center, poses["C4"].center, poses["C7"].center
    world_center = np.array([(c1[0] + c7[0]) / 2 + 8.0, c4[1] + 2.0, c4[2]]) + rng.uniform(-10, 10, size=3)
    center = beam_matrix(angle_deg) @ world_center
    center[2] = 0.0
    depth = int(np.ceil(440.0 / RAY_STEP_MM))  # wide enough for both shoulders
    return Grid.centered((rows, cols, depth), (pixel, pixel, RAY_STEP_MM), center)


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0) -> PhantomCase:
    """Anatomy -> attenuation in the beam frame -> Beer-Lambert with quantum noise -> 12-bit display."""
    spine, poses = column(rng)
    shoulder_top = poses["C7"].center[0] + rng.uniform(-25, 15)  # how far the shoulders reach over the column
    parts = neck_parts(rng, poses, shoulder_top) + spine + head_and_shoulder_bones(rng, poses, shoulder_top)
    angle = 90.0 + float(rng.uniform(-6, 6))
    grid = beam_grid(poses, angle, scale, rng)
    line_integral, label = project(parts, angle, grid, XRAY_MU, spine_label, (1,), rng)
    counts, i0 = expose(line_integral, float(rng.uniform(400, 2000)), label > 0, rng)
    image = to_display(counts, i0, label > 0, rng)
    metadata = {"angle_deg": round(angle, 2), "pixel_spacing_mm": round(grid.spacing[0], 4)}
    return PhantomCase(radiograph_rows(image), radiograph_rows(label), Geometry.default(2), metadata)


PHANTOM = Phantom(
    name="cervical-xray",
    folder="Dataset901_CervicalXray",
    case_prefix="cxr",
    description="Synthetic lateral cervical spine radiographs; C1-C7 labelled as 'spine'.",
    channel_names={"0": "xray"},
    labels=LABELS,
    file_ending=".png",
    default_cases=4,
    options={"scale": 1.0},
    make_case=make_case,
)
