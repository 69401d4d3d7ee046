"""`lumbar-xray`: AP, lateral and oblique radiographs of a 3D lumbar phantom with part labels.

Cases cycle through the three positions (AP ~0 deg, lateral ~90 deg, oblique ~45 deg, each
jittered a few degrees); the angle used is recorded per case in the dataset's cases.json.
Labels are projections of L1-L5's 3D parts: a pixel is pedicle (2) if any pedicle lies on its
ray, else spinous process (3), else vertebra (1). T12, sacrum, ilia and ribs are visible but
unlabelled. The default detector is 144 x 112 pixels of 1.6 mm; `scale` multiplies the pixel
count (finer pixels, same field of view).
"""
from __future__ import annotations

import numpy as np

from autoseg.io import Geometry
from autoseg.phantoms.common import BONE_MATERIALS, Phantom, PhantomCase, scaled_shape
from autoseg.phantoms.lumbar_region import LUMBAR_LEVELS, LumbarAnatomy, lumbar_anatomy
from autoseg.phantoms.radiography import XRAY_MU, beam_matrix, expose, project, radiograph_rows, to_display
from autoseg.phantoms.solids import Grid, Part

LABELS = {"background": 0, "vertebra": 1, "pedicle": 2, "spinous_process": 3}
POSITIONS = (("AP", 0.0), ("lateral", 90.0), ("oblique", 45.0))
BASE_DETECTOR = (144, 112)
BASE_PIXEL_MM = 1.6
RAY_STEP_MM = 3.0


def part_label(part: Part) -> int:
    """Vertebra parts of L1-L5 by role; everything else is background."""
    if part.level not in LUMBAR_LEVELS or part.material not in BONE_MATERIALS:
        return 0
    return {"pedicle": 2, "spinous": 3}.get(part.role, 1)


def beam_grid(anatomy: LumbarAnatomy, angle_deg: float, scale: float, rng: np.random.Generator) -> Grid:
    """Detector field from above L1 into the sacrum; rays long enough to cross the whole abdomen."""
    rows, cols = scaled_shape(BASE_DETECTOR, scale)
    pixel = BASE_PIXEL_MM * BASE_DETECTOR[0] / rows
    c = anatomy.centers
    world_center = np.array([(c["L1"][0] + c["S1"][0]) / 2, c["L3"][1] + 18.0, c["L3"][2]]) + rng.uniform(-8, 8, size=3)
    center = beam_matrix(angle_deg) @ world_center
    a = np.radians(angle_deg)
    semi_y, semi_x = anatomy.body_semi_yx
    reach = np.hypot(semi_y * np.cos(a), semi_x * np.sin(a)) + 10.0  # support of the abdomen along the ray
    center[2] = float(beam_matrix(angle_deg)[2] @ anatomy.body_center)
    depth = int(np.ceil(2 * reach / RAY_STEP_MM))
    return Grid.centered((rows, cols, depth), (pixel, pixel, RAY_STEP_MM), center)


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0) -> PhantomCase:
    """Anatomy -> attenuation in the beam frame -> Beer-Lambert with quantum noise -> 12-bit display."""
    position, nominal = POSITIONS[index % len(POSITIONS)]
    angle = nominal + float(rng.uniform(-4, 4))
    anatomy = lumbar_anatomy(rng)
    grid = beam_grid(anatomy, angle, scale, rng)
    line_integral, label = project(anatomy.parts, angle, grid, XRAY_MU, part_label, (1, 3, 2), rng)
    counts, i0 = expose(line_integral, float(rng.uniform(300, 1500)), label > 0, rng)
    image = to_display(counts, i0, label > 0, rng)
    metadata = {"position": position, "angle_deg": round(angle, 2), "pixel_spacing_mm": round(grid.spacing[0], 4)}
    return PhantomCase(radiograph_rows(image), radiograph_rows(label), Geometry.default(2), metadata)


PHANTOM = Phantom(
    name="lumbar-xray",
    folder="Dataset902_LumbarXray",
    case_prefix="lxr",
    description="Synthetic lumbar radiographs (AP, lateral, oblique) with vertebra, pedicle and spinous process labels.",
    channel_names={"0": "xray"},
    labels=LABELS,
    file_ending=".png",
    default_cases=6,
    options={"scale": 1.0},
    make_case=make_case,
)
