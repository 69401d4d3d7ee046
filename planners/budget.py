"""Patch and batch size within a GPU memory budget, using the network's own memory accounting."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from autoseg.config import NetworkPlan
from autoseg.errors import PlanError
from autoseg.networks import CUDA_OVERHEAD_BYTES, estimate_training_memory_bytes
from autoseg.planners.topology import Topology, plan_topology

MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05
BYTES_PER_ELEMENT = 2  # activations under bf16/fp16 autocast
GIB = 1024**3

NetworkFactory = Callable[[Topology], NetworkPlan]


@dataclass(frozen=True)
class FittedPatch:
    topology: Topology
    network: NetworkPlan
    batch_size: int
    estimated_bytes: int


def initial_patch_size(spacing, median_shape) -> tuple[int, ...]:
    """A patch proportional to the physical extent (isotropic in mm) of 256^3 or 2048^2 voxels,
    clipped to the median image shape."""
    inverse = 1.0 / np.asarray(spacing, dtype=float)
    voxels = 256.0**3 if len(spacing) == 3 else 2048.0**2
    patch = inverse * (voxels / np.prod(inverse)) ** (1.0 / len(spacing))
    return tuple(max(1, int(min(round(p), m))) for p, m in zip(patch, median_shape))


def _memory(network: NetworkPlan, patch, batch_size: int) -> int:
    return estimate_training_memory_bytes(network, tuple(patch), batch_size, BYTES_PER_ELEMENT)


def _shrink(topology: Topology, spacing, median_shape) -> Topology:
    """Shrink the axis that is largest relative to the median image by one pooling unit."""
    ratios = [p / m for p, m in zip(topology.patch_size, median_shape)]
    axis = int(np.argmax(ratios))
    smaller = list(topology.patch_size)
    smaller[axis] -= topology.divisible_by[axis]
    shrunk = plan_topology(spacing, smaller) if smaller[axis] >= 4 else None
    if shrunk is None or shrunk.num_stages < 2:
        raise PlanError(
            f"no patch fits the GPU memory budget (smallest tried: {topology.patch_size}); "
            "raise --gpu-memory-gb"
        )
    return shrunk


def fit_patch_and_batch(
    spacing, median_shape, make_network: NetworkFactory, budget_gb: float, dataset_voxels: float
) -> FittedPatch:
    """Shrink the patch until a batch of two fits `budget_gb`, then take the largest batch that fits,
    capped so that one batch covers at most 5% of the dataset's voxels (but never below two)."""
    budget = budget_gb * GIB
    if budget <= CUDA_OVERHEAD_BYTES:
        raise PlanError(f"--gpu-memory-gb {budget_gb:g} is below the {CUDA_OVERHEAD_BYTES / GIB:g} GB that CUDA itself needs; raise it")
    topology = plan_topology(spacing, initial_patch_size(spacing, median_shape))
    network = make_network(topology)
    while _memory(network, topology.patch_size, MIN_BATCH_SIZE) > budget:
        topology = _shrink(topology, spacing, median_shape)
        network = make_network(topology)
    one, two = _memory(network, topology.patch_size, 1), _memory(network, topology.patch_size, 2)
    per_sample, fixed = two - one, 2 * one - two
    fitting = int((budget - fixed) // max(per_sample, 1))
    coverage_cap = round(dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / np.prod(topology.patch_size, dtype=float))
    batch_size = max(MIN_BATCH_SIZE, min(fitting, coverage_cap))
    return FittedPatch(topology, network, batch_size, _memory(network, topology.patch_size, batch_size))
