"""U-Net topology from spacing and patch size: which axes pool at each stage and the kernel sizes.

Rules: an axis pools (stride 2) at a stage only while its current spacing is within 2x of the
finest current spacing and its current size is at least 2 * MIN_EDGE (so the bottleneck keeps >= 4
voxels). A kernel axis is 1 while its spacing is still > 2x the finest (thick slices), then 3.
Pooling doubles the pooled axes' spacing, so anisotropic axes join in once the others catch up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from autoseg.errors import PlanError

MIN_EDGE = 4


@dataclass(frozen=True)
class Topology:
    strides: tuple[tuple[int, ...], ...]  # per stage, stage 0 all ones
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    patch_size: tuple[int, ...]  # rounded up to a multiple of divisible_by
    divisible_by: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.strides)


def _axes_to_pool(spacing: list[float], size: list[float]) -> list[int]:
    """Axes that pool at the next stage: those within 2x of the finest spacing among the axes still
    large enough. A finest axis too short to pool alone (< 3 * MIN_EDGE) steps aside, so that
    coarser axes can still pool."""
    candidates = [a for a in range(len(size)) if size[a] >= 2 * MIN_EDGE]
    while candidates:
        finest = min(spacing[a] for a in candidates)
        axes = [a for a in candidates if spacing[a] / finest < 2]
        if len(axes) > 1 or size[axes[0]] >= 3 * MIN_EDGE:
            return axes
        candidates.remove(axes[0])
    return []


def _first_pool(strides: list, size: list[float]) -> list[int]:
    """A U-Net needs at least one downsampling: when the spacing rules allow none (tiny, strongly
    anisotropic patches), pool every axis that can once."""
    return [a for a in range(len(size)) if size[a] >= 2 * MIN_EDGE] if len(strides) == 1 else []


def plan_topology(spacing, patch_size) -> Topology:
    ndim = len(spacing)
    current_spacing, current_size = list(map(float, spacing)), list(map(float, patch_size))
    kernel = [1] * ndim
    strides, kernels = [(1,) * ndim], []
    pools_per_axis = [0] * ndim
    while axes := _axes_to_pool(current_spacing, current_size) or _first_pool(strides, current_size):
        finest = min(current_spacing)
        kernel = [3 if k == 3 or current_spacing[a] / finest < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append(tuple(kernel))
        for a in axes:
            current_spacing[a] *= 2
            current_size[a] = math.ceil(current_size[a] / 2)
            pools_per_axis[a] += 1
        strides.append(tuple(2 if a in axes else 1 for a in range(ndim)))
    if len(strides) == 1:
        raise PlanError(f"a patch of {tuple(patch_size)} voxels is too small for a U-Net: some axis needs at least {2 * MIN_EDGE}")
    kernels.append((3,) * ndim)  # bottleneck
    divisible_by = tuple(2**p for p in pools_per_axis)
    padded = tuple(int(math.ceil(s / d) * d) for s, d in zip(patch_size, divisible_by))
    return Topology(tuple(strides), tuple(kernels), padded, divisible_by)
