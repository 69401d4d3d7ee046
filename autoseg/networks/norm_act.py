"""Instance norm + leaky ReLU as one autograd step that keeps a single tensor for backward.

The textbook chain conv -> InstanceNorm -> LeakyReLU(inplace) keeps two full-size tensors per
block: the conv output (the norm's backward needs its input) and the activated output. Both
steps are invertible, so the output alone suffices: the pre-activation is the output with the
negative side divided by the slope, and the normalized value is that minus the bias, divided by
the weight. This function therefore normalizes and activates the conv output in place and keeps
only the result (which the next convolution keeps anyway), halving the activation memory of a
plain U-Net in training. Gradients are computed in float32 whatever the input dtype. A norm
weight near zero is clamped away from it in backward (|w| >= WEIGHT_FLOOR), which only matters
for channels the network has all but switched off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHT_FLOOR = 1e-4


class _InstanceNormLeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float, slope: float) -> Tensor:
        n, c = x.shape[:2]
        # Instance norm is batch norm over a (1, N*C, ...) view. The native kernel writes over its
        # input here (the conv output is not needed for backward) and returns the statistics.
        flat = x.view(1, n * c, *x.shape[2:])
        stats = torch.empty(2, n * c, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        torch.ops.aten.native_batch_norm.out(flat, weight.repeat(n), bias.repeat(n), None, None, True, 0.0, eps,
                                             out=flat, save_mean=stats[0], save_invstd=stats[1])
        y = F.leaky_relu_(x, slope)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y, weight, bias, stats[1].view(n, c))
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        y, weight, bias, invstd = ctx.saved_tensors
        slope, ndim = ctx.slope, y.ndim
        n, c = y.shape[:2]
        count = y[0, 0].numel()
        y_, grad_ = _wide(y), _wide(grad_out)
        dz = torch.ops.aten.leaky_relu_backward(grad_, y_, slope, True)  # d loss / d pre-activation z
        z = F.leaky_relu(y_, 1.0 / slope)  # z = w * x_hat + b
        sum_dz = dz.sum(dim=tuple(range(2, ndim)))  # (N, C)
        sum_dz_z = torch.bmm(dz.reshape(n * c, 1, count), z.reshape(n * c, count, 1)).view(n, c)
        inv, b = invstd.to(z.dtype), bias.to(z.dtype)
        w = weight.to(z.dtype)
        w_safe = torch.where(w.abs() < WEIGHT_FLOOR, torch.full_like(w, WEIGHT_FLOOR).copysign(w), w)
        sum_dz_u = sum_dz_z - b * sum_dz  # sum(dz * (z - b)) = w * sum(dz * x_hat)
        grad_weight = (sum_dz_u / w_safe).sum(0)
        grad_bias = sum_dz.sum(0)
        # dx = inv * (w * (dz - mean dz) - x_hat * mean(dz * u)) with x_hat = (z - b) / w, i.e.
        # dx = z * zc + dz * dc + const per (sample, channel)
        zc = -inv * sum_dz_u / (count * w_safe)
        dc = inv * w
        const = -dc * sum_dz / count - zc * b
        grad_x = torch.addcmul(_spatial(const, ndim), z, _spatial(zc, ndim), out=z).addcmul_(dz, _spatial(dc, ndim))
        return grad_x.to(grad_out.dtype), grad_weight.to(weight.dtype), grad_bias.to(bias.dtype), None, None


def _wide(t: Tensor) -> Tensor:
    """float32, or float64 when given it (gradient checks)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _spatial(per_sample_channel: Tensor, ndim: int) -> Tensor:
    return per_sample_channel.view(*per_sample_channel.shape, *([1] * (ndim - 2)))


def instance_norm_leaky_relu(x: Tensor, weight: Tensor, bias: Tensor, eps: float, slope: float) -> Tensor:
    """leaky_relu(instance_norm(x) * weight + bias); `x` (a fresh conv output) is overwritten."""
    return _InstanceNormLeakyReLU.apply(x, weight, bias, eps, slope)
