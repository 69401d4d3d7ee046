"""Training augmentation built from a config on batchgenerators (nnU-Net-like defaults).

Input batches are the sampler's {"data": (B, C, *S), "target": (B, 1, *S), ...} where S is the
pre-augmentation size (`pre_augmentation_size`); output batches are {"data": float32 (B, C, *P),
"target": [int16 (B, 1, *P_s) per deep-supervision scale], ...} with P the patch size.
batchgenerators calls the label map "seg", so the pipeline renames on the way in.

batchgenerators draws from numpy's global random state; the loader seeds and isolates it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.crop_and_pad_transforms import CenterCropTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import RenameTransform

from autoseg.data.transforms import Convert2DTo3DTransform, Convert3DTo2DTransform, DeepSupervisionTargetsTransform
from autoseg.errors import ConfigError

Range = tuple[float, float]
DUMMY_2D_ANISOTROPY = 3.0  # spacing ratio above which a 3D patch is augmented slice-wise


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities are per sample. `dummy_2d`: rotate/scale 3D patches in-plane only (see
    `should_use_dummy_2d`); low-resolution simulation then also leaves the slice axis alone."""

    rotation_p: float = 0.2
    rotation_max_degrees: float = 30.0  # about every axis in 3D, in-plane in 2D and dummy 2D
    scaling_p: float = 0.2
    scaling_range: Range = (0.7, 1.4)
    noise_p: float = 0.1
    noise_variance: Range = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    brightness_p: float = 0.15
    brightness_range: Range = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast_range: Range = (0.75, 1.25)
    low_resolution_p: float = 0.25
    low_resolution_zoom: Range = (0.5, 1.0)
    gamma_p: float = 0.3
    inverted_gamma_p: float = 0.1
    gamma_range: Range = (0.7, 1.5)
    dummy_2d: bool = False

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"augmentation.{f.name} = {value}: expected a probability in [0, 1]")
            if isinstance(value, tuple) and not (len(value) == 2 and 0 <= value[0] <= value[1]):
                raise ConfigError(f"augmentation.{f.name} = {value}: expected a range (low, high) with 0 <= low <= high")
        if self.rotation_max_degrees < 0:
            raise ConfigError(f"augmentation.rotation_max_degrees = {self.rotation_max_degrees}: expected >= 0")

    @property
    def moves_voxels(self) -> bool:
        """Whether the spatial transform can rotate or scale (and so needs a larger sample)."""
        return self.rotation_p > 0 or self.scaling_p > 0


def should_use_dummy_2d(patch_size: Sequence[int], spacing: Sequence[float]) -> bool:
    """Augment a 3D patch slice-wise when axis 0 is much coarser than the others (thick slices)."""
    if len(patch_size) != 3 or len(spacing) != 3:
        return False
    return max(spacing) / min(spacing) > DUMMY_2D_ANISOTROPY and int(np.argmax(spacing)) == 0


def pre_augmentation_size(patch_size: Sequence[int], config: AugmentationConfig) -> tuple[int, ...]:
    """Sample size whose centre still covers the patch after the largest rotation and scaling."""
    patch = tuple(int(p) for p in patch_size)
    if not config.moves_voxels:
        return patch
    in_plane = patch[1:] if config.dummy_2d else patch
    angle = math.radians(config.rotation_max_degrees) if config.rotation_p > 0 else 0.0
    scale = config.scaling_range[1] if config.scaling_p > 0 else 1.0
    extent = _rotated_extent(in_plane, angle) * max(scale, 1.0)
    size = tuple(max(p, int(math.ceil(e))) for p, e in zip(in_plane, extent))
    return (patch[0], *size) if config.dummy_2d else size


def _rotated_extent(size: Sequence[int], max_angle: float) -> np.ndarray:
    """Per-axis extent of the box `size` rotated about any single axis by up to +-max_angle.

    Rotations about several axes at once can reach a little further; covering those too would
    multiply the voxels read per sample for a rare case whose corners then just get zeros (as
    nnU-Net accepts). batchgenerators' own rotation keeps the axis convention of SpatialTransform.
    """
    corners = np.array(list(itertools.product(*[(-s / 2, s / 2) for s in size]))).T  # (ndim, 2**ndim)
    extent = np.array(size, dtype=float)
    for angle in np.linspace(-max_angle, max_angle, 9):
        if len(size) == 2:
            candidates = [rotate_coords_2d(corners, angle)]
        else:
            candidates = [rotate_coords_3d(corners, *(angle if k == axis else 0.0 for k in range(3))) for axis in range(3)]
        for rotated in candidates:
            extent = np.maximum(extent, rotated.max(axis=1) - rotated.min(axis=1))
    return extent


