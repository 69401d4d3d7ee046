"""`lumbar-xray`: AP, lateral and oblique radiographs of a 3D lumbar phantom with part labels.

Cases cycle through the three positions (AP ~0 deg, lateral ~90 deg, oblique ~45 deg, each
jittered a few degrees); the angle used is recorded per case in the dataset's cases.json.
Labels are projections of L1-L5's 3D parts: a pixel is pedicle (2) if any pedicle lies on its
ray, else spinous process (3), else vertebra (1). T12, sacrum, ilia and ribs are visible but
unlabelled. The default detector is 144 x 112 pixels of 1.6 mm; `scale` multiplies the pixel
count (finer pixels, same field of view).

With `faults` (default on) a third of the cases are deliberately not qualified for the
lumbar-xray-qc task: cases 3-5, 12-14, 21-23, ... (every second triple of three, so each position
gets its share), each with one fault of its position, cycling: the field of view cutting L1 or L5,
an off-centre column, a rotated trunk (AP), a tilted column (the detector turned in-plane), a
wrong obliquity (OBL), a rotated lateral (LAT), under-exposure (anatomy saturated white) or
over-exposure (burnt out black). cases.json records each case's true verdict, the failed
criterion and the fault's size ("qc": {"verdict", "reasons", "fault", "fault_size"}).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.io import Geometry
from autoseg.phantoms.common import BONE_MATERIALS, Phantom, PhantomCase, scaled_shape
from autoseg.phantoms.lumbar_region import LUMBAR_LEVELS, LumbarAnatomy, lumbar_anatomy
from autoseg.phantoms.radiography import DISPLAY_MAX, XRAY_MU, beam_matrix, expose, project, radiograph_rows, to_display
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


def beam_grid(anatomy: LumbarAnatomy, angle_deg: float, scale: float, rng: np.random.Generator,
              shift_zv: tuple[float, float] = (0.0, 0.0)) -> Grid:
    """Detector field centred on L1-L5 (T12 and the sacrum at its edges), moved by `shift_zv` (mm
    up, across); rays long enough to cross the whole abdomen."""
    rows, cols = scaled_shape(BASE_DETECTOR, scale)
    pixel = BASE_PIXEL_MM * BASE_DETECTOR[0] / rows
    c = anatomy.centers
    world_center = np.array([(c["L1"][0] + c["L5"][0]) / 2, c["L3"][1] + 18.0, c["L3"][2]]) + rng.uniform(-8, 8, size=3)
    center = beam_matrix(angle_deg) @ world_center
    center[:2] += shift_zv
    a = np.radians(angle_deg)
    semi_y, semi_x = anatomy.body_semi_yx
    reach = np.hypot(semi_y * np.cos(a), semi_x * np.sin(a)) + 10.0  # support of the abdomen along the ray
    center[2] = float(beam_matrix(angle_deg)[2] @ anatomy.body_center)
    depth = int(np.ceil(2 * reach / RAY_STEP_MM))
    return Grid.centered((rows, cols, depth), (pixel, pixel, RAY_STEP_MM), center)


# ---------------------------------------------------------------- deliberate quality faults
@dataclass(frozen=True)
class Fault:
    kind: str
    criterion: str  # the lumbar-xray-qc criterion it fails
    size: float  # degrees, mm or a gain, signed


FAULTS = {  # per position, in the order cases cycle through them
    "AP": ("fov_top", "off_centre", "rotated", "fov_bottom", "tilted", "underexposed", "overexposed"),
    "lateral": ("fov_bottom", "rotated_lateral", "tilted", "fov_top", "off_centre", "overexposed", "underexposed"),
    "oblique": ("obliquity_low", "fov_top", "obliquity_high", "off_centre", "tilted", "underexposed", "fov_bottom",
                "overexposed"),
}
_CRITERION = {"fov_top": "field_of_view", "fov_bottom": "field_of_view", "off_centre": "centring",
              "rotated": "rotation", "rotated_lateral": "true_lateral", "tilted": "tilt",
              "obliquity_low": "obliquity", "obliquity_high": "obliquity",
              "underexposed": "exposure", "overexposed": "exposure"}


def planned_fault(index: int, position: str, rng: np.random.Generator) -> Fault | None:
    """The fault of case `index`: every second triple of cases (3-5, 12-14, ...) has one."""
    if (index // 3) % 3 != 1:
        return None
    kinds = FAULTS[position]
    kind = kinds[(index // 9) % len(kinds)]
    sign = float(rng.choice((-1.0, 1.0)))
    size = {"fov_top": -rng.uniform(50, 70), "fov_bottom": rng.uniform(50, 70), "off_centre": sign * rng.uniform(30, 40),
            "rotated": sign * rng.uniform(13, 20), "rotated_lateral": sign * rng.uniform(18, 26),
            "tilted": sign * rng.uniform(15, 22), "obliquity_low": -rng.uniform(20, 26),
            "obliquity_high": rng.uniform(20, 24), "underexposed": rng.uniform(1.8, 2.5),
            "overexposed": rng.uniform(0.65, 0.8)}[kind]
    return Fault(kind, _CRITERION[kind], float(size))


def fault_angle(fault: Fault | None) -> float:
    return fault.size if fault is not None and fault.kind in ("rotated", "rotated_lateral", "obliquity_low",
                                                              "obliquity_high") else 0.0


def fault_shift(fault: Fault | None) -> tuple[float, float]:
    if fault is None:
        return 0.0, 0.0
    return {"fov_top": (fault.size, 0.0), "fov_bottom": (fault.size, 0.0),
            "off_centre": (0.0, fault.size)}.get(fault.kind, (0.0, 0.0))


def apply_display_fault(image: np.ndarray, label: np.ndarray, fault: Fault | None) -> tuple[np.ndarray, np.ndarray]:
    """Faults made after exposure: the detector turned in-plane, or the exposure window missed."""
    if fault is None:
        return image, label
    if fault.kind == "tilted":
        turned = ndimage.rotate(image.astype(np.float32), fault.size, reshape=False, order=1, mode="nearest")
        return np.rint(turned).astype(image.dtype), ndimage.rotate(label, fault.size, reshape=False, order=0)
    if fault.kind == "underexposed":  # too few photons: bone and soft tissue saturate white
        return np.clip(image.astype(np.float64) * fault.size, 0, DISPLAY_MAX).astype(image.dtype), label
    if fault.kind == "overexposed":  # too many: everything but dense bone burns out black
        shifted = image.astype(np.float64) - fault.size * DISPLAY_MAX
        return np.clip(shifted / (1 - fault.size), 0, DISPLAY_MAX).astype(image.dtype), label
    return image, label


def qc_truth(fault: Fault | None) -> dict:
    if fault is None:
        return {"verdict": "qualified", "reasons": [], "fault": None, "fault_size": None}
    return {"verdict": "not qualified", "reasons": [fault.criterion], "fault": fault.kind,
            "fault_size": round(fault.size, 2)}


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0, faults: bool = True) -> PhantomCase:
    """Anatomy -> attenuation in the beam frame -> Beer-Lambert with quantum noise -> 12-bit display."""
    position, nominal = POSITIONS[index % len(POSITIONS)]
    angle = nominal + float(rng.uniform(-4, 4))
    anatomy = lumbar_anatomy(rng)
    fault = planned_fault(index, position, rng) if faults else None
    angle += fault_angle(fault)
    grid = beam_grid(anatomy, angle, scale, rng, fault_shift(fault))
    line_integral, label = project(anatomy.parts, angle, grid, XRAY_MU, part_label, (1, 3, 2), rng)
    counts, i0 = expose(line_integral, float(rng.uniform(300, 1500)), label > 0, rng)
    image = to_display(counts, i0, label > 0, rng)
    image, label = apply_display_fault(radiograph_rows(image), radiograph_rows(label), fault)
    metadata = {"position": position, "angle_deg": round(angle, 2), "pixel_spacing_mm": round(grid.spacing[0], 4)}
    if faults:
        metadata["qc"] = qc_truth(fault)
    return PhantomCase(image, label, Geometry.default(2), metadata)  # PNG keeps no spacing: cases.json does


PHANTOM = Phantom(
    name="lumbar-xray",
    folder="Dataset902_LumbarXray",
    case_prefix="lxr",
    description="Synthetic lumbar radiographs (AP, lateral, oblique) with vertebra, pedicle and spinous process labels.",
    channel_names={"0": "xray"},
    labels=LABELS,
    file_ending=".png",
    default_cases=6,
    options={"scale": 1.0, "faults": True},
    make_case=make_case,
)
