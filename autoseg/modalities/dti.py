"""Diffusion tensor fitting through dipy's TensorModel, FA/MD/AD/RD maps and per-region means.

The fit is dipy's (`dipy.reconst.dti.TensorModel`), weighted least squares by default: the
log-linear model ln S_k = ln S0 - b_k g_k^T D g_k is solved with weights S_k^2 from an ordinary
least-squares first pass, which undoes the noise amplification of the log at low signal (Basser
1994; Veraart 2013). `fit_method` passes "OLS", "NLLS" or "RESTORE" through. This module only
adapts array layouts (volumes first here, last in dipy) and checks the gradient scheme.

`fit_tensor_loglinear` keeps the project's earlier unweighted log-linear solver (one pseudo-inverse
for every voxel), only so tests can compare the two. Gradient directions are in the image's voxel
axes (FSL convention, see autoseg.modalities.dwi); FA and MD do not depend on their signs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from autoseg.errors import DatasetError

log = logging.getLogger(__name__)

FIT_METHODS = ("WLS", "OLS", "NLLS", "RESTORE")
# The label convention of regional cord DTI (left/right dorsal, lateral, ventral white matter and
# gray matter), shared by the dti-cord phantom and task.
CORD_REGIONS = {
    "background": 0,
    "wm_dorsal_left": 1, "wm_dorsal_right": 2,
    "wm_lateral_left": 3, "wm_lateral_right": 4,
    "wm_ventral_left": 5, "wm_ventral_right": 6,
    "gm_left": 7, "gm_right": 8,
}  # fmt: skip
B0_THRESHOLD = 50.0  # s/mm^2: volumes at or below count as b=0
_MIN_SIGNAL = 1e-6  # floor before the log (log-linear solver only)


@dataclass(frozen=True)
class TensorFit:
    """Per-voxel fit results over the spatial shape of the input (zeros outside the mask)."""

    eigenvalues: np.ndarray  # (*spatial, 3) in mm^2/s, largest first
    s0: np.ndarray  # fitted b=0 signal
    fa: np.ndarray
    md: np.ndarray
    ad: np.ndarray  # axial diffusivity: the largest eigenvalue
    rd: np.ndarray  # radial diffusivity: the mean of the two others

    def maps(self) -> dict[str, np.ndarray]:
        return {"FA": self.fa, "MD": self.md, "AD": self.ad, "RD": self.rd}


def fit_tensor(dwi: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray | None = None,
               fit_method: str = "WLS", b0_threshold: float = B0_THRESHOLD) -> TensorFit:
    """Fit a tensor per voxel of `dwi` (N, *spatial) with dipy; voxels outside `mask` get zeros.

    Without a mask, voxels whose mean b=0 signal is below 5 % of its 99th percentile are skipped.
    """
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    if fit_method not in FIT_METHODS:
        raise DatasetError(f"tensor fit method '{fit_method}' is unknown; use one of {', '.join(FIT_METHODS)}")
    dwi, bvals, bvecs = _checked(dwi, bvals, bvecs)
    mask = default_mask(dwi, bvals, b0_threshold) if mask is None else np.asarray(mask, bool)
    table = gradient_table(bvals, bvecs=_unit(bvecs), b0_threshold=b0_threshold)
    model = TensorModel(table, fit_method=fit_method, return_S0_hat=True)
    fitted = model.fit(np.moveaxis(dwi, 0, -1), mask=mask)
    eigenvalues = np.where(mask[..., None], np.nan_to_num(fitted.evals), 0.0)
    return _maps(eigenvalues, np.where(mask, np.nan_to_num(fitted.S0_hat), 0.0))


def fit_tensor_loglinear(dwi: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                         mask: np.ndarray | None = None) -> TensorFit:
    """The unweighted log-linear fit (one pseudo-inverse for all voxels), kept for comparison."""
    dwi, bvals, bvecs = _checked(dwi, bvals, bvecs)
    mask = default_mask(dwi, bvals, B0_THRESHOLD) if mask is None else np.asarray(mask, bool)
    signals = dwi.reshape(len(bvals), -1)[:, mask.ravel()]
    params = np.linalg.pinv(design_matrix(bvals, bvecs)) @ np.log(np.maximum(signals, _MIN_SIGNAL))  # (7, V)
    eigenvalues = np.zeros(mask.shape + (3,))
    eigenvalues[mask] = np.linalg.eigvalsh(_as_matrices(params[1:].T))[:, ::-1]
    s0 = np.zeros(mask.shape)
    s0[mask] = np.exp(params[0])
    return _maps(eigenvalues, s0)


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Rows [1, -b gx^2, -b gy^2, -b gz^2, -2b gx gy, -2b gx gz, -2b gy gz] for ln S."""
    b = np.asarray(bvals, float)[:, None]
    g = _unit(bvecs)
    gx, gy, gz = g[:, :1], g[:, 1:2], g[:, 2:3]
    quad = np.hstack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz])
    return np.hstack([np.ones_like(b), -b * quad])