def build_transforms(
    config: AugmentationConfig,
    patch_size: Sequence[int],
    mirror_axes: Sequence[int],
    deep_supervision_scales: Sequence[Sequence[float]] | None,
    first: Sequence[Callable[..., dict]] = (),
) -> Compose:
    """The training pipeline: `first` (raw-intensity steps and the loader's normalization, for plans
    that normalize in the loader), spatial (rotate/scale, centre crop to patch_size), intensity,
    mirror, deep-supervision targets. `mirror_axes` are spatial axes of the patch; () disables mirroring."""
    patch = _check_patch(patch_size, config, deep_supervision_scales)
    steps: list = [*first, RenameTransform("target", "seg", delete_old=True)]
    if config.dummy_2d:
        steps.append(Convert3DTo2DTransform())
    steps.append(_spatial_transform(config, patch[1:] if config.dummy_2d else patch))
    if config.dummy_2d:
        steps.append(Convert2DTo3DTransform())
    steps += _intensity_transforms(config)
    if mirror_axes:
        steps.append(MirrorTransform(tuple(mirror_axes)))
    steps.append(DeepSupervisionTargetsTransform(deep_supervision_scales))
    return Compose(steps)


def no_augmentation_transforms(
    patch_size: Sequence[int], deep_supervision_scales: Sequence[Sequence[float]] | None,
    first: Sequence[Callable[..., dict]] = (),
) -> Compose:
    """Validation pipeline: `first` (the loader's normalization, where the plan defers it), centre
    crop to patch_size and deep-supervision targets only."""
    patch = _check_patch(patch_size, AugmentationConfig(), deep_supervision_scales)
    return Compose([
        *first,
        RenameTransform("target", "seg", delete_old=True),
        CenterCropTransform(patch),
        DeepSupervisionTargetsTransform(deep_supervision_scales),
    ])


def _check_patch(patch_size, config, scales) -> tuple[int, ...]:
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3):
        raise ConfigError(f"patch_size {patch}: expected 2 or 3 sizes")
    if config.dummy_2d and len(patch) != 3:
        raise ConfigError(f"augmentation.dummy_2d needs a 3D patch, found patch_size {patch}")
    for scale in scales or []:
        if len(scale) != len(patch):
            raise ConfigError(f"deep supervision scale {tuple(scale)} has {len(scale)} factors; "
                              f"expected one per axis of patch_size {patch}")
    return patch


def _spatial_transform(config: AugmentationConfig, patch_size: tuple[int, ...]) -> SpatialTransform:
    angle = math.radians(config.rotation_max_degrees)
    return SpatialTransform(
        patch_size,
        patch_center_dist_from_border=None,  # unused: random_crop=False, the sampler placed the patch
        do_elastic_deform=False,
        do_rotation=config.rotation_p > 0, angle_x=(-angle, angle), angle_y=(-angle, angle), angle_z=(-angle, angle),
        p_rot_per_sample=config.rotation_p,
        do_scale=config.scaling_p > 0, scale=config.scaling_range, p_scale_per_sample=config.scaling_p,
        border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=0, order_seg=0,  # order 0: labels stay labels
        random_crop=False,
    )


def _intensity_transforms(config: AugmentationConfig) -> list[AbstractTransform]:
    return [
        GaussianNoiseTransform(config.noise_variance, p_per_sample=config.noise_p),
        GaussianBlurTransform(config.blur_sigma, different_sigma_per_channel=True,
                              p_per_sample=config.blur_p, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(config.brightness_range, per_channel=True, p_per_sample=config.brightness_p),
        ContrastAugmentationTransform(config.contrast_range, per_channel=True, p_per_sample=config.contrast_p),
        SimulateLowResolutionTransform(config.low_resolution_zoom, per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=config.low_resolution_p,
                                       ignore_axes=(0,) if config.dummy_2d else None),
        # the inverted variant brightens dark structures instead of bright ones
        GammaTransform(config.gamma_range, invert_image=True, per_channel=True, retain_stats=True,
                       p_per_sample=config.inverted_gamma_p),
        GammaTransform(config.gamma_range, invert_image=False, per_channel=True, retain_stats=True,
                       p_per_sample=config.gamma_p),
    ]
