"""Transposed convolution with kernel == stride, computed as a 1x1 convolution and a voxel shuffle.

With kernel equal to stride the output blocks do not overlap: every input voxel, multiplied by
the weight, fills its own stride-sized output block. That is a 1x1 convolution to
C_out * prod(stride) channels followed by moving each channel group into its block. The values
are identical to the transposed convolution; on the CPU it is 1.5-3x faster than oneDNN's
deconvolution (measured on the decoder's largest layers). A channels-last input gets a
channels-last output (the shuffle then moves whole channel vectors), so a channels-last network
stays channels-last through its decoder.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from autoseg.networks.layout import is_channels_last


def upsample_by_stride(x: Tensor, up: nn.ConvTranspose2d | nn.ConvTranspose3d) -> Tensor:
    """`up(x)` for a transposed convolution whose kernel equals its stride (no padding, no overlap)."""
    stride, ndim = tuple(up.stride), x.ndim - 2
    if tuple(up.kernel_size) != stride or any(up.padding) or any(up.output_padding) or up.groups != 1:
        raise ValueError(f"upsample_by_stride needs kernel == stride and no padding or groups; got {up}")
    shuffle = _shuffle_channels_last if is_channels_last(x) else _shuffle_channels_first
    y = shuffle(x, up.weight, stride)  # under autocast this runs in the low precision, like the transposed conv
    if up.bias is not None:
        y += up.bias.to(y.dtype).view(1, -1, *([1] * ndim))
    return y


def _conv(x: Tensor, weight: Tensor) -> Tensor:
    return (F.conv3d if x.ndim == 5 else F.conv2d)(x, weight)


def _shuffle_channels_first(x: Tensor, weight: Tensor, stride: tuple[int, ...]) -> Tensor:
    """1x1 conv to channels ordered (c_out, s_1..s_d), then each voxel's channels into its block."""
    (n, c_in, *spatial), ndim = x.shape, x.ndim - 2
    c_out = weight.shape[1]
    y = _conv(x, weight.reshape(c_in, -1).t().reshape(-1, c_in, *([1] * ndim)))
    # (n, c_out, s_1..s_d, x_1..x_d) -> (n, c_out, x_1, s_1, ..., x_d, s_d) -> merge each pair
    order = [0, 1, *(axis for a in range(ndim) for axis in (2 + ndim + a, 2 + a))]
    y = y.view(n, c_out, *stride, *spatial).permute(order)
    return y.reshape(n, c_out, *(size * s for size, s in zip(spatial, stride)))


def _shuffle_channels_last(x: Tensor, weight: Tensor, stride: tuple[int, ...]) -> Tensor:
    """1x1 conv to channels ordered (s_1..s_d, c_out); in memory (n, x_1..x_d, s_1..s_d, c_out), so
    interleaving spatial and stride axes gives the channels-last upsampled tensor directly."""
    (n, c_in, *spatial), ndim = x.shape, x.ndim - 2
    c_out = weight.shape[1]
    y = _conv(x, weight.permute(*range(2, 2 + ndim), 1, 0).reshape(-1, c_in, *([1] * ndim)))
    y = y.permute(0, *range(2, 2 + ndim), 1).view(n, *spatial, *stride, c_out)  # memory order
    order = [0, *(axis for a in range(ndim) for axis in (1 + a, 1 + ndim + a)), 1 + 2 * ndim]
    y = y.permute(order).reshape(n, *(size * s for size, s in zip(spatial, stride)), c_out)
    return y.permute(0, ndim + 1, *range(1, ndim + 1))  # logical (n, c_out, ...), channels-last in memory
