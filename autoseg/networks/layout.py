"""Channels-last memory layout, which CPU inference uses.

oneDNN computes convolutions in a channels-innermost layout. Fed PyTorch's default NC(D)HW
tensors, it reorders every convolution's input into that layout and the output back, which
took 15% of a 3D U-Net forward here; with channels-last tensors (N(D)HWC in memory, same logical
shape) no reorder is needed. The rest of the network must then keep the layout too
(inplace_norm.py, upsample.py), or PyTorch copies back and forth around each such step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by tensor ndim (batch + channel + spatial)


def runs_channels_last(device: torch.device) -> bool:
    """Whether inference on `device` uses channels-last tensors and weights (CPU: oneDNN)."""
    return device.type == "cpu"


def is_channels_last(x: Tensor) -> bool:
    """True for a 2D/3D batch laid out channels-last (and not trivially both layouts, as with one channel)."""
    layout = _CHANNELS_LAST.get(x.ndim)
    return layout is not None and x.is_contiguous(memory_format=layout) and not x.is_contiguous()


def to_channels_last(x: Tensor) -> Tensor:
    """`x` in channels-last layout (itself when already so, or not a 2D/3D batch)."""
    layout = _CHANNELS_LAST.get(x.ndim)
    return x.contiguous(memory_format=layout) if layout is not None else x


def model_to_channels_last(model: nn.Module, spatial_ndim: int) -> nn.Module:
    """Convolution weights in channels-last layout (in place). Needed, not just tidy: with a
    one-channel input both layouts coincide and PyTorch picks the layout from the weights."""
    return model.to(memory_format=_CHANNELS_LAST[spatial_ndim + 2])
