"""Sliding-window inference: tiling, gaussian weights, mirroring, batching, 2D-on-3D, fallbacks."""
from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoseg.errors import ConfigError
from autoseg.inference import sliding_window as sw
from autoseg.inference.gaussian import MIN_IMPORTANCE, gaussian_importance
from autoseg.inference.sliding_window import (
    predict_slices,
    sliding_window_accumulate,
    sliding_window_predict,
    tile_starts,
)

ATOL = 1e-5


def seeded_conv(dims: int, in_ch: int, out_ch: int, kernel: int, seed: int = 0) -> torch.nn.Module:
    """A fixed random convolution in eval mode; kernel 1 makes it pointwise."""
    torch.manual_seed(seed)
    conv_class = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    return conv_class(in_ch, out_ch, kernel, padding=kernel // 2).eval()


def whole_image(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(image[None])[0]


class RampModel(torch.nn.Module):
    """Pointwise conv plus a ramp along the patch's last axis: deliberately not mirror-symmetric."""

    def __init__(self, in_ch: int, classes: int):
        super().__init__()
        self.conv = seeded_conv(3, in_ch, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0, 1, x.shape[-1])
        return self.conv(x) + ramp


# --- tiling ---------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 60),
    patch=st.integers(1, 20),
    step=st.sampled_from([0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0]),
)
def test_tile_starts_cover_every_voxel_and_end_flush(size: int, patch: int, step: float) -> None:
    (starts,) = tile_starts([size], [patch], step)
    assert starts[0] == 0
    assert starts[-1] == max(size - patch, 0)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # Evenly spread starts are rounded to integers, so a gap may reach the next integer.
    assert all(1 <= g <= math.ceil(max(1.0, patch * step) - 1e-9) for g in gaps)
    covered = {v for s in starts for v in range(s, s + patch)}
    assert covered.issuperset(range(size))


def test_tile_starts_examples() -> None:
    assert tile_starts([10, 7, 3], [4, 4, 4], 0.5) == [[0, 2, 4, 6], [0, 2, 3], [0]]
    assert tile_starts([10, 4], [4, 4], 1.0) == [[0, 3, 6], [0]]


@pytest.mark.parametrize("step", [0.0, -0.5, 1.5])
def test_tile_starts_rejects_bad_step(step: float) -> None:
    with pytest.raises(ConfigError, match="step_fraction"):
        tile_starts([10], [4], step)


def test_tile_starts_rejects_dimension_mismatch() -> None:
    with pytest.raises(ConfigError, match="one entry per spatial axis"):
        tile_starts([10, 10], [4], 0.5)


# --- gaussian -------------------------------------------------------------------------------

def test_gaussian_peaks_at_centre_and_stays_positive() -> None:
    g = gaussian_importance((5, 7, 9))
    assert g.shape == (5, 7, 9) and g.dtype == torch.float32
    assert g[2, 3, 4] == pytest.approx(1.0) and g.max() == pytest.approx(1.0)
    assert g.min() >= MIN_IMPORTANCE
    assert torch.equal(g, g.flip(0, 1, 2))
    profile = g[2, 3, 4:]
    assert torch.all(profile[1:] <= profile[:-1])


def test_gaussian_is_cached_per_size_dtype_device() -> None:
    assert gaussian_importance((4, 6)) is gaussian_importance([4, 6])
    half = gaussian_importance((4, 6), dtype=torch.float16)
    assert half.dtype == torch.float16 and half.min() > 0
    assert half is not gaussian_importance((4, 6))


def test_gaussian_rejects_bad_patch() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        gaussian_importance((4, 0))


# --- coverage and exactness -----------------------------------------------------------------

@pytest.mark.parametrize("step", [0.5, 1.0])
@pytest.mark.parametrize("size", [(7, 9, 10), (4, 5, 13), (2, 3, 5)])
def test_weight_map_positive_everywhere(size: tuple[int, ...], step: float) -> None:
    image = torch.randn(1, *size)
    logit_sum, weight_sum = sliding_window_accumulate(
        seeded_conv(3, 1, 2, 1), image, (4, 4, 4), num_classes=2, step_fraction=step)
    assert weight_sum.shape == size and logit_sum.shape == (2, *size)
    assert weight_sum.min() >= MIN_IMPORTANCE


@pytest.mark.parametrize("size", [(7, 9, 10), (4, 4, 4), (5, 12, 6)])
def test_pointwise_model_matches_whole_image(size: tuple[int, ...]) -> None:
    model = seeded_conv(3, 2, 3, 1)
    image = torch.randn(2, *size)
    result = sliding_window_predict(model, image, (4, 4, 4), num_classes=3)
    assert result.shape == (3, *size) and result.dtype == torch.float32 and result.device.type == "cpu"
    torch.testing.assert_close(result, whole_image(model, image), atol=ATOL, rtol=0)


def test_image_smaller_than_patch_is_zero_padded_symmetrically() -> None:
    # With one tile, symmetric zero padding acts exactly like the conv's own zero padding,
    # so even a 3x3x3 conv must match the whole-image result.
    model = seeded_conv(3, 2, 3, 3)
    image = torch.randn(2, 3, 5, 2)
    result = sliding_window_predict(model, image, (6, 6, 6), num_classes=3)
    assert result.shape == (3, 3, 5, 2)
    torch.testing.assert_close(result, whole_image(model, image), atol=ATOL, rtol=0)


def test_padding_centres_the_image_in_the_patch() -> None:
    # The ramp model reveals where the image sits inside the 6-wide patch: x = 2..3 when centred.
    model = RampModel(1, 2).eval()
    image = torch.randn(1, 6, 6, 2)
    result = sliding_window_predict(model, image, (6, 6, 6), num_classes=2)
    expected = whole_image(model.conv, image) + torch.linspace(0, 1, 6)[2:4]
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)


