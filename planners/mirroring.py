"""Which axes may be mirrored (training augmentation and test-time averaging) without swapping labels.

Mirroring an axis along which two labels keep a fixed order (L1 above L5 on a spine X-ray, left
above right for left/right structures) shows the network images in which that order is reversed:
it must then learn the labels from context alone, which slows learning, and test-time mirroring
averages in predictions whose levels or sides are swapped. An axis is *ordered* when some pair of
labels that appear together in enough cases keeps the same order along it in nearly all of them,
by a visible margin. Ordered axes are not mirrored; the rest are, as in nnU-Net.
"""
from __future__ import annotations

from itertools import combinations

from autoseg.config import Fingerprint

MIN_CASES = 5  # cases in which both labels of a pair appear
CONSISTENCY = 0.95  # share of those cases with the same order
MIN_GAP = 0.02  # mean centroid separation, as a fraction of the image extent


def ordered_axes(fingerprint: Fingerprint) -> set[int]:
    """Image axes along which some pair of labels keeps a consistent order."""
    return {axis for axis in range(fingerprint.ndim) if _axis_is_ordered(fingerprint, axis)}


def mirror_axes_for(fingerprint: Fingerprint, patch_ndim: int) -> tuple[int, ...]:
    """Patch axes that may be mirrored; a 2d configuration of 3D data sees image axes 1 and 2."""
    offset = fingerprint.ndim - patch_ndim
    ordered = ordered_axes(fingerprint)
    return tuple(a for a in range(patch_ndim) if a + offset not in ordered)


def _axis_is_ordered(fingerprint: Fingerprint, axis: int) -> bool:
    labels = sorted({label for case in fingerprint.cases for label in case.label_centroids})
    return any(_pair_is_ordered(fingerprint, a, b, axis) for a, b in combinations(labels, 2))


def _pair_is_ordered(fingerprint: Fingerprint, a: str, b: str, axis: int) -> bool:
    gaps = [case.label_centroids[b][axis] - case.label_centroids[a][axis] for case in fingerprint.cases
            if a in case.label_centroids and b in case.label_centroids]
    if len(gaps) < MIN_CASES:
        return False
    positive = sum(g > 0 for g in gaps) / len(gaps)
    mean_gap = abs(sum(gaps)) / len(gaps)
    return max(positive, 1 - positive) >= CONSISTENCY and mean_gap >= MIN_GAP

