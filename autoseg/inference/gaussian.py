"""Gaussian importance map that weights each sliding-window tile's prediction.

Predictions near a tile's border see less context than those at its centre, so when tiles
overlap, the centre of each tile should dominate. The map peaks at 1 in the patch centre and
falls off with a standard deviation of `sigma_scale * patch_size` per axis.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from autoseg.errors import ConfigError

# Floor for the map. Far from the centre a 3D gaussian drops to ~1e-11; a floor keeps every
# voxel's accumulated weight safely positive (voxels near the image border are covered by a
# single tile corner) and is still representable in float16 (smallest normal ~6e-5).
MIN_IMPORTANCE = 1e-4


def gaussian_importance(
    patch_size: Sequence[int],
    sigma_scale: float = 1 / 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Return a `patch_size`-shaped map with max 1 at the centre and min `MIN_IMPORTANCE`.

    The tensor is cached per (patch_size, sigma_scale, dtype, device) and shared between
    callers: treat it as read-only (never modify it in place).
    """
    size = tuple(int(s) for s in patch_size)
    if not size or any(s < 1 for s in size):
        raise ConfigError(
            f"gaussian_importance: patch_size must be one or more positive integers, got {list(patch_size)}."
        )
    if not sigma_scale > 0:
        raise ConfigError(f"gaussian_importance: sigma_scale must be > 0, got {sigma_scale}.")
    return _cached_importance(size, float(sigma_scale), dtype, torch.device(device))


@functools.lru_cache(maxsize=16)
def _cached_importance(
    size: tuple[int, ...], sigma_scale: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Separable: the n-D gaussian is the outer product of 1D gaussians (computed in float64).
    importance = torch.ones((), dtype=torch.float64)
    for length in size:
        centre = (length - 1) / 2
        sigma = length * sigma_scale
        offsets = torch.arange(length, dtype=torch.float64) - centre
        profile = torch.exp(-0.5 * (offsets / sigma) ** 2)
        importance = importance.unsqueeze(-1) * profile
    importance = importance / importance.max()
    importance = importance.clamp_min(MIN_IMPORTANCE)
    return importance.to(device=device, dtype=dtype)
