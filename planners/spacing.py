"""Target spacing rules (pure functions of the fingerprint's spacings and cropped shapes)."""
from __future__ import annotations

import numpy as np

ANISOTROPY_THRESHOLD = 3.0


def is_anisotropic(spacing) -> bool:
    """Coarsest axis more than 3x the finest: resample and convolve that axis separately."""
    return max(spacing) / min(spacing) > ANISOTROPY_THRESHOLD


def fullres_target_spacing(spacings: np.ndarray, cropped_shapes: np.ndarray) -> tuple[float, ...]:
    """Median spacing; for strongly anisotropic data the coarse axis gets its 10th percentile instead.

    The exception (as in nnU-Net v2) needs both anisotropic spacing (coarse axis > 3x the other
    axes) and anisotropic voxel counts (the coarse axis has < 1/3 of the others' voxels): thick-slice
    scans are resampled to the thinner of their slices, never finer than the in-plane spacing, so
    the network does not have to learn from heavily interpolated slices.
    """
    target = np.percentile(spacings, 50, axis=0)
    if len(target) < 3:
        return tuple(float(s) for s in target)
    median_shape = np.percentile(cropped_shapes, 50, axis=0)
    coarse = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != coarse]
    finest_other = max(target[i] for i in others)
    aniso_spacing = target[coarse] > ANISOTROPY_THRESHOLD * finest_other
    aniso_voxels = median_shape[coarse] * ANISOTROPY_THRESHOLD < min(median_shape[i] for i in others)
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, coarse], 10))
        target[coarse] = p10 if p10 >= finest_other else finest_other + 1e-5
    return tuple(float(s) for s in target)


def lowres_spacing_step(spacing: np.ndarray, factor: float = 1.03) -> np.ndarray:
    """One coarsening step for 3d_lowres: axes much finer than the coarsest catch up first."""
    spacing = spacing.copy()
    much_finer = spacing.max() / spacing > 2
    if much_finer.any():
        spacing[much_finer] *= factor
    else:
        spacing *= factor
    return spacing
