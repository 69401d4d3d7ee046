"""`lumbar-ct`: lumbar spine CT in Hounsfield units with L1-L5 and the sacrum labelled.

Anisotropic voxels like a clinical spine protocol (thick axial slices, fine in-plane pixels).
The default grid (48 x 64 x 64 at about 5.5 x 2.2 x 2.2 mm) is coarse so a case takes a
fraction of a second; `scale=2.5` gives about 2.2 x 0.9 x 0.9 mm on a 120 x 160 x 160 grid, and
`slice_factor` refines the slice axis relative to the others (`scale=2.5, slice_factor=0.8`:
96 x 160 x 160 at about 2.75 x 0.9 x 0.9 mm, the size of a clinical lumbar CT crop).
T12, the ilia and the 12th ribs are present but unlabelled, as in real annotations.

`large_field=True` gives abdomen-to-trunk volumes instead (64 x 96 x 96 at about 5.5 x 3.8 x 3.8
mm: 320-400 mm per axis at scale 1; `scale=2` halves the spacing) where the lumbar spine fills a
few percent of the volume: the field's center moves up to +-60 mm along the body and +-25 mm
across it, thoracic vertebrae T8-T11 with ribs fill the upper part, a quarter of the cases are
scoliotic (15-25 degrees of side bend) and a fifth carry transitional anatomy (half a sixth lumbar
vertebra, unlabelled like T12; half a sacralised L5, labelled L5). Each case's variant is in the
dataset's cases.json.
"""
from __future__ import annotations

import numpy as np

from autoseg.phantoms.common import BONE_MATERIALS, TISSUE_HU, Phantom, PhantomCase, finish_ct, jittered, scaled_shape
from autoseg.phantoms.lumbar_region import LUMBAR_LEVELS, ColumnVariant, lumbar_anatomy
from autoseg.phantoms.solids import Grid, Part, paint

LABELS = {"background": 0, **{level: i + 1 for i, level in enumerate(LUMBAR_LEVELS)}, "sacrum": 6}
_LEVEL_TO_LABEL = {**{level: i + 1 for i, level in enumerate(LUMBAR_LEVELS)}, "S": 6}
BASE_SHAPE = (48, 64, 64)
BASE_SPACING = (5.5, 2.2, 2.2)
LARGE_SHAPE = (64, 96, 96)
LARGE_SPACING = (5.5, 3.8, 3.8)
SCOLIOSIS_SHARE, TRANSITIONAL_SHARE = 0.25, 0.2


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


def large_field_variant(rng: np.random.Generator) -> ColumnVariant:
    """A trunk-sized case's column: thoracic levels above, sometimes scoliotic or transitional."""
    scoliosis = float(rng.choice([-1.0, 1.0]) * rng.uniform(15, 25)) if rng.uniform() < SCOLIOSIS_SHARE else 0.0
    transitional = "none"
    if rng.uniform() < TRANSITIONAL_SHARE:
        transitional = "L6" if rng.uniform() < 0.5 else "sacralized_L5"
    return ColumnVariant(thoracic_above=4, scoliosis_deg=scoliosis, transitional=transitional)


def large_field_grid(rng: np.random.Generator, centers: dict[str, np.ndarray], body_center: np.ndarray,
                     scale: float, slice_factor: float = 1.0) -> Grid:
    """An abdomen/trunk field of view around the body, the lumbar spine anywhere in its middle part."""
    z_scale = scale * slice_factor
    shape = (scaled_shape(LARGE_SHAPE[:1], z_scale)[0], *scaled_shape(LARGE_SHAPE[1:], scale))
    inplane = LARGE_SPACING[1] * rng.uniform(0.88, 1.08) / scale
    spacing = (LARGE_SPACING[0] * rng.uniform(0.9, 1.1) / z_scale, inplane, inplane)
    center = np.array([centers["L3"][0], body_center[1], body_center[2]]) + [rng.uniform(-60, 60),
                                                                             *rng.uniform(-25, 25, size=2)]
    return Grid.centered(shape, spacing, center)


def make_case(rng: np.random.Generator, index: int, scale: float = 1.0, slice_factor: float = 1.0,
              large_field: bool = False) -> PhantomCase:
    """One lumbar CT case: anatomy -> HU painting -> scanner blur and noise -> int16 HU."""
    variant = large_field_variant(rng) if large_field else ColumnVariant()
    anatomy = lumbar_anatomy(rng, variant)
    if large_field:
        grid = large_field_grid(rng, anatomy.centers, anatomy.body_center, scale, slice_factor)
    else:
        grid = case_grid(rng, anatomy.centers, scale, slice_factor)
    hu, label = paint(grid, anatomy.parts, ct_values(rng), level_label, background=TISSUE_HU["air"])
    image = finish_ct(hu, grid.spacing, rng, noise_hu=float(rng.uniform(8, 25)))
    couch = np.array([rng.uniform(-400, -150), rng.uniform(-40, 40), rng.uniform(-20, 20)])  # scanner coordinates
    shifted = Grid(grid.shape, grid.spacing, tuple(np.add(grid.origin, couch)))
    metadata = {"scoliosis_deg": round(variant.scoliosis_deg, 1), "transitional": variant.transitional} if large_field else {}
    return PhantomCase(image, label, shifted.geometry(), metadata)


PHANTOM = Phantom(
    name="lumbar-ct",
    folder="Dataset903_LumbarCT",
    case_prefix="lct",
    description="Synthetic lumbar CT (HU): L1-L5 and sacrum labelled; T12, ilia and ribs unlabelled.",
    channel_names={"0": "CT"},
    labels=LABELS,
    file_ending=".nii.gz",
    default_cases=4,
    options={"scale": 1.0, "slice_factor": 1.0, "large_field": False},
    make_case=make_case,
)
