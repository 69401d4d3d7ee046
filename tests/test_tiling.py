"""Inference tile size: grown only where that computes fewer voxels than overlapping patches."""
import torch

from autoseg.config import NetworkPlan
from autoseg.inference.tiling import choose_tile, inference_tile, patches_per_forward, total_strides

PLAN = NetworkPlan("unet", 3, 1, 3, (8, 16, 32), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)))


def test_total_strides_multiplies_stage_strides():
    assert total_strides(((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))) == (4, 8, 8)


def test_axis_slightly_longer_than_the_patch_gets_one_grown_tile():
    # 120 slices, patch 112, stride 16: one 128-slice tile instead of two 112-slice tiles
    assert inference_tile((112, 160, 160), (120, 150, 160), (16, 32, 32), max_growth=1.5) == (128, 160, 160)
    # 130 slices: 144 (1.29x the patch) computes 144 slices where two patches compute 224
    assert inference_tile((112, 160, 160), (130, 157, 157), (16, 32, 32), max_growth=1.5) == (144, 160, 160)


def test_long_axis_takes_the_tile_size_computing_fewest_voxels():
    # 300 slices: patches of 112 need 5 tiles (560 slices); 160-slice tiles need 3 (480)
    assert inference_tile((112, 160, 160), (300, 160, 160), (16, 32, 32), max_growth=1.5) == (160, 160, 160)
    # capped at 1.25x: 128-slice tiles need 4 (512)
    assert inference_tile((112, 160, 160), (300, 160, 160), (16, 32, 32), max_growth=1.25) == (128, 160, 160)


def test_growth_limit_and_disabling():
    assert inference_tile((64, 64), (81, 70), (16, 16), max_growth=1.25) == (64, 80)  # 96 > 80 for axis 0
    assert inference_tile((64, 64), (70, 70), (16, 16), max_growth=1.0) == (64, 64)


def test_ties_keep_the_smaller_tile_and_short_axes_keep_the_patch():
    assert inference_tile((96, 96), (50, 97), (32, 32), max_growth=1.25) == (96, 96)  # 97 -> 128 > 1.25 * 96
    assert inference_tile((64,), (128,), (16,), max_growth=1.5) == (64,)  # 3 patches of 64 and 2 tiles of 96 both compute 192
    assert inference_tile((64,), (96,), (16,), max_growth=1.5) == (96,)  # one 96 tile beats two 64 patches (128)


def test_grown_tile_that_does_not_fit_in_memory_falls_back_to_the_patch(monkeypatch):
    from autoseg.inference import tiling

    assert choose_tile(PLAN, (16, 16, 16), (20, 20, 20), torch.device("cpu"), 1.5) == (20, 20, 20)
    monkeypatch.setattr(tiling, "available_memory_bytes", lambda device: 1)
    assert choose_tile(PLAN, (16, 16, 16), (20, 20, 20), torch.device("cpu"), 1.5) == (16, 16, 16)


def test_patches_per_forward_shrinks_with_the_tile_and_is_at_least_one():
    small = patches_per_forward(PLAN, (16, 16, 16), torch.device("cpu"))
    large = patches_per_forward(PLAN, (64, 128, 128), torch.device("cpu"))
    assert small > large >= 1
    assert patches_per_forward(PLAN, (64, 128, 128), torch.device("cpu"), fraction=1e-9) == 1


def test_by_default_tiles_are_the_training_patch():
    """Growth is opt-in (it changed a trained 3D model's Dice): the default keeps nnU-Net's tiling."""
    assert inference_tile((112, 160, 160), (130, 157, 157), (16, 32, 32)) == (112, 160, 160)
