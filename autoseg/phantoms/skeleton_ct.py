"""`skeleton-ct`: trunk-to-thigh CT (HU) of a patient on a scanner table; every bone labelled 1.

The patient lies supine on a foam pad over a curved carbon table plate. The plate is dense
(several hundred HU) but lies outside the body and is *not* bone: a network that merely
thresholds at bone density will segment it and be marked wrong. Inside the body: fat layer,
lungs (optional), heart, liver, bladder and bowel gas; bones are the T7-L5 column with ribs and
sternum, sacrum, ilia, acetabula, pubic and ischial rami, and both femora.
World origin: between the femoral heads. The default grid (48 x 64 x 80 at 12.5 x 5 x 5 mm)
covers 600 x 320 x 400 mm; `scale=4` gives about 3.1 x 1.25 x 1.25 mm. `prone=True` turns the
patient over (the table lies on top of the image instead of underneath).

Each case knows its truth beyond the label: `extras["table_mask"]` (table plate and foam pad) and
`extras["body_mask"]` (every voxel painted by the patient), so table removal can be scored.
"""
from __future__ import annotations

import numpy as np

from autoseg.phantoms.common import TISSUE_HU, Phantom, PhantomCase, bone_label, finish_ct, jittered, scaled_shape
from autoseg.phantoms.lumbar_region import column_poses, ilium_parts, level_shapes, sacrum_parts
from autoseg.phantoms.solids import Grid, Part, Solid, frame_from_axis, paint, shelled
from autoseg.phantoms.spine import THORACIC, Pose, column_parts, column_rotation, rib_part, stack_poses

LABELS = {"background": 0, "bone": 1}
BASE_SHAPE = (48, 64, 80)
BASE_SPACING = (12.5, 5.0, 5.0)
THORACIC_LEVELS = ("T11", "T10", "T9", "T8", "T7")  # continuing upward from T12
_RIB_END = {"T12": 1.0, "T11": 1.4, "T10": 2.1, "T9": 2.3, "T8": 2.4, "T7": 2.45}


def tube(start, end, radius: float, material: str = "mixed_bone") -> Part:
    start, end = np.asarray(start, float), np.asarray(end, float)
    semi = (np.linalg.norm(end - start) / 2, radius, radius)
    return Part(Solid.make("cylinder", (start + end) / 2, semi, frame_from_axis(end - start)), material, "", "bone")


def body_outline(rng: np.random.Generator) -> dict[str, float]:
    """Torso and thigh sizes (mm) and the height of the patient's back above the table."""
    return {
        "semi_y": rng.uniform(95, 125),
        "semi_x": rng.uniform(145, 180),
        "fat": rng.uniform(8, 30),
        "thigh": rng.uniform(70, 88),
    }


def table_parts(back_y: float) -> list[Part]:
    """Foam pad and a curved plate under the patient (posterior = +y), running the full length."""
    radius, half_width = 700.0, 230.0
    arc = float(np.arcsin(half_width / radius))
    plate_top = back_y + 22.0
    center = (0.0, plate_top - radius, 0.0)
    pad = Solid.make("ring", center, (2000.0, radius - 11.0, radius - 11.0), thickness=11.0, arc=(-arc, arc))
    plate = Solid.make("ring", center, (2000.0, radius + 6.0, radius + 6.0), thickness=6.0, arc=(-arc, arc))
    return [Part(pad, "pad"), Part(plate, "table")]