def _unit(bvecs: np.ndarray) -> np.ndarray:
    g = np.asarray(bvecs, float)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    return np.divide(g, norms, out=np.zeros_like(g), where=norms > 0)


def _checked(dwi, bvals, bvecs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volumes first, one b-value and direction each, and enough directions for a tensor."""
    dwi = np.asarray(dwi, dtype=np.float64)
    bvals, bvecs = np.asarray(bvals, float).ravel(), np.asarray(bvecs, float).reshape(-1, 3)
    if dwi.ndim < 2 or dwi.shape[0] != len(bvals) or len(bvals) != len(bvecs):
        raise DatasetError(
            f"diffusion data: expected volumes first, one per b-value; found data shape {dwi.shape}, "
            f"{len(bvals)} b-values and {len(bvecs)} directions"
        )
    if np.linalg.matrix_rank(design_matrix(bvals, bvecs)) < 7:
        raise DatasetError(
            "diffusion data: need a b=0 volume and at least 6 non-collinear gradient directions to fit a tensor"
        )
    return dwi, bvals, bvecs


def default_mask(dwi: np.ndarray, bvals: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Voxels with signal: mean b=0 above 5 % of its 99th percentile."""
    low = bvals <= b0_threshold
    b0 = dwi[low].mean(axis=0) if np.any(low) else dwi.max(axis=0)
    return b0 > 0.05 * np.percentile(b0, 99)


def _as_matrices(d6: np.ndarray) -> np.ndarray:
    xx, yy, zz, xy, xz, yz = d6.T
    return np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)


def _maps(eigenvalues: np.ndarray, s0: np.ndarray) -> TensorFit:
    from dipy.reconst import dti as dipy_dti

    return TensorFit(eigenvalues, s0, fractional_anisotropy(eigenvalues), dipy_dti.mean_diffusivity(eigenvalues),
                     dipy_dti.axial_diffusivity(eigenvalues), dipy_dti.radial_diffusivity(eigenvalues))


def fractional_anisotropy(eigenvalues: np.ndarray) -> np.ndarray:
    """dipy's FA, 0 where all eigenvalues are 0, clipped to [0, 1] (noise can push it past 1)."""
    from dipy.reconst.dti import fractional_anisotropy as dipy_fa

    return np.clip(np.nan_to_num(dipy_fa(np.asarray(eigenvalues, float))), 0.0, 1.0)


def regional_metrics(
    fa: np.ndarray, label: np.ndarray, labels: dict[str, int], md: np.ndarray | None = None
) -> dict[str, dict]:
    """Mean FA (and MD when given) per labelled region, by name; background (0) is skipped.

    Regions with no voxels report None means and 0 voxels.
    """
    if fa.shape != label.shape or (md is not None and md.shape != label.shape):
        md_shape = None if md is None else md.shape
        raise DatasetError(
            f"regional metrics: FA {fa.shape}, MD {md_shape} and label {label.shape} must have the same shape"
        )
    result = {}
    for name, value in labels.items():
        if value == 0:
            continue
        region = label == value
        count = int(region.sum())
        result[name] = {
            "FA_mean": float(fa[region].mean()) if count else None,
            "MD_mean": float(md[region].mean()) if count and md is not None else None,
            "voxels": count,
        }
    return result
