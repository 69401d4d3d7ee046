"""U-Net networks built from a NetworkPlan, registered by name, with memory accounting.

Importing this package registers every network in autoseg.registry.NETWORKS.
"""
from autoseg.networks import resenc_unet, unet  # noqa: F401  (registration side effect)
from autoseg.networks.memory import (
    CUDA_OVERHEAD_BYTES,
    activation_elements,
    count_parameters,
    estimate_training_memory_bytes,
    inference_elements,
)
from autoseg.networks.unet import UNet, build_network, deep_supervision_scales, validate_network_plan

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "UNet",
    "activation_elements",
    "build_network",
    "count_parameters",
    "deep_supervision_scales",
    "estimate_training_memory_bytes",
    "inference_elements",
    "validate_network_plan",
]
