"""Transposed convolution with kernel == stride, computed as a 1x1 convolution and a voxel shuffle.

With kernel equal to stride the output blocks do not overlap: every input voxel, multiplied by
the weight, fills its own stride-sized output block. That is a 1x1 convolution to
C_out * prod(stride) channels followed by moving each channel group into its block. The values
are identical to the transposed convolution; on the CPU it is 1.5-3x faster than oneDNN's
deconvolution (measured on the decoder's largest layers).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def upsample_by_stride(x: Tensor, up: nn.ConvTranspose2d | nn.ConvTranspose3d) -> Tensor:
    """`up(x)` for a transposed convolution whose kernel equals its stride (no padding, no overlap)."""
    stride, ndim = tuple(up.stride), x.ndim - 2
    if tuple(up.kernel_size) != stride or any(up.padding) or any(up.output_padding) or up.groups != 1:
        raise ValueError(f"upsample_by_stride needs kernel == stride and no padding or groups; got {up}")
    n, c_in, *spatial = x.shape
    c_out = up.out_channels
    weight = up.weight.reshape(c_in, c_out * math.prod(stride)).t().reshape(-1, c_in, *([1] * ndim))
    conv = F.conv3d if ndim == 3 else F.conv2d
    y = conv(x, weight)  # under autocast this runs in the low precision, like the transposed conv
    # (n, c_out, s_1..s_d, x_1..x_d) -> (n, c_out, x_1, s_1, ..., x_d, s_d) -> merge each pair
    order = [0, 1, *(axis for a in range(ndim) for axis in (2 + ndim + a, 2 + a))]
    y = y.view(n, c_out, *stride, *spatial).permute(order)
    y = y.reshape(n, c_out, *(size * s for size, s in zip(spatial, stride)))
    return y + up.bias.to(y.dtype).view(1, -1, *([1] * ndim)) if up.bias is not None else y
