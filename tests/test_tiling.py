"""Inference tile size: grown only where one tile can replace heavily overlapping patches."""
from autoseg.inference.tiling import inference_tile, total_strides


def test_total_strides_multiplies_stage_strides():
    assert total_strides(((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))) == (4, 8, 8)


def test_axis_slightly_longer_than_the_patch_gets_one_grown_tile():
    # 120 slices, patch 112, stride 16: one 128-slice tile instead of two 112-slice tiles
    assert inference_tile((112, 160, 160), (120, 150, 160), (16, 32, 32)) == (128, 160, 160)


def test_much_longer_axis_keeps_patch_sized_tiles():
    assert inference_tile((112, 160, 160), (300, 160, 160), (16, 32, 32)) == (112, 160, 160)


def test_growth_limit_and_disabling():
    assert inference_tile((64, 64), (81, 70), (16, 16), max_growth=1.25) == (64, 80)  # 96 > 80 for axis 0
    assert inference_tile((64, 64), (70, 70), (16, 16), max_growth=1.0) == (64, 64)


def test_shorter_axes_keep_the_patch():
    assert inference_tile((96, 96), (50, 97), (32, 32)) == (96, 96)  # 97 -> 128 > 1.25 * 96


def test_patches_per_forward_shrinks_with_the_tile_and_is_at_least_one():
    import torch

    from autoseg.config import NetworkPlan
    from autoseg.inference.tiling import patches_per_forward

    plan = NetworkPlan("unet", 3, 1, 3, (8, 16, 32), ((3, 3, 3),) * 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2)))
    small = patches_per_forward(plan, (16, 16, 16), torch.device("cpu"))
    large = patches_per_forward(plan, (64, 128, 128), torch.device("cpu"))
    assert small > large >= 1
    assert patches_per_forward(plan, (64, 128, 128), torch.device("cpu"), fraction=1e-9) == 1
