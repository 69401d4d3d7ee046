"""Dice + cross-entropy, summed over deep-supervision scales with halving weights."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SumOverBatch = Callable[[Tensor], Tensor]  # sums the per-process Dice terms over the whole batch


def _this_process(sums: Tensor) -> Tensor:
    return sums


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5, over_batch: SumOverBatch = _this_process) -> Tensor:
    """1 - mean foreground soft Dice. logits (B, K, *S), target (B, 1, *S) integer labels.

    Sums run over batch and space together ("batch Dice"): small structures missing from one
    sample do not produce a noisy 0/0 term. `over_batch` adds the sums of the other ranks when the
    batch is split across processes, so the loss is that of the whole batch.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
    axes = [0] + list(range(2, logits.ndim))
    sums = over_batch(torch.stack([(probs * onehot).sum(axes), probs.sum(axes) + onehot.sum(axes)]))
    intersection, denominator = sums[0, 1:], sums[1, 1:]
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


def dice_ce_loss(logits: Tensor, target: Tensor, over_batch: SumOverBatch = _this_process) -> Tensor:
    ce = F.cross_entropy(logits.float(), target[:, 0].long())
    return ce + soft_dice_loss(logits, target, over_batch=over_batch)


def deep_supervision_weights(num_outputs: int, ratio: float = 0.5) -> list[float]:
    """1, ratio, ratio^2, ... normalized to sum 1: nnU-Net's 1, 1/2, 1/4, ... by default, equal
    weights at ratio 1 (the network has no head on its coarsest decoder stage)."""
    weights = [ratio**i for i in range(num_outputs)]
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    def __init__(self, over_batch: SumOverBatch = _this_process, ratio: float = 0.5):
        super().__init__()
        self.over_batch = over_batch
        self.ratio = ratio

    def forward(self, outputs: Tensor | list[Tensor], targets: list[Tensor]) -> Tensor:
        if isinstance(outputs, Tensor):
            return dice_ce_loss(outputs, targets[0], self.over_batch)
        weights = deep_supervision_weights(len(outputs), self.ratio)
        return sum(w * dice_ce_loss(o, t, self.over_batch) for w, o, t in zip(weights, outputs, targets))