def soft_parts(rng: np.random.Generator, body: dict[str, float], lungs: bool) -> list[Part]:
    """Torso and thighs (fat over soft tissue) and the organs that give the body its texture."""
    sy, sx, fat, thigh = body["semi_y"], body["semi_x"], body["fat"], body["thigh"]
    torso_center = np.array([700.0 - 70.0, 0.0, 0.0])  # torso from z = -70 up past the field of view
    torso = Solid.make("cylinder", torso_center, (700.0, sy, sx))
    parts = [Part(torso, "fat"), Part(torso.shrunk(fat), "soft")]
    for side in (-1.0, 1.0):
        center = np.array([-70.0 - 500.0, sy - thigh, side * 0.55 * sx])
        leg = Solid.make("cylinder", center, (520.0, thigh, thigh + 5.0))
        parts += [Part(leg, "fat"), Part(leg.shrunk(fat), "muscle")]
        if lungs:
            # inside the chest wall (at most ~70% of the torso's radius), never touching the skin
            lung = Solid.make("ellipsoid", [480.0, 0.05 * sy, side * 0.45 * sx], (165.0, 0.6 * sy, 0.3 * sx))
            parts.append(Part(lung, "lung"))
    parts.append(Part(Solid.make("ellipsoid", [430.0, -0.35 * sy, 0.1 * sx], (70.0, 0.5 * sy, 0.35 * sx)), "blood"))  # heart
    parts.append(Part(Solid.make("ellipsoid", [270.0, -0.15 * sy, -0.4 * sx], (90.0, 0.7 * sy, 0.5 * sx)), "organ"))  # liver
    parts.append(Part(Solid.make("ellipsoid", [30.0, -0.5 * sy, 0.0], (40.0, 0.35 * sy, 50.0)), "water"))  # bladder
    for _ in range(int(rng.integers(3, 8))):  # bowel gas, kept inside the abdominal wall
        center = [rng.uniform(80, 230), rng.uniform(-0.55, -0.15) * sy, rng.uniform(-0.45, 0.45) * sx]
        parts.append(Part(Solid.make("ellipsoid", center, rng.uniform(10, 22, size=3)), "gas"))
    return parts


def spine_poses(rng: np.random.Generator, spine_y: float):
    """L5..T7 poses with L5 placed above the hips; returns shapes, poses, gaps and levels."""
    shapes = level_shapes(rng)  # L5..T12
    poses, gaps = column_poses(rng, shapes)
    base = np.array([95.0, spine_y, 0.0]) - poses[0].center
    poses = [Pose(p.center + base, p.rotation) for p in poses]
    thoracic = [THORACIC.scaled(1.05 - 0.03 * i) for i in range(len(THORACIC_LEVELS))]
    rotations = [poses[-1].rotation] + [column_rotation(-12.0 - 3.0 * i + rng.normal(0, 1.5)) for i in range(len(thoracic))]
    more_gaps = [float(rng.uniform(5, 7)) for _ in thoracic]
    upper = stack_poses(poses[-1], [shapes[-1].body_height] + [s.body_height for s in thoracic], more_gaps, rotations)[1:]
    levels = ["L5", "L4", "L3", "L2", "L1", "T12", *THORACIC_LEVELS]
    return shapes + thoracic, poses + upper, gaps + more_gaps, levels


def chest_bones(poses: dict[str, Pose], body: dict[str, float], shapes: dict) -> list[Part]:
    """Ribs T7-T12 curving around the chest wall, and the sternum in front."""
    sy, sx = body["semi_y"], body["semi_x"]
    parts: list[Part] = []
    for level, end in _RIB_END.items():
        pose, shape = poses[level], shapes[level]
        for side in (-1.0, 1.0):
            behind = 0.5 * shape.body_depth + 0.4 * shape.canal_depth
            root = pose.point((0.0, behind, side * (0.5 * shape.canal_width + 14.0)))
            a = 0.5 * (root[1] + sy - 25.0)  # from the root to just inside the front wall
            parts.append(rib_part(root, (a, sx - 30.0), (0.3, end), side, 22.0))
    sternum = Solid.make("box", [poses["T8"].center[0] - 60.0, -sy + 22.0, 0.0], (70.0, 7.0, 16.0))
    return parts + shelled(sternum, 2.0, "", "bone")


