"""Tile size for inference: the training patch, grown where that computes fewer voxels.

An image 130 slices deep with a 112-slice patch needs two tiles at half-patch steps: 224
slices computed for 130. The network is fully convolutional, so one tile grown to 144 slices
(the axis rounded up to the network's total stride) gives the same kind of prediction for 64%
of the work. Per axis, the tile is the size between the patch and `max_growth` x the patch
that covers the axis (at the usual steps) with the fewest computed voxels; ties keep the
smaller tile. One grown tile's activations must fit the free memory, else the patch is used.
Prediction grows tiles only when asked (`max_tile_growth` > 1, see DEFAULT_MAX_GROWTH).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from autoseg.config import NetworkPlan
from autoseg.inference.sliding_window import tile_starts
from autoseg.networks import activation_elements, inference_elements

# Prediction's default: the patch, as nnU-Net. Growth is opt-in because it is not Dice-neutral: on a
# trained 3D model whose patch spanned its training images, 1.5 lost 0.03 mean Dice (benchmarks/).
DEFAULT_MAX_GROWTH = 1.0
MEMORY_FRACTION = 0.4  # of the free memory one forward pass may take


def total_strides(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The network's downsampling per axis: a tile's size must be a multiple of it."""
    return tuple(math.prod(stage[a] for stage in strides) for a in range(len(strides[0])))


def inference_tile(patch: Sequence[int], image: Sequence[int], divisible_by: Sequence[int],
                   max_growth: float = DEFAULT_MAX_GROWTH, step_fraction: float = 0.5) -> tuple[int, ...]:
    """Per axis, the tile (the patch, or a stride multiple up to `max_growth` x it) computing fewest voxels."""
    return tuple(_axis_tile(int(p), int(s), int(d), max_growth, step_fraction) for p, s, d in zip(patch, image, divisible_by))


def _axis_tile(patch: int, size: int, stride: int, max_growth: float, step_fraction: float) -> int:
    if size <= patch:
        return patch  # padded up to the patch, as in training
    largest = min(math.floor(patch * max_growth), math.ceil(size / stride) * stride)
    candidates = [patch, *range(math.ceil((patch + 1) / stride) * stride, largest + 1, stride)]
    return min(candidates, key=lambda tile: (_computed_voxels(size, tile, step_fraction), tile))


def _computed_voxels(size: int, tile: int, step_fraction: float) -> int:
    return len(tile_starts([size], [tile], step_fraction)[0]) * tile


def available_memory_bytes(device: torch.device) -> int:
    """Free memory where the forward pass runs: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not POSIX: assume a modest machine
        return 8 << 30


def tile_bytes(network: NetworkPlan, tile: Sequence[int]) -> int:
    """Upper bound on one tile's forward-pass memory in float32."""
    return 4 * inference_elements(network, tuple(int(t) for t in tile))


def patches_per_forward(network: NetworkPlan, tile: Sequence[int], device: torch.device,
                        fraction: float = MEMORY_FRACTION) -> int | None:
    """How many tiles one forward pass may take within `fraction` of the free memory (at least 1).

    Budgeted at 4 bytes per element a training forward keeps, several times what inference
    needs: bigger batches do not speed the CPU up, they only cost memory (measured: 8 mirrored
    3D tiles in one pass doubled the peak and ran slower). Running out of memory is recoverable
    on a GPU (the window halves its batch) but fatal on the CPU. None (no bound) for a registered
    network that does not account for its activations.
    """
    try:
        per_tile = 4 * activation_elements(network, tuple(int(t) for t in tile))
    except AttributeError:
        return None
    return max(1, int(available_memory_bytes(device) * fraction // per_tile))


def choose_tile(network: NetworkPlan, patch: Sequence[int], image: Sequence[int], device: torch.device,
                max_growth: float = DEFAULT_MAX_GROWTH, step_fraction: float = 0.5) -> tuple[int, ...]:
    """`inference_tile` for this network, falling back to the patch when one grown tile would not fit in memory."""
    patch = tuple(int(p) for p in patch)
    tile = inference_tile(patch, image, total_strides(network.strides), max_growth, step_fraction)
    if tile == patch:
        return patch
    fits = tile_bytes(network, tile) <= available_memory_bytes(device) * MEMORY_FRACTION
    return tile if fits else patch
