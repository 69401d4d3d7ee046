"""`dti-cord`: cervical spinal cord diffusion MRI with white-matter columns and gray matter labelled.

An elliptical cord (with a butterfly of gray matter) sits in CSF inside a bony canal, surrounded
by muscle. Diffusion follows the tensor model S = S0 exp(-b g^T D g) with each tissue's tensor
cylindrically symmetric about the cord axis: white matter FA ~0.7, gray matter ~0.3, CSF
isotropic. Rician noise is added to every volume. The dataset channel is the b=0 image; the
full 4D series and its FSL gradient files go to DATASET/dwi/. Voxels are 0.8 x 0.8 mm in plane
and 5 mm thick; `scale` multiplies the in-plane pixel count, `slices` sets the slice count.

White matter is split into dorsal, lateral and ventral columns along the axes of the dorsal and
ventral horns, and into left and right by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import ConfigError
from autoseg.io import write_image
from autoseg.modalities.dti import CORD_REGIONS
from autoseg.modalities.dwi import write_fsl_gradients
from autoseg.phantoms.common import Phantom, PhantomCase
from autoseg.phantoms.solids import Grid, axial_rotation, coronal_rotation, sagittal_rotation

LABELS = CORD_REGIONS
MUSCLE, BONE, CSF, WM, GM = range(5)
BASE_INPLANE = 48
SPACING = (5.0, 0.8, 0.8)
_DORSAL_HORN_DEG, _VENTRAL_HORN_DEG = 25.0, 40.0  # horn directions, from straight back / front


@dataclass(frozen=True)
class Tissue:
    s0: float  # b=0 signal (T2-weighted), before the per-case gain
    fa: float
    md: float  # mm^2/s


def tissues(rng: np.random.Generator) -> dict[int, Tissue]:
    """Per-case tissue properties; white matter FA is drawn around 0.7, gray matter around 0.3."""
    return {
        MUSCLE: Tissue(0.30, 0.25, 1.4e-3),
        BONE: Tissue(0.06, 0.0, 0.3e-3),
        CSF: Tissue(1.0, 0.0, 3.0e-3),
        WM: Tissue(0.42, float(rng.uniform(0.66, 0.74)), float(rng.uniform(0.9e-3, 1.1e-3))),
        GM: Tissue(0.50, float(rng.uniform(0.26, 0.34)), float(rng.uniform(1.0e-3, 1.2e-3))),
    }


def axial_radial(fa: float, md: float) -> tuple[float, float]:
    """Eigenvalues (along, across) of a cylindrically symmetric tensor with this FA and MD.

    With r = across/along, FA^2 (1 + 2 r^2) = (1 - r)^2; the root in [0, 1] is taken in its
    cancellation-free form.
    """
    a, c = 2 * fa * fa - 1.0, fa * fa - 1.0
    ratio = -c / (1.0 + np.sqrt(max(1.0 - a * c, 0.0)))
    along = 3.0 * md / (1.0 + 2.0 * ratio)
    return along, ratio * along


def gradient_scheme(directions: int, b_value: float) -> tuple[np.ndarray, np.ndarray]:
    """One b=0 volume plus `directions` unit vectors spread over a half sphere (Fibonacci spiral)."""
    k = np.arange(directions) + 0.5
    z = 1.0 - k / directions  # half sphere: z in (0, 1)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z * z)
    bvecs = np.vstack([np.zeros(3), np.column_stack([r * np.cos(phi), r * np.sin(phi), z])])
    bvals = np.concatenate([[0.0], np.full(directions, float(b_value))])
    return bvals, bvecs


def cord_frame(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Center and rotation (columns: cord axis, posterior, left) of a slightly tilted, twisted cord."""
    middle = np.array([grid.origin[i] + (grid.shape[i] - 1) * grid.spacing[i] / 2 for i in range(3)])
    center = middle + np.array([0.0, *rng.uniform(-2.5, 2.5, size=2)])
    tilt = sagittal_rotation(rng.uniform(-4, 4)) @ coronal_rotation(rng.uniform(-4, 4))
    rotation = tilt @ axial_rotation(rng.uniform(-8, 8))
    return center, rotation


