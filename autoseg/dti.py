"""Diffusion tensor fitting (log-linear least squares), FA/MD maps and per-region summaries.

Model: S_k = S0 * exp(-b_k g_k^T D g_k). Taking logs makes it linear in (ln S0, D), so one
pseudo-inverse of the design matrix fits every voxel at once. Gradient directions follow FSL's
text layout (.bval: one row of b-values; .bvec: three rows x, y, z) in the image's voxel axes;
FA and MD do not depend on the sign conventions of those axes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import DatasetError

_MIN_SIGNAL = 1e-6  # floor before the log: zero or negative (noise) samples would give -inf


@dataclass(frozen=True)
class TensorFit:
    """Per-voxel fit results over the spatial shape of the input."""

    tensor: np.ndarray  # (*spatial, 6): Dxx, Dyy, Dzz, Dxy, Dxz, Dyz in mm^2/s
    eigenvalues: np.ndarray  # (*spatial, 3), largest first
    s0: np.ndarray
    fa: np.ndarray
    md: np.ndarray


def read_fsl_gradients(bval_path: str | Path, bvec_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL .bval/.bvec files; returns b-values (N,) and directions (N, 3) in x, y, z as written."""
    bvals = _read_rows(Path(bval_path)).ravel()
    bvecs = _read_rows(Path(bvec_path))
    if bvecs.shape[0] == 3:
        bvecs = bvecs.T  # FSL layout: rows x, y, z
    elif bvecs.shape[1] != 3:
        raise DatasetError(f"{bvec_path}: expected 3 rows (x, y, z) of gradient components, found shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise DatasetError(
            f"{bval_path}, {bvec_path}: {len(bvals)} b-values but {len(bvecs)} directions; both files must list every volume"
        )
    return bvals, bvecs


def _read_rows(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return np.atleast_1d(np.loadtxt(path, ndmin=2))
    except ValueError as exc:
        raise DatasetError(f"{path}: expected whitespace-separated numbers ({exc})") from None


def write_fsl_gradients(bval_path: str | Path, bvec_path: str | Path, bvals: np.ndarray, bvecs: np.ndarray) -> None:
    """Write b-values as one row and directions (N, 3) as three rows, FSL style."""
    Path(bval_path).write_text(" ".join(f"{b:g}" for b in np.asarray(bvals, float)) + "\n")
    rows = np.asarray(bvecs, float).T
    Path(bvec_path).write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in rows) + "\n")


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Rows [1, -b gx^2, -b gy^2, -b gz^2, -2b gx gy, -2b gx gz, -2b gy gz] for ln S."""
    b = np.asarray(bvals, float)[:, None]
    g = np.asarray(bvecs, float)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    g = np.divide(g, norms, out=np.zeros_like(g), where=norms > 0)
    gx, gy, gz = g[:, :1], g[:, 1:2], g[:, 2:3]
    quad = np.hstack([gx * gx, gy * gy, gz * gz, 2 * gx * gy, 2 * gx * gz, 2 * gy * gz])
    return np.hstack([np.ones_like(b), -b * quad])


def fit_tensor(dwi: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray | None = None) -> TensorFit:
    """Fit a diffusion tensor per voxel of `dwi` (N, *spatial); voxels outside `mask` get zeros.

    Without a mask, voxels whose mean b=0 signal is below 5 % of its 99th percentile are skipped.
    """
    dwi = np.asarray(dwi, dtype=np.float64)
    bvals, bvecs = np.asarray(bvals, float).ravel(), np.asarray(bvecs, float).reshape(-1, 3)
    design = _checked_design(dwi, bvals, bvecs)
    spatial = dwi.shape[1:]
    mask = _default_mask(dwi, bvals) if mask is None else np.asarray(mask, bool)
    signals = dwi.reshape(len(bvals), -1)[:, mask.ravel()]
    params = np.linalg.pinv(design) @ np.log(np.maximum(signals, _MIN_SIGNAL))  # (7, V)
    tensor = np.zeros(spatial + (6,))
    tensor[mask] = params[1:].T
    s0 = np.zeros(spatial)
    s0[mask] = np.exp(params[0])
    eigenvalues = np.zeros(spatial + (3,))
    eigenvalues[mask] = np.linalg.eigvalsh(_as_matrices(params[1:].T))[:, ::-1]
    return TensorFit(tensor, eigenvalues, s0, fractional_anisotropy(eigenvalues), eigenvalues.mean(axis=-1))


def _checked_design(dwi: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    if dwi.ndim < 2 or dwi.shape[0] != len(bvals) or len(bvals) != len(bvecs):
        raise DatasetError(
            f"diffusion data: expected volumes first, one per b-value; found data shape {dwi.shape}, "
            f"{len(bvals)} b-values and {len(bvecs)} directions"
        )
    design = design_matrix(bvals, bvecs)
    if np.linalg.matrix_rank(design) < 7:
        raise DatasetError(
            "diffusion data: need a b=0 volume and at least 6 non-collinear gradient directions to fit a tensor"
        )
    return design


def _default_mask(dwi: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    b0 = dwi[bvals <= 50].mean(axis=0) if np.any(bvals <= 50) else dwi.max(axis=0)
    return b0 > 0.05 * np.percentile(b0, 99)


def _as_matrices(d6: np.ndarray) -> np.ndarray:
    xx, yy, zz, xy, xz, yz = d6.T
    return np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)


def fractional_anisotropy(eigenvalues: np.ndarray) -> np.ndarray:
    """FA = sqrt(3/2) |lambda - mean| / |lambda|, 0 where all eigenvalues are 0; clipped to [0, 1]."""
    lam = np.asarray(eigenvalues, float)
    deviation = np.sqrt(((lam - lam.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1))
    norm = np.sqrt((lam**2).sum(axis=-1))
    fa = np.sqrt(1.5) * np.divide(deviation, norm, out=np.zeros_like(norm), where=norm > 0)
    return np.clip(fa, 0.0, 1.0)


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