def hip_bones(rng: np.random.Generator, hip_y: float) -> list[Part]:
    """Acetabula, pubic and ischial rami, femoral heads, necks, trochanters and shafts."""
    parts: list[Part] = []
    head_x = rng.uniform(85, 100)
    for side in (-1.0, 1.0):
        head = np.array([0.0, hip_y, side * head_x])
        acetabulum = Solid.make("ellipsoid", head + [8.0, 0.0, -side * 10.0], (34.0, 34.0, 24.0))
        parts += shelled(acetabulum, 3.0, "", "bone")
        parts.append(tube(head + [0.0, -10.0, -side * 20.0], [-12.0, hip_y - 45.0, side * 8.0], 9.0))  # superior pubic ramus
        parts.append(tube(head + [-20.0, 10.0, -side * 15.0], [-70.0, hip_y + 25.0, side * 55.0], 12.0))  # ischium
        parts += shelled(Solid.make("ellipsoid", head, (24.0, 24.0, 24.0)), 2.5, "", "bone")
        trochanter = head + [-45.0, 8.0, side * 50.0]
        parts.append(tube(head, trochanter, 15.0, "cortical"))
        greater = Solid.make("ellipsoid", trochanter + [5.0, 0.0, side * 8.0], (28.0, 22.0, 18.0))
        parts.append(Part(greater, "cancellous", "", "bone"))
        knee = trochanter + [-450.0, -15.0, -side * 40.0]
        marrow_top = trochanter + [-40.0, -1.0, -side * 3.5]
        parts += [tube(trochanter, knee, 15.0, "cortical"), tube(marrow_top, knee, 8.5, "marrow")]
    return parts


def skeleton(rng: np.random.Generator, body: dict[str, float]) -> list[Part]:
    """Column with discs, sacrum, pelvis, hips and chest, placed inside `body`."""
    spine_y = body["semi_y"] - rng.uniform(65, 85)
    shapes, poses, gaps, levels = spine_poses(rng, spine_y)
    column = column_parts(shapes, poses, levels, gaps)
    disc, sacrum, s1 = sacrum_parts(rng, poses[0], shapes[0])
    pose_of, shape_of = dict(zip(levels, poses)), dict(zip(levels, shapes))
    pelvis = ilium_parts(s1, shapes[0].body_width) + hip_bones(rng, spine_y - rng.uniform(45, 65))
    return disc + column + sacrum + pelvis + chest_bones(pose_of, body, shape_of)


def ct_values(rng: np.random.Generator) -> dict[str, float]:
    values = jittered(TISSUE_HU, rng, spread=12.0)
    values["cancellous"] = float(rng.uniform(180, 300))
    values["cortical"] = float(rng.uniform(900, 1200))
    values["table"] = float(rng.uniform(350, 700))  # carbon plate: dense, but not bone
    return values


_TABLE_MATERIALS = frozenset({"table", "pad"})
_AIR, _BONE, _TABLE, _SOFT = 0, 1, 2, 3  # what each voxel was painted as


def part_kind(part: Part) -> int:
    """Bone, table (plate and pad) or the rest of the patient: one paint gives label and truth."""
    if bone_label(part):
        return _BONE
    return _TABLE if part.material in _TABLE_MATERIALS else _SOFT


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0, lungs: bool = True,
              prone: bool = False) -> PhantomCase:
    """Table + body + skeleton -> HU painting -> scanner blur and noise -> int16 HU."""
    body = body_outline(rng)
    parts = table_parts(body["semi_y"]) + soft_parts(rng, body, lungs) + skeleton(rng, body)
    shape = scaled_shape(BASE_SHAPE, scale)
    spacing = tuple(s * BASE_SHAPE[i] / shape[i] for i, s in enumerate(BASE_SPACING))
    center = (120.0 + rng.uniform(-30, 30), 25.0 + rng.uniform(-5, 5), rng.uniform(-10, 10))
    grid = Grid.centered(shape, spacing, center)
    hu, kind = paint(grid, parts, ct_values(rng), part_kind, background=TISSUE_HU["air"])
    image = finish_ct(hu, grid.spacing, rng, noise_hu=float(rng.uniform(10, 30)))
    if prone:  # the same patient face down: the table now lies above them along y
        image, kind = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(kind[:, ::-1])
    truth = {"table_mask": kind == _TABLE, "body_mask": (kind == _BONE) | (kind == _SOFT)}
    return PhantomCase(image, (kind == _BONE).astype(np.uint8), grid.geometry(), extras=truth)


PHANTOM = Phantom(
    name="skeleton-ct",
    folder="Dataset904_SkeletonCT",
    case_prefix="skel",
    description="Synthetic trunk-to-thigh CT (HU) on a scanner table; all bone labelled, the table is not.",
    channel_names={"0": "CT"},
    labels=LABELS,
    file_ending=".nii.gz",
    default_cases=4,
    options={"scale": 1.0, "lungs": True, "prone": False},
    make_case=make_case,
)
