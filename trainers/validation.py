"""Per-epoch validation on patches: a cheap, noisy Dice that tracks progress (smoothed by an EMA)."""
from __future__ import annotations

import numpy as np
import torch

from autoseg.trainers.distributed import Single
from autoseg.trainers.precision import Precision


def confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = reference, columns = prediction."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def dice_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Foreground Dice per class; NaN for a class absent from both reference and prediction."""
    tp = np.diag(confusion).astype(float)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denominator > 0, 2 * tp / denominator, np.nan)
    return dice[1:]


@torch.inference_mode()
def pseudo_dice(model, loader, iterations: int, loss_fn, precision: Precision, num_classes: int,
                ranks: Single | None = None) -> tuple[float, np.ndarray]:
    """Mean loss and per-class Dice over `iterations` validation batches (full-resolution output);
    with several ranks, each validates its own batches and the counts are summed over all."""
    ranks = ranks or Single()
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    losses = []
    for _ in range(iterations):
        batch = next(loader)
        data = batch["data"].to(precision.device)
        targets = [t.to(precision.device) for t in batch["target"]]
        with precision.autocast():
            outputs = model(data)
            losses.append(float(loss_fn(outputs, targets)))
        logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        confusion += confusion_counts(logits.argmax(1).cpu(), targets[0][:, 0].cpu(), num_classes)
    model.train()
    return ranks.mean(float(np.mean(losses))), dice_from_confusion(ranks.sum(confusion).numpy())
