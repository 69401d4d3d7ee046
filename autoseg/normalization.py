"""Intensity normalization, one scheme per channel as the plan says.

A scheme resolves one channel of one case into a `ChannelNormalization` (clip bounds, mean, std,
mask use); `apply_normalization` then computes (clip(x) - mean) / std, with 0 outside the mask.
Schemes live in `SCHEMES` (name -> resolver), so adding one is writing one function and one dict
entry:

- "ct": clip to the dataset's foreground percentiles, then subtract the dataset mean and divide
  by the dataset std. CT numbers mean the same in every scan, so dataset-wide values are right.
  The mask is not used: air and tissue outside the body are meaningful in CT.
- "zscore": per image mean and std (MR, X-ray: intensities are relative to each scan). With
  `use_mask`, statistics come from the nonzero mask only and voxels outside it become 0, so the
  zero border from cropping stays one value instead of a large negative number.
- "none": pass through (already normalized inputs, e.g. probability maps).

Resolving and applying are apart so that a plan can defer normalization to the training loader
(`ConfigPlan.normalize_at == "loader"`): preprocessing records each case's resolved parameters,
and the loader applies them to a patch after augmentations that need raw intensities. Applying is
per voxel, so normalizing a patch equals cutting the patch out of the normalized case.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from autoseg.config import NormalizationPlan
from autoseg.errors import PlanError

_MIN_STD = 1e-8  # a constant channel would otherwise divide by zero


@dataclass(frozen=True)
class ChannelNormalization:
    """One channel's normalization resolved for one case, and the raw range it was resolved on
    (augmentations on raw intensities, such as a dose simulation, need the case's range)."""

    low: float | None  # clip bounds; None: no clipping
    high: float | None
    mean: float
    std: float  # already at least _MIN_STD
    masked: bool  # voxels outside the nonzero mask become 0
    minimum: float = 0.0
    maximum: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChannelNormalization":
        return cls(**data)

    @property
    def zero_value(self) -> float:
        """A raw value this normalization maps to exactly 0 (padding outside a case)."""
        return float(np.clip(self.mean, self.low, self.high)) if self.low is not None else self.mean


# A scheme maps (one channel (*spatial), its plan, the nonzero mask or None) -> its resolved normalization.
Scheme = Callable[[np.ndarray, NormalizationPlan, "np.ndarray | None"], ChannelNormalization]


def _ct(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> ChannelNormalization:
    return ChannelNormalization(plan.clip_low, plan.clip_high, plan.mean, max(plan.std, _MIN_STD), False)


def _zscore(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> ChannelNormalization:
    use_mask = bool(plan.use_mask and mask is not None and mask.any())
    values = channel[mask] if use_mask else channel
    # float64 sums: float32 loses digits on millions of voxels
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    return ChannelNormalization(None, None, mean, max(std, _MIN_STD), use_mask)


def _none(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> ChannelNormalization:
    return ChannelNormalization(None, None, 0.0, 1.0, False)


SCHEMES: dict[str, Scheme] = {"ct": _ct, "zscore": _zscore, "none": _none}


def _scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        close = difflib.get_close_matches(name, SCHEMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise PlanError(f"normalization scheme '{name}' is unknown.{hint} Known: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


def _check(image: np.ndarray, count: int, mask: np.ndarray | None) -> None:
    if count != image.shape[0]:
        raise PlanError(
            f"the plan normalizes {count} channel(s) but the image has {image.shape[0]}; "
            "check the dataset's channel_names or re-run `autoseg plan`"
        )
    if mask is not None and mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match image spatial shape {image.shape[1:]}")


def resolve_normalization(
    image: np.ndarray, plans: Sequence[NormalizationPlan], mask: np.ndarray | None = None
) -> list[ChannelNormalization]:
    """Each channel's normalization of `image` (C, *spatial) under its plan, with its raw range."""
    _check(image, len(plans), mask)
    resolved = []
    for c, plan in enumerate(plans):
        channel = image[c].astype(np.float32, copy=False)
        found = _scheme(plan.scheme)(channel, plan, mask)
        low, high = (float(channel.min()), float(channel.max())) if channel.size else (0.0, 0.0)
        resolved.append(ChannelNormalization(found.low, found.high, found.mean, found.std, found.masked, low, high))
    return resolved


def apply_normalization(
    image: np.ndarray, resolved: Sequence[ChannelNormalization], mask: np.ndarray | None = None
) -> np.ndarray:
    """(clip(x) - mean) / std per channel of `image` (C, *spatial), 0 outside `mask` for masked
    channels; returns a new float32 array."""
    _check(image, len(resolved), mask)
    out = np.empty(image.shape, dtype=np.float32)
    for c, n in enumerate(resolved):
        channel = image[c].astype(np.float32, copy=False)
        clipped = np.clip(channel, n.low, n.high) if n.low is not None else channel
        out[c] = (clipped - n.mean) / n.std
        if n.masked and mask is not None:
            out[c][~mask] = 0
    return out


def normalize(
    image: np.ndarray, plans: Sequence[NormalizationPlan], mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalize each channel of `image` (C, *spatial) with its plan; returns a new float32 array.

    `mask` (*spatial, bool) is the nonzero mask used by schemes whose plan has `use_mask`.
    """
    return apply_normalization(image, resolve_normalization(image, plans, mask), mask)
