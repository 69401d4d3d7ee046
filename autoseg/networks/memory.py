"""Training memory of a planned network, by arithmetic alone (no GPU, no tensor allocated).

The network is built once per NetworkPlan on the meta device (shapes only, no storage) and asked
for the activation elements its blocks keep for backward; parameters are counted from the same
meta module. The planner calls this in a loop while shrinking the patch, so meta modules are cached.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from autoseg.config import NetworkPlan
from autoseg.errors import PlanError
from autoseg.networks.unet import build_network, check_divisible, total_downsampling

# Fixed cost on top of tensors: the CUDA context and loaded kernels (~0.4-0.6 GiB as nvidia-smi
# shows it on recent GPUs), cuDNN/cuBLAS workspaces and caching-allocator slack (a few hundred MiB
# for 3D convolutions).
CUDA_OVERHEAD_BYTES = 1024**3

# Parameters are fp32 and training keeps three copies: weights, gradients, SGD momentum.
PARAMETER_COPIES = 3
PARAMETER_BYTES = 4


def _build_on_meta(plan: NetworkPlan) -> nn.Module:
    with torch.device("meta"):
        return build_network(plan)


_cached_build_on_meta = functools.lru_cache(maxsize=32)(_build_on_meta)


def _meta_network(plan: NetworkPlan) -> nn.Module:
    try:
        hash(plan)
    except TypeError:  # a plan built by hand with lists instead of tuples: still works, uncached
        return _build_on_meta(plan)
    return _cached_build_on_meta(plan)


def count_parameters(plan: NetworkPlan) -> int:
    """Number of trainable parameters of the network the plan describes."""
    return sum(p.numel() for p in _meta_network(plan).parameters() if p.requires_grad)


def activation_elements(plan: NetworkPlan, patch_size: tuple[int, ...]) -> int:
    """Elements per sample kept for backward by one training forward pass on `patch_size`."""
    network = _meta_network(plan)  # validates the plan first
    check_divisible(tuple(patch_size), total_downsampling(plan), f"patch_size of network '{plan.name}'")
    return network.activation_elements(tuple(patch_size))


# At the top decoder stage, besides the skips: the upsampled tensor (C), the concatenation (2C)
# and a convolution's output (C) are alive at once.
TOP_STAGE_TRANSIENTS = 4
LOGIT_COPIES = 3  # logits, their float copy and the mirrored/weighted sum


def inference_elements(plan: NetworkPlan, tile: tuple[int, ...]) -> int:
    """Upper bound on the elements alive at once in an inference forward pass of one tile.

    Without backward only the skips (each encoder stage's output) outlive their stage, so this
    is far below `activation_elements` for the same size.
    """
    check_divisible(tuple(tile), total_downsampling(plan), f"inference tile of network '{plan.name}'")
    spatial, skips = tuple(tile), 0
    for features, stride in zip(plan.features, plan.strides):
        spatial = tuple(n // s for n, s in zip(spatial, stride))
        skips += features * math.prod(spatial)
    voxels = math.prod(tile)
    return skips + TOP_STAGE_TRANSIENTS * plan.features[0] * voxels + LOGIT_COPIES * plan.num_classes * voxels


def estimate_training_memory_bytes(
    plan: NetworkPlan, patch_size: tuple[int, ...], batch_size: int, bytes_per_element: int = 2
) -> int:
    """GPU memory to train the network: activations + parameter state + CUDA overhead.

    bytes_per_element is the activation precision: 2 under fp16/bf16 autocast, 4 in fp32.
    """
    if batch_size < 1 or bytes_per_element < 1:
        raise PlanError(
            f"batch_size and bytes_per_element must be >= 1, found {batch_size} and {bytes_per_element}; "
            "pass positive values."
        )
    activations = activation_elements(plan, patch_size) * batch_size * bytes_per_element
    parameters = count_parameters(plan) * PARAMETER_COPIES * PARAMETER_BYTES
    return activations + parameters + CUDA_OVERHEAD_BYTES
