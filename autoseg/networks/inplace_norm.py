"""Instance norm computed in place, for CPU inference.

PyTorch's instance norm runs batch norm over a (1, N*C, ...) view of its input. That view exists
only for the default (NCDHW) layout: a channels-last tensor is copied to NCDHW, normalized and
copied back, which on a 3D U-Net costs more than the convolutions gain from channels-last
(measured: 10 s instead of 6 s for one 144x160x160 forward). Normalizing one sample at a time
needs no view at all, since batch norm over a single sample with batch statistics is instance
norm, and its native kernel handles either layout. Writing over the input (a fresh convolution
output that nothing else holds) also saves one activation-sized allocation per block.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _computes_in_place(x: Tensor) -> bool:
    """True where `normalize_` computes in place: CPU tensors outside autograd and tracing (export)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()


def normalize_(norm: nn.Module, x: Tensor) -> Tensor:
    """`norm(x)` for an affine instance norm module; in place on CPU inference (`x` must be a fresh tensor)."""
    if not _computes_in_place(x):
        return norm(x)
    stats = torch.empty(2, x.shape[1], dtype=torch.float32)
    for sample in x.split(1):  # (1, C, ...) views that keep the layout
        torch.ops.aten.native_batch_norm.out(sample, norm.weight, norm.bias, None, None, True, 0.0, norm.eps,
                                             out=sample, save_mean=stats[0], save_invstd=stats[1])
    return x
