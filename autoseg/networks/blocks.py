"""Building blocks of the U-Nets, each able to report the activation memory it keeps for backward.

Every block has `activation_elements(input_spatial) -> (elements, output_spatial)`: the number of
elements (per sample, all channels) of the tensors autograd stores while training, for an input of
the given spatial size, plus the spatial size of the block's output. It is pure arithmetic, so the
planner can fit a GPU budget without a GPU (design habit 2). A block counts its *outputs* only; its
input is counted by whoever produced it, so summing over a chain never counts a tensor twice.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autoseg.networks.inplace_norm import normalize_
from autoseg.networks.norm_act import instance_norm_leaky_relu
from autoseg.networks.upsample import upsample_by_stride

Spatial = tuple[int, ...]

LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5
FUSED_NORM_ACT_ON_CPU = True  # see ConvNormAct; False gives the textbook chain everywhere


def conv_class(ndim: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndim]


def transposed_conv_class(ndim: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]


def norm_class(ndim: int) -> type[nn.Module]:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[ndim]


def conv_output_spatial(spatial: Spatial, kernel: Sequence[int], stride: Sequence[int]) -> Spatial:
    """Output size of a convolution padded by k//2 (odd kernels keep the size at stride 1)."""
    return tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(spatial, kernel, stride))


def numel(channels: int, spatial: Spatial) -> int:
    count = channels
    for n in spatial:
        count *= n
    return count


def make_conv(ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]) -> nn.Module:
    return conv_class(ndim)(in_ch, out_ch, tuple(kernel), tuple(stride), padding=tuple(k // 2 for k in kernel))


def make_norm(ndim: int, channels: int) -> nn.Module:
    return norm_class(ndim)(channels, eps=NORM_EPS, affine=True)


class ConvNormAct(nn.Module):
    """Conv -> InstanceNorm -> LeakyReLU.

    fp32 CPU training runs norm and activation as one step that keeps only its output
    (norm_act.py): half the activation memory, and fewer fresh pages to fault in. CPU inference
    normalizes in place in any memory layout (inplace_norm.py). GPUs and export use the plain
    modules (native kernels, in-place activation); all paths compute the same values.
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride, self.out_ch = tuple(kernel), tuple(stride), out_ch
        self.conv = make_conv(ndim, in_ch, out_ch, kernel, stride)
        self.norm = make_norm(ndim, out_ch)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        # fp32 only: under bf16 the native kernels are faster and the activations already half-size
        fused = FUSED_NORM_ACT_ON_CPU and y.device.type == "cpu" and y.dtype == torch.float32 and self.training \
            and torch.is_grad_enabled()
        if fused and not torch.jit.is_tracing():
            return instance_norm_leaky_relu(y, self.norm.weight, self.norm.bias, self.norm.eps, LEAKY_SLOPE)
        return self.act(normalize_(self.norm, y))

    def activation_elements(self, input_spatial: Spatial) -> tuple[int, Spatial]:
        out = conv_output_spatial(input_spatial, self.kernel, self.stride)
        # Budgeted as the textbook chain keeps it: conv output (for the norm) + the activated
        # output. The fused training step keeps only the latter, so this is a safe upper bound
        # that keeps plans comparable with nnU-Net's.
        return 2 * numel(self.out_ch, out), out


class Chain(nn.Sequential):
    """Blocks applied one after the other; its memory is the sum of its blocks' memory."""

    def activation_elements(self, input_spatial: Spatial) -> tuple[int, Spatial]:
        total, spatial = 0, tuple(input_spatial)
        for block in self:
            elements, spatial = block.activation_elements(spatial)
            total += elements
        return total, spatial


def conv_stack(ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int], n: int) -> Chain:
    """`n` ConvNormAct blocks; only the first one strides (strided conv downsampling, no pooling)."""
    ones = (1,) * ndim
    return Chain(*[ConvNormAct(ndim, in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else ones) for i in range(n)])


class ResidualBlock(nn.Module):
    """Basic residual block: conv-norm-act-conv-norm, plus a skip, then act.

    The skip is the identity when shapes match, else a strided 1x1 conv + norm.
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride, self.out_ch = tuple(kernel), tuple(stride), out_ch
        self.conv1 = ConvNormAct(ndim, in_ch, out_ch, kernel, stride)
        self.conv2 = make_conv(ndim, out_ch, out_ch, kernel, (1,) * ndim)
        self.norm2 = make_norm(ndim, out_ch)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        needs_projection = in_ch != out_ch or any(s != 1 for s in stride)
        self.skip = (
            nn.Sequential(make_conv(ndim, in_ch, out_ch, (1,) * ndim, stride), make_norm(ndim, out_ch))
            if needs_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = normalize_(self.norm2, self.conv2(self.conv1(x)))
        return self.act(residual + self._skip(x))

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.skip, nn.Identity):
            return x
        projection, norm = self.skip
        return normalize_(norm, projection(x))

    def activation_elements(self, input_spatial: Spatial) -> tuple[int, Spatial]:
        first, out = self.conv1.activation_elements(input_spatial)
        # conv2 output (kept by norm2) + the sum, activated in place; norm2's output and the skip
        # norm's output are consumed by the addition and freed, so they are not counted.
        kept = first + 2 * numel(self.out_ch, out)
        if not isinstance(self.skip, nn.Identity):
            kept += numel(self.out_ch, out)  # projection conv output, kept by its norm
        return kept, out


def residual_stack(ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int], n: int) -> Chain:
    """`n` residual blocks; only the first one strides."""
    ones = (1,) * ndim
    return Chain(*[ResidualBlock(ndim, in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else ones) for i in range(n)])


class UpStage(nn.Module):
    """Decoder stage: transposed conv (kernel = stride) up to the skip's size, concat the skip, conv stack."""

    def __init__(self, ndim: int, below_ch: int, skip_ch: int, kernel: Sequence[int], up_stride: Sequence[int], n_convs: int):
        super().__init__()
        self.up_stride, self.skip_ch = tuple(up_stride), skip_ch
        self.up = transposed_conv_class(ndim)(below_ch, skip_ch, self.up_stride, self.up_stride)
        self.convs = conv_stack(ndim, 2 * skip_ch, skip_ch, kernel, (1,) * ndim, n_convs)

    def forward(self, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # oneDNN's transposed convolution is slow; the equivalent 1x1 conv + shuffle is not (upsample.py)
        up = upsample_by_stride(below, self.up) if below.device.type == "cpu" else self.up(below)
        return self.convs(torch.cat((up, skip), dim=1))

    def activation_elements(self, input_spatial: Spatial) -> tuple[int, Spatial]:
        up_spatial = tuple(n * s for n, s in zip(input_spatial, self.up_stride))
        # the transposed conv output is consumed by the concat (which keeps nothing); the concat
        # result is kept by the first conv.
        concat = numel(2 * self.skip_ch, up_spatial)
        convs, out = self.convs.activation_elements(up_spatial)
        return concat + convs, out


class SegmentationHead(nn.Module):
    """1x1 conv to class logits."""

    def __init__(self, ndim: int, in_ch: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.conv = conv_class(ndim)(in_ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def activation_elements(self, input_spatial: Spatial) -> tuple[int, Spatial]:
        # logits plus the softmax the loss keeps (Dice + cross-entropy)
        return 2 * numel(self.num_classes, input_spatial), tuple(input_spatial)


def init_weights(module: nn.Module) -> None:
    """Kaiming normal (LeakyReLU slope) for convolutions, zero biases; use with `Module.apply`."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        if module.weight.is_meta:  # shapes only (memory planning); normal_ on meta costs seconds the first time
            return
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
