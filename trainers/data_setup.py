"""Training and validation batch sources for one configuration plan.

A source (sampler + transforms) is built once per run, and so is its loader: the trainer reseeds
the loader at every epoch (its workers keep running), so the batches of epoch e depend only on
(seed, e) and a resumed run sees what an uninterrupted one would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.config import ConfigPlan
from autoseg.data.augmentation import (
    AugmentationConfig,
    build_transforms,
    no_augmentation_transforms,
    pre_augmentation_size,
    should_use_dummy_2d,
)
from autoseg.data.loader import BatchLoader, Transforms, make_loader
from autoseg.data.sampling import PatchSampler
from autoseg.data.transforms import NormalizeTransform
from autoseg.networks import deep_supervision_scales
from autoseg.preprocessing import load_case
from autoseg.tasks import raw_augmentations
from autoseg.tasks.profile import foreground_slice_share


@dataclass(frozen=True)
class BatchSource:
    sampler: PatchSampler
    transforms: Transforms

    def loader(self, workers: int, seed: int) -> BatchLoader:
        """An endless batch stream determined by (seed, workers), restarted by its `reseed(seed)`;
        close it (or use `with`) when done."""
        return make_loader(self.sampler, self.transforms, num_workers=workers, seed=seed)


def target_scales(config: ConfigPlan) -> list[tuple[float, ...]] | None:
    """Relative size of each network output, highest resolution first (None: a single output)."""
    return deep_supervision_scales(config.network) if config.network.deep_supervision else None


def augmentation_for(config: ConfigPlan) -> AugmentationConfig:
    dummy_2d = len(config.patch_size) == 3 and should_use_dummy_2d(config.patch_size, config.spacing)
    return AugmentationConfig(dummy_2d=dummy_2d)


def raw_intensity_steps(config: ConfigPlan, training: bool) -> list:
    """Where the plan normalizes in the loader: the task's raw-intensity augmentations (training
    only), then normalization with each case's recorded parameters. Otherwise none."""
    if config.normalize_at != "loader":
        return []
    return [*(raw_augmentations(config.task) if training else []), NormalizeTransform()]


def training_source(config: ConfigPlan, folder: Path, case_ids: list[str], batch_size: int, oversample: float,
                    case_weights: Sequence[float] | None = None) -> BatchSource:
    augmentation = augmentation_for(config)
    # the loader reseeds the sampler per worker, so its own seed never matters
    sampler = PatchSampler(folder, case_ids, config.patch_size, batch_size, oversample, seed=0,
                           sample_size=pre_augmentation_size(config.patch_size, augmentation),
                           raw_intensities=config.normalize_at == "loader",
                           foreground_slice_share=foreground_slice_share(config.task), case_weights=case_weights)
    return BatchSource(sampler, build_transforms(augmentation, config.patch_size, config.mirror_axes, target_scales(config),
                                                 first=raw_intensity_steps(config, training=True)))


def validation_source(config: ConfigPlan, folder: Path, case_ids: list[str], batch_size: int, oversample: float) -> BatchSource:
    sampler = PatchSampler(folder, case_ids, config.patch_size, batch_size, oversample, seed=0,
                           raw_intensities=config.normalize_at == "loader")
    return BatchSource(sampler, no_augmentation_transforms(config.patch_size, target_scales(config),
                                                           first=raw_intensity_steps(config, training=False)))


def check_cases(folder: Path, case_ids: Sequence[str]) -> None:
    """Open every case once (headers and memory maps only, no data is read), so a truncated or
    damaged file fails now with a PreprocessingError naming it, not at a random iteration later."""
    for case_id in case_ids:
        load_case(folder, case_id)