def test_partially_smaller_image_with_pointwise_model() -> None:
    model = seeded_conv(3, 1, 2, 1)
    image = torch.randn(1, 2, 11, 3)
    result = sliding_window_predict(model, image, (4, 4, 4), num_classes=2, step_fraction=1.0)
    torch.testing.assert_close(result, whole_image(model, image), atol=ATOL, rtol=0)


# --- mirroring ------------------------------------------------------------------------------

def test_mirroring_leaves_pointwise_model_unchanged() -> None:
    model = seeded_conv(3, 2, 3, 1)
    image = torch.randn(2, 6, 7, 9)
    plain = sliding_window_predict(model, image, (4, 4, 4), num_classes=3)
    mirrored = sliding_window_predict(model, image, (4, 4, 4), num_classes=3, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, atol=ATOL, rtol=0)


def explicit_flip_average(model, image, patch, classes, axes) -> torch.Tensor:
    combos = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    total = torch.zeros(classes, *image.shape[1:])
    for combo in combos:
        spatial = [a + 1 for a in combo]  # image axes (channel first)
        flipped = image.flip(spatial) if combo else image
        pred = sliding_window_predict(model, flipped, patch, classes)
        total += pred.flip(spatial) if combo else pred
    return total / len(combos)


@pytest.mark.parametrize("axes", [(2,), (0, 2), (0, 1, 2)])
def test_mirroring_equals_average_of_explicit_flips(axes: tuple[int, ...]) -> None:
    # Sizes whose tile grids are symmetric, so flipping the image flips the tiling too.
    model = RampModel(2, 3).eval()
    image = torch.randn(2, 6, 4, 10)
    tta = sliding_window_predict(model, image, (4, 4, 4), num_classes=3, mirror_axes=axes)
    expected = explicit_flip_average(model, image, (4, 4, 4), 3, axes)
    torch.testing.assert_close(tta, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(tta, sliding_window_predict(model, image, (4, 4, 4), num_classes=3))


def test_mirroring_single_tile_with_asymmetric_kernel() -> None:
    model = seeded_conv(3, 1, 2, 3, seed=3)
    image = torch.randn(1, 4, 4, 4)
    tta = sliding_window_predict(model, image, (4, 4, 4), num_classes=2, mirror_axes=(1,))
    expected = (whole_image(model, image) + whole_image(model, image.flip(2)).flip(2)) / 2
    torch.testing.assert_close(tta, expected, atol=ATOL, rtol=0)


# --- batching, outputs, precision -----------------------------------------------------------

def test_tile_batching_matches_batch_of_one() -> None:
    model = seeded_conv(3, 2, 3, 3)  # not pointwise: each tile's border differs
    image = torch.randn(2, 7, 9, 6)
    kwargs = dict(patch_size=(4, 4, 4), num_classes=3, mirror_axes=(0, 2))
    one = sliding_window_predict(model, image, tile_batch_size=1, **kwargs)
    for batch in (3, 100):
        torch.testing.assert_close(
            sliding_window_predict(model, image, tile_batch_size=batch, **kwargs), one, atol=ATOL, rtol=0)


def test_deep_supervision_list_uses_full_resolution_output() -> None:
    model = seeded_conv(3, 1, 2, 1)

    def deep_model(x: torch.Tensor) -> list[torch.Tensor]:
        full = model(x)
        return [full, full[:, :, ::2, ::2, ::2]]

    image = torch.randn(1, 5, 6, 7)
    torch.testing.assert_close(
        sliding_window_predict(deep_model, image, (4, 4, 4), 2),
        sliding_window_predict(model, image, (4, 4, 4), 2), atol=0, rtol=0)


def test_precision_options_on_cpu() -> None:
    model = seeded_conv(3, 1, 2, 3)
    image = torch.randn(1, 5, 6, 7)
    fp32 = sliding_window_predict(model, image, (4, 4, 4), 2, precision="fp32")
    fp16 = sliding_window_predict(model, image, (4, 4, 4), 2, precision="fp16")
    bf16 = sliding_window_predict(model, image, (4, 4, 4), 2, precision="bf16")
    assert torch.equal(fp16, fp32)  # fp16 autocast is CUDA-only: runs in fp32 on the CPU
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)


