"""Training data: patch sampling with foreground oversampling, augmentation, multi-process loading."""
from autoseg.data.augmentation import (
    AugmentationConfig,
    build_transforms,
    no_augmentation_transforms,
    pre_augmentation_size,
    should_use_dummy_2d,
)
from autoseg.data.loader import BatchLoader, make_loader
from autoseg.data.sampling import PatchSampler

__all__ = [
    "AugmentationConfig",
    "BatchLoader",
    "PatchSampler",
    "build_transforms",
    "make_loader",
    "no_augmentation_transforms",
    "pre_augmentation_size",
    "should_use_dummy_2d",
]
