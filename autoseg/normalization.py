"""Intensity normalization, one scheme per channel as the plan says.

Schemes live in `SCHEMES` (name -> function), so adding one is writing one function and one
dict entry:

- "ct": clip to the dataset's foreground percentiles, then subtract the dataset mean and divide
  by the dataset std. CT numbers mean the same in every scan, so dataset-wide values are right.
  The mask is not used: air and tissue outside the body are meaningful in CT.
- "zscore": per image mean and std (MR, X-ray: intensities are relative to each scan). With
  `use_mask`, statistics come from the nonzero mask only and voxels outside it become 0, so the
  zero border from cropping stays one value instead of a large negative number.
- "none": pass through (already normalized inputs, e.g. probability maps).
"""
from __future__ import annotations

import difflib
from typing import Callable, Sequence

import numpy as np

from autoseg.config import NormalizationPlan
from autoseg.errors import PlanError

# A scheme maps (one channel (*spatial), its plan, the nonzero mask or None) -> normalized channel.
Scheme = Callable[[np.ndarray, NormalizationPlan, "np.ndarray | None"], np.ndarray]
_MIN_STD = 1e-8  # a constant channel would otherwise divide by zero


def _ct(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    clipped = np.clip(channel, plan.clip_low, plan.clip_high)
    return (clipped - plan.mean) / max(plan.std, _MIN_STD)


def _zscore(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    use_mask = plan.use_mask and mask is not None and mask.any()
    values = channel[mask] if use_mask else channel
    # float64 sums: float32 loses digits on millions of voxels
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    out = (channel - mean) / max(std, _MIN_STD)
    if use_mask:
        out[~mask] = 0
    return out


def _none(channel: np.ndarray, plan: NormalizationPlan, mask: np.ndarray | None) -> np.ndarray:
    return channel


SCHEMES: dict[str, Scheme] = {"ct": _ct, "zscore": _zscore, "none": _none}


def _scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        close = difflib.get_close_matches(name, SCHEMES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise PlanError(f"normalization scheme '{name}' is unknown.{hint} Known: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[name]


def normalize(
    image: np.ndarray, plans: Sequence[NormalizationPlan], mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalize each channel of `image` (C, *spatial) with its plan; returns a new float32 array.

    `mask` (*spatial, bool) is the nonzero mask used by schemes whose plan has `use_mask`.
    """
    if len(plans) != image.shape[0]:
        raise PlanError(
            f"the plan normalizes {len(plans)} channel(s) but the image has {image.shape[0]}; "
            "check the dataset's channel_names or re-run `autoseg plan`"
        )
    if mask is not None and mask.shape != image.shape[1:]:
        raise ValueError(f"mask shape {mask.shape} does not match image spatial shape {image.shape[1:]}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, plan in enumerate(plans):
        out[c] = _scheme(plan.scheme)(image[c].astype(np.float32, copy=False), plan, mask)
    return out
