"""Tile size for inference: the training patch, grown along axes the image barely exceeds.

An image 120 voxels deep with a 112-voxel patch needs two tiles at half-patch steps, which
compute 104 of the slices twice. The network is fully convolutional, so one tile grown to the
whole axis (rounded up to the network's total stride) gives the same kind of prediction at
about half the cost. Growth is allowed only up to `max_growth` per axis, which bounds the extra
memory of one forward pass (1.25 per axis: at most 1.25^3 ~ 2x a patch's activations in 3D).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from autoseg.config import NetworkPlan
from autoseg.networks import activation_elements

DEFAULT_MAX_GROWTH = 1.25


def total_strides(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The network's downsampling per axis: a tile's size must be a multiple of it."""
    return tuple(math.prod(stage[a] for stage in strides) for a in range(len(strides[0])))


def inference_tile(patch: Sequence[int], image: Sequence[int], divisible_by: Sequence[int],
                   max_growth: float = DEFAULT_MAX_GROWTH) -> tuple[int, ...]:
    """Per axis: the patch, or the whole (stride-rounded) axis when that is at most `max_growth` x the patch."""
    tile = []
    for p, s, d in zip(patch, image, divisible_by):
        grown = math.ceil(s / d) * d
        tile.append(grown if p < s and grown <= p * max_growth else p)
    return tuple(tile)


def available_memory_bytes(device: torch.device) -> int:
    """Free memory where the forward pass runs: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not POSIX: assume a modest machine
        return 8 << 30


def patches_per_forward(network: NetworkPlan, tile: Sequence[int], device: torch.device, fraction: float = 0.4) -> int | None:
    """How many tiles one forward pass may take within `fraction` of the free memory.

    A training forward keeps every activation for backward; inference frees them as it goes, so
    4 bytes per training-kept element bounds a patch's inference footprint from above. Running
    out of memory is recoverable on a GPU (the window halves its batch) but fatal on the CPU.
    None (no bound) for a registered network that does not account for its activations.
    """
    try:
        per_patch = 4 * activation_elements(network, tuple(int(t) for t in tile))
    except AttributeError:
        return None
    return max(1, int(available_memory_bytes(device) * fraction // per_patch))