def test_progress_reports_every_batch() -> None:
    calls: list[tuple[int, int]] = []
    sliding_window_predict(seeded_conv(3, 1, 2, 1), torch.randn(1, 6, 6, 10), (4, 4, 4), 2,
                           tile_batch_size=4, progress=lambda done, total: calls.append((done, total)))
    total = 2 * 2 * 4
    assert calls == [(4, total), (8, total), (12, total), (16, total)]


# --- 2D models on 3D volumes ----------------------------------------------------------------

def test_predict_slices_matches_per_slice_sliding_window() -> None:
    model2d = seeded_conv(2, 2, 3, 3)
    volume = torch.randn(2, 3, 9, 7)
    result = predict_slices(model2d, volume, (4, 4), 3, mirror_axes=(1,), tile_batch_size=5)
    assert result.shape == (3, 3, 9, 7) and result.dtype == torch.float32
    per_slice = torch.stack([
        sliding_window_predict(model2d, volume[:, z], (4, 4), 3, mirror_axes=(1,))
        for z in range(volume.shape[1])
    ], dim=1)
    torch.testing.assert_close(result, per_slice, atol=ATOL, rtol=0)


def test_predict_slices_pointwise_matches_whole_volume() -> None:
    model2d = seeded_conv(2, 1, 2, 1)
    volume = torch.randn(1, 4, 5, 11)
    result = predict_slices(model2d, volume, (4, 4), 2)
    with torch.no_grad():
        expected = model2d(volume.transpose(0, 1)).transpose(0, 1)  # slices as a batch
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)


def test_predict_slices_rejects_2d_image() -> None:
    with pytest.raises(ConfigError, match="predict_slices"):
        predict_slices(seeded_conv(2, 1, 2, 1), torch.randn(1, 8, 8), (4, 4), 2)


# --- user mistakes --------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (torch.randn(6, 6, 6), {}, "channel-first"),
        (torch.randn(1, 6, 6, 6), {"precision": "fp8"}, "precision"),
        (torch.randn(1, 6, 6, 6), {"mirror_axes": (3,)}, "mirror_axes"),
        (torch.randn(1, 6, 6, 6), {"mirror_axes": (1, 1)}, "mirror_axes"),
        (torch.randn(1, 6, 6, 6), {"num_classes": 5}, "num_classes"),
        (torch.randn(1, 6, 6, 6), {"tile_batch_size": 0}, "tile_batch_size"),
        (torch.randn(1, 6, 6, 6), {"step_fraction": 0}, "step_fraction"),
    ],
)
def test_user_mistakes_raise_config_error(image: torch.Tensor, kwargs: dict, message: str) -> None:
    options = {"num_classes": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        sliding_window_predict(seeded_conv(3, 1, 2, 1), image, (4, 4, 4), **options)


def test_training_mode_model_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = seeded_conv(3, 1, 2, 1).train()
    with caplog.at_level(logging.WARNING, logger=sw.__name__):
        sliding_window_predict(model, torch.randn(1, 4, 4, 4), (4, 4, 4), 2)
    assert "model.eval()" in caplog.text


# --- out-of-memory fallbacks ----------------------------------------------------------------

def test_forward_splits_batch_on_out_of_memory_and_remembers() -> None:
    model = seeded_conv(3, 1, 2, 3)
    seen: list[int] = []

    def small_memory_model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return model(x)

    image = torch.randn(1, 6, 6, 10)
    kwargs = dict(patch_size=(4, 4, 4), num_classes=2, tile_batch_size=4, mirror_axes=(0,))
    result = sliding_window_predict(small_memory_model, image, **kwargs)
    torch.testing.assert_close(result, sliding_window_predict(model, image, **kwargs), atol=ATOL, rtol=0)
    assert seen[:4] == [8, 4, 2, 2] and set(seen[4:]) == {2}  # later batches start at 2


def test_other_runtime_errors_propagate() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(RuntimeError, match="layer 3"):
        sliding_window_predict(broken, torch.randn(1, 4, 4, 4), (4, 4, 4), 2)


def test_accumulators_fall_back_to_cpu_when_device_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    real_zeros = sw._zeros

    def zeros_full_device(shape, device):
        if device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_zeros(shape, device)

    monkeypatch.setattr(sw, "_zeros", zeros_full_device)
    logits, weights = sw._allocate_accumulators(3, (4, 5), torch.device("meta"))
    assert logits.device.type == "cpu" and logits.shape == (3, 4, 5) and weights.shape == (4, 5)
