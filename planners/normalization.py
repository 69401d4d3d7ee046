"""Per-channel normalization decisions (the code that applies them is autoseg.normalization)."""
from __future__ import annotations

from autoseg.config import Fingerprint, NormalizationPlan


def plan_normalization(fingerprint: Fingerprint) -> tuple[NormalizationPlan, ...]:
    """CT: clip to the dataset's foreground 0.5/99.5 percentiles, then the global foreground
    mean/std (HU are comparable across scans). Everything else: per-image z-score, restricted to
    the nonzero mask when cropping removes more than 25% of the image (e.g. skull-stripped or
    masked scans, where the zero background would dominate the statistics)."""
    use_mask = fingerprint.crop_shrinks_images
    plans = []
    for channel in fingerprint.channels:
        if channel.modality == "CT":
            fg = channel.foreground
            plans.append(NormalizationPlan("ct", False, fg.percentile_00_5, fg.percentile_99_5, fg.mean, fg.std))
        else:
            plans.append(NormalizationPlan("zscore", use_mask))
    return tuple(plans)
