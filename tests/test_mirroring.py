"""Mirror axes from label order: axes along which labels keep their order are not mirrored."""
from __future__ import annotations

from dataclasses import replace

from autoseg.config import CaseFingerprint, ChannelFingerprint, Fingerprint, IntensityStats
from autoseg.planners import plan_dataset
from autoseg.planners.mirroring import MIN_CASES, mirror_axes_for, ordered_axes

STATS = IntensityStats(0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0)


def fingerprint(centroids: list[dict[str, tuple[float, ...]]], shape=(64, 48)) -> Fingerprint:
    cases = tuple(CaseFingerprint(f"c{i}", (1.0,) * len(shape), shape, shape, {"0": 0.8, "1": 0.1, "2": 0.1},
                                  {"0": 0, "1": 1, "2": 1}, c) for i, c in enumerate(centroids))
    return Fingerprint("Dataset997_Order", len(shape), ".nii.gz", {"background": 0, "upper": 1, "lower": 2},
                       (ChannelFingerprint("MR", "MR", STATS),), cases)


def spine_like(n: int = 10, flip_every: int = 0) -> Fingerprint:
    """Label 1 always above label 2 (axis 0); left-right position random (axis 1)."""
    rows = []
    for i in range(n):
        above = not (flip_every and i % flip_every == 0)
        y1, y2 = (0.3, 0.7) if above else (0.7, 0.3)
        rows.append({"1": (y1, 0.4 + 0.2 * (i % 2)), "2": (y2, 0.6 - 0.2 * (i % 2))})
    return fingerprint(rows)


def test_an_axis_along_which_labels_keep_their_order_is_not_mirrored():
    fp = spine_like()
    assert ordered_axes(fp) == {0}
    assert mirror_axes_for(fp, 2) == (1,)
    assert plan_dataset(fp).config("2d").mirror_axes == (1,)


def test_inconsistent_or_too_few_cases_leave_every_axis_mirrored():
    assert ordered_axes(spine_like(flip_every=3)) == set()  # order reversed in a third of the cases
    assert ordered_axes(spine_like(n=MIN_CASES - 1)) == set()
    same_place = fingerprint([{"1": (0.5, 0.5), "2": (0.505, 0.5)}] * 10)  # nested labels (cord WM/GM)
    assert ordered_axes(same_place) == set()


def test_a_fingerprint_without_centroids_keeps_nnunet_mirroring():
    fp = spine_like()
    bare = replace(fp, cases=tuple(replace(c, label_centroids={}) for c in fp.cases))
    assert plan_dataset(bare).config("2d").mirror_axes == (0, 1)


def test_a_2d_configuration_of_3d_data_maps_image_axes_to_patch_axes():
    rows = [{"1": (0.5, 0.5, 0.3), "2": (0.5, 0.5, 0.7)} for _ in range(10)]  # left/right along image axis 2
    fp = fingerprint(rows, shape=(20, 64, 64))
    assert mirror_axes_for(fp, 3) == (0, 1)
    assert mirror_axes_for(fp, 2) == (0,)  # patch axis 1 is image axis 2
