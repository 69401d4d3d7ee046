"""Transposed convolution (kernel == stride) as 1x1 conv + shuffle: same values and gradients."""
import pytest
import torch

from autoseg.networks.upsample import upsample_by_stride


@pytest.mark.parametrize("stride", [(1, 2, 2), (2, 2, 2), (2, 2), (1, 2)])
def test_matches_the_transposed_convolution_with_gradients(stride):
    torch.manual_seed(0)
    cls = torch.nn.ConvTranspose3d if len(stride) == 3 else torch.nn.ConvTranspose2d
    up = cls(6, 4, stride, stride).double()
    x = torch.randn(2, 6, *([5] * len(stride)), dtype=torch.float64, requires_grad=True)
    upstream = torch.randn_like(up(x))
    expected = torch.autograd.grad(up(x), (x, up.weight, up.bias), upstream)
    got = upsample_by_stride(x, up)
    torch.testing.assert_close(got, up(x), rtol=0, atol=1e-12)
    for g, e in zip(torch.autograd.grad(got, (x, up.weight, up.bias), upstream), expected):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12)


def test_bf16_autocast_keeps_bf16_and_overlapping_kernels_are_refused():
    up = torch.nn.ConvTranspose3d(4, 2, (1, 2, 2), (1, 2, 2))
    x = torch.randn(1, 4, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert upsample_by_stride(x, up).dtype == up(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="kernel == stride"):
        upsample_by_stride(x, torch.nn.ConvTranspose3d(4, 2, 3, 2))


@pytest.mark.parametrize("stride", [(1, 2, 2), (2, 2, 2), (2, 2)])
def test_channels_last_input_gives_the_same_values_in_channels_last_layout(stride):
    torch.manual_seed(0)
    ndim = len(stride)
    layout = torch.channels_last_3d if ndim == 3 else torch.channels_last
    up = (torch.nn.ConvTranspose3d if ndim == 3 else torch.nn.ConvTranspose2d)(6, 4, stride, stride).double()
    x = torch.randn(2, 6, *([5] * ndim), dtype=torch.float64)
    got = upsample_by_stride(x.contiguous(memory_format=layout), up)
    torch.testing.assert_close(got, up(x), rtol=0, atol=1e-12)
    assert got.is_contiguous(memory_format=layout) and not got.is_contiguous()
