"""Training and validation batch streams for one configuration plan."""
from __future__ import annotations

from pathlib import Path

from autoseg.config import ConfigPlan
from autoseg.data.augmentation import (
    AugmentationConfig,
    build_transforms,
    no_augmentation_transforms,
    pre_augmentation_size,
    should_use_dummy_2d,
)
from autoseg.data.loader import make_loader
from autoseg.data.sampling import PatchSampler
from autoseg.networks import deep_supervision_scales


def target_scales(config: ConfigPlan) -> list[tuple[float, ...]] | None:
    """Relative size of each network output, highest resolution first (None: a single output)."""
    return deep_supervision_scales(config.network) if config.network.deep_supervision else None


def augmentation_for(config: ConfigPlan) -> AugmentationConfig:
    dummy_2d = len(config.patch_size) == 3 and should_use_dummy_2d(config.patch_size, config.spacing)
    return AugmentationConfig(dummy_2d=dummy_2d)


def training_loader(config: ConfigPlan, folder: Path, case_ids: list[str], batch_size: int, oversample: float, workers: int, seed: int):
    augmentation = augmentation_for(config)
    sampler = PatchSampler(
        folder, case_ids, config.patch_size, batch_size, oversample, seed,
        sample_size=pre_augmentation_size(config.patch_size, augmentation),
    )
    transforms = build_transforms(augmentation, config.patch_size, config.mirror_axes, target_scales(config))
    return make_loader(sampler, transforms, num_workers=workers, seed=seed)


def validation_loader(config: ConfigPlan, folder: Path, case_ids: list[str], batch_size: int, oversample: float, workers: int, seed: int):
    sampler = PatchSampler(folder, case_ids, config.patch_size, batch_size, oversample, seed)
    transforms = no_augmentation_transforms(config.patch_size, target_scales(config))
    return make_loader(sampler, transforms, num_workers=workers, seed=seed)
