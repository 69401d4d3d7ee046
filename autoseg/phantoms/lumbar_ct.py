"""`lumbar-ct`: lumbar spine CT in Hounsfield units with L1-L5 and the sacrum labelled.

Anisotropic voxels like a clinical spine protocol (thick axial slices, fine in-plane pixels).
The default grid (48 x 64 x 64 at about 5.5 x 2.2 x 2.2 mm) is coarse so a case takes a
fraction of a second; `scale=2.5` gives about 2.2 x 0.9 x 0.9 mm on a 120 x 160 x 160 grid, and
`slice_factor` refines the slice axis relative to the others (`scale=2.5, slice_factor=0.8`:
96 x 160 x 160 at about 2.75 x 0.9 x 0.9 mm, the size of a clinical lumbar CT crop).
T12, the ilia and the 12th ribs are present but unlabelled, as in real annotations.
"""
from __future__ import annotations

import numpy as np

from autoseg.phantoms.common import BONE_MATERIALS, TISSUE_HU, Phantom, PhantomCase, finish_ct, jittered, scaled_shape
from autoseg.phantoms.lumbar_region import LUMBAR_LEVELS, lumbar_anatomy
from autoseg.phantoms.solids import Grid, Part, paint

LABELS = {"background": 0, **{level: i + 1 for i, level in enumerate(LUMBAR_LEVELS)}, "sacrum": 6}
_LEVEL_TO_LABEL = {**{level: i + 1 for i, level in enumerate(LUMBAR_LEVELS)}, "S": 6}
BASE_SHAPE = (48, 64, 64)
BASE_SPACING = (5.5, 2.2, 2.2)


def level_label(part: Part) -> int:
    """L1..L5 -> 1..5 and sacrum -> 6 for bone; everything else (incl. T12, ilia) is background."""
    return _LEVEL_TO_LABEL.get(part.level, 0) if part.material in BONE_MATERIALS else 0


def case_grid(rng: np.random.Generator, centers: dict[str, np.ndarray], scale: float, slice_factor: float = 1.0) -> Grid:
    """Field of view from just above L1 into the sacrum, centered on the canal, per-case spacing."""
    z_scale = scale * slice_factor
    shape = (scaled_shape(BASE_SHAPE[:1], z_scale)[0], *scaled_shape(BASE_SHAPE[1:], scale))
    inplane = BASE_SPACING[1] * rng.uniform(0.92, 1.08) / scale
    spacing = (BASE_SPACING[0] * rng.uniform(0.92, 1.08) / z_scale, inplane, inplane)
    z_mid = (centers["L1"][0] + centers["S1"][0]) / 2 - 10.0
    center = np.array([z_mid, centers["L3"][1] + 22.0, centers["L3"][2]]) + rng.uniform(-6, 6, size=3)
    return Grid.centered(shape, spacing, center)


def ct_values(rng: np.random.Generator) -> dict[str, float]:
    """Tissue HU for one case: soft tissues jitter a little, bone density varies between people."""
    values = jittered(TISSUE_HU, rng, spread=12.0)
    values["cancellous"] = float(rng.uniform(210, 320))
    values["cortical"] = float(rng.uniform(900, 1150))
    values["mixed_bone"] = float(rng.uniform(450, 650))
    return values


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0, slice_factor: float = 1.0) -> PhantomCase:
    """One lumbar CT case: anatomy -> HU painting -> scanner blur and noise -> int16 HU."""
    anatomy = lumbar_anatomy(rng)
    grid = case_grid(rng, anatomy.centers, scale, slice_factor)
    hu, label = paint(grid, anatomy.parts, ct_values(rng), level_label, background=TISSUE_HU["air"])
    image = finish_ct(hu, grid.spacing, rng, noise_hu=float(rng.uniform(8, 25)))
    couch = np.array([rng.uniform(-400, -150), rng.uniform(-40, 40), rng.uniform(-20, 20)])  # scanner coordinates
    shifted = Grid(grid.shape, grid.spacing, tuple(np.add(grid.origin, couch)))
    return PhantomCase(image, label, shifted.geometry())


PHANTOM = Phantom(
    name="lumbar-ct",
    folder="Dataset903_LumbarCT",
    case_prefix="lct",
    description="Synthetic lumbar CT (HU): L1-L5 and sacrum labelled; T12, ilia and ribs unlabelled.",
    channel_names={"0": "CT"},
    labels=LABELS,
    file_ending=".nii.gz",
    default_cases=4,
    options={"scale": 1.0, "slice_factor": 1.0},
    make_case=make_case,
)
