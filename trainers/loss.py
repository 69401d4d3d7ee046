"""Dice + cross-entropy, summed over deep-supervision scales with halving weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """1 - mean foreground soft Dice. logits (B, K, *S), target (B, 1, *S) integer labels.

    Sums run over batch and space together ("batch Dice"): small structures missing from one
    sample do not produce a noisy 0/0 term.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
    axes = [0] + list(range(2, logits.ndim))
    intersection = (probs * onehot).sum(axes)[1:]
    denominator = probs.sum(axes)[1:] + onehot.sum(axes)[1:]
    dice = (2 * intersection + smooth) / (denominator + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


def dice_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    ce = F.cross_entropy(logits.float(), target[:, 0].long())
    return ce + soft_dice_loss(logits, target)


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """1, 1/2, 1/4, ... normalized to sum 1 (the network has no head on its coarsest decoder stage)."""
    weights = [0.5**i for i in range(num_outputs)]
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    def forward(self, outputs: Tensor | list[Tensor], targets: list[Tensor]) -> Tensor:
        if isinstance(outputs, Tensor):
            return dice_ce_loss(outputs, targets[0])
        weights = deep_supervision_weights(len(outputs))
        return sum(w * dice_ce_loss(o, t) for w, o, t in zip(weights, outputs, targets))