def local_coordinates(grid: Grid, center: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior and left coordinates (mm) of every voxel in the cord's own frame."""
    z, y, x = np.meshgrid(*[grid.axis(i) - center[i] for i in range(3)], indexing="ij")
    posterior = z * rotation[0, 1] + y * rotation[1, 1] + x * rotation[2, 1]
    left = z * rotation[0, 2] + y * rotation[1, 2] + x * rotation[2, 2]
    return posterior, left


def _ellipse(p, l, center, semi, angle_deg: float = 0.0) -> np.ndarray:
    """Inside an ellipse whose first semi axis points `angle_deg` from posterior toward left."""
    a = np.radians(angle_deg)
    dp, dl = p - center[0], l - center[1]
    along, across = dp * np.cos(a) + dl * np.sin(a), -dp * np.sin(a) + dl * np.cos(a)
    return (along / semi[0]) ** 2 + (across / semi[1]) ** 2 <= 1.0


def gray_matter(p: np.ndarray, l: np.ndarray) -> np.ndarray:
    """Butterfly in a template cord of semi axes 4 (AP) x 6 (LR) mm: commissure plus four horns."""
    gm = _ellipse(p, l, (0.3, 0.0), (0.9, 2.0)) | _ellipse(p, l, (0.0, 0.0), (1.2, 2.4))
    for side in (-1.0, 1.0):
        d, v = np.radians(_DORSAL_HORN_DEG), np.radians(_VENTRAL_HORN_DEG)
        dorsal = (0.3 + 1.5 * np.cos(d), side * (0.8 + 1.5 * np.sin(d)))
        ventral = (-1.5 * np.cos(v), side * (0.8 + 1.5 * np.sin(v)))
        gm |= _ellipse(p, l, dorsal, (2.0, 0.5), side * _DORSAL_HORN_DEG)
        gm |= _ellipse(p, l, ventral, (1.6, 1.1), side * (180.0 - _VENTRAL_HORN_DEG))
    return gm


def segment(p: np.ndarray, l: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map and the 8-region label map from in-plane cord coordinates."""
    semi_ap, semi_lr = rng.uniform(3.5, 4.5), rng.uniform(5.5, 6.5)
    pt, lt = p * 4.0 / semi_ap, l * 6.0 / semi_lr  # template coordinates
    cord = (p / semi_ap) ** 2 + (l / semi_lr) ** 2 <= 1.0
    csf_ap, csf_lr = semi_ap + rng.uniform(2.0, 3.5), semi_lr + rng.uniform(2.5, 4.0)
    canal = (p / csf_ap) ** 2 + (l / csf_lr) ** 2 <= 1.0
    bone = (p / (csf_ap + 4.0)) ** 2 + (l / (csf_lr + 4.0)) ** 2 <= 1.0
    gm = cord & gray_matter(pt, lt)
    tissue = np.select([gm, cord, canal, bone], [GM, WM, CSF, BONE], MUSCLE).astype(np.uint8)
    # columns are bounded by the horn axes: dorsal between the dorsal horns, ventral between the ventral ones
    dorsal = (pt > 0.3) & (np.abs(lt) < 0.8 + (pt - 0.3) * np.tan(np.radians(_DORSAL_HORN_DEG)))
    ventral = (pt < 0.0) & (np.abs(lt) < 0.8 - pt * np.tan(np.radians(_VENTRAL_HORN_DEG)))
    column = np.select([dorsal, ventral], [0, 2], 1)  # 0 dorsal, 1 lateral, 2 ventral
    right = (l < 0).astype(int)
    label = np.where(gm, 7 + right, np.where(cord, 1 + 2 * column + right, 0)).astype(np.uint8)
    return tissue, label


def diffusion_signal(
    tissue: np.ndarray, props: dict[int, Tissue], axis_xyz: np.ndarray, bvals, bvecs, gain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free DWI series (N, *spatial) and the generating FA map."""
    s0, fa, along, across = (np.zeros(tissue.shape) for _ in range(4))
    for code, t in props.items():
        inside = tissue == code
        s0[inside], fa[inside] = gain * t.s0, t.fa
        along[inside], across[inside] = axial_radial(t.fa, t.md)
    cos2 = (np.asarray(bvecs) @ axis_xyz) ** 2  # (N,) squared cosine between gradient and fibres
    exponent = np.asarray(bvals)[:, None] * (across.ravel()[None, :] + (along - across).ravel()[None, :] * cos2[:, None])
    return (s0.ravel()[None, :] * np.exp(-exponent)).reshape((len(bvals),) + tissue.shape), fa


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise, as an MR receiver produces."""
    if sigma <= 0:
        return signal
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imaginary = rng.normal(0.0, sigma, signal.shape)
    return np.sqrt(real * real + imaginary * imaginary)


def make_case(
    rng: np.random.Generator,
    index: int,
    scale: float = 1.0,
    slices: int = 8,
    directions: int = 12,
    b_value: float = 800.0,
    snr: float = 20.0,
) -> PhantomCase:
    """Anatomy -> tissue map -> tensor-model DWI -> Rician noise; the b=0 volume is the image.

    `snr` is the white-matter b=0 signal over the noise sigma; `snr=inf` gives noise-free data.
    """
    if directions < 6:
        raise ConfigError(
            f"dti-cord option 'directions': a tensor needs at least 6 gradient directions, got {directions}; use 6 or more"
        )
    inplane = max(16, int(round(BASE_INPLANE * scale / 2)) * 2)
    spacing = (SPACING[0], SPACING[1] * BASE_INPLANE / inplane, SPACING[2] * BASE_INPLANE / inplane)
    grid = Grid.centered((int(slices), inplane, inplane), spacing, (0.0, 0.0, 0.0))
    center, rotation = cord_frame(rng, grid)
    tissue, label = segment(*local_coordinates(grid, center, rotation), rng)
    props, gain = tissues(rng), float(rng.uniform(800, 1200))
    bvals, bvecs = gradient_scheme(int(directions), b_value)
    clean, fa = diffusion_signal(tissue, props, rotation[::-1, 0], bvals, bvecs, gain)
    sigma = gain * props[WM].s0 / snr if np.isfinite(snr) else 0.0
    dwi = rician(clean, sigma, rng).astype(np.float32)
    extras = {"dwi": dwi, "bvals": bvals, "bvecs": bvecs, "fa": fa.astype(np.float32), "tissue": tissue}
    return PhantomCase(dwi[0], label, grid.geometry(), {"b_value": b_value, "directions": int(directions)}, extras)


def write_dwi(dataset_dir: Path, case_id: str, case: PhantomCase) -> None:
    """DATASET/dwi/CASE_dwi.nii.gz (4D) with CASE.bval and CASE.bvec beside it."""
    folder = dataset_dir / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{case_id}_dwi.nii.gz", case.extras["dwi"], case.geometry)
    write_fsl_gradients(folder / f"{case_id}.bval", folder / f"{case_id}.bvec", case.extras["bvals"], case.extras["bvecs"])


PHANTOM = Phantom(
    name="dti-cord",
    folder="Dataset905_DTICord",
    case_prefix="cord",
    description=(
        "Synthetic cervical cord diffusion MRI: b=0 image channel, 4D DWI with FSL gradients in dwi/, "
        "8 cord regions labelled."
    ),
    channel_names={"0": "MR_B0"},
    labels=LABELS,
    file_ending=".nii.gz",
    default_cases=4,
    options={"scale": 1.0, "slices": 8, "directions": 12, "b_value": 800.0, "snr": 20.0},
    make_case=make_case,
    write_extras=write_dwi,
)
