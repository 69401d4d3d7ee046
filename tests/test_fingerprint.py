"""Dataset fingerprint: per-case geometry and label facts, foreground intensity statistics,
channel-name -> modality mapping, and identical results whatever the number of workers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg import schema
from autoseg.config import Fingerprint, load_fingerprint
from autoseg.dataset import load_dataset
from autoseg.fingerprint import compute_fingerprint, modality_of
from autoseg.io import read_image, read_label, write_image

SHAPE = (4, 6, 5)
SPACING = (3.0, 0.8, 0.8)


def fingerprint_of(root: Path, workers: int = 1, progress=None) -> Fingerprint:
    return compute_fingerprint(load_dataset(root), workers=workers, progress=progress)


def zero_border(path: Path, keep: tuple[slice, ...]) -> None:
    """Set the image to 0 outside `keep`, so crop-to-nonzero has something to remove."""
    array, geometry = read_image(path)
    kept = np.zeros_like(array[0])
    kept[keep] = array[0][keep]
    write_image(path, kept, geometry)


def add_second_blob(path: Path, value: int, index: tuple[int, ...]) -> None:
    """Add one isolated voxel of `value`: a second connected component of that label."""
    label, geometry = read_label(path)
    label[index] = value
    write_image(path, label, geometry)


# ---------------------------------------------------------------- per case
def test_per_case_spacing_shape_and_cropped_shape(make_dataset):
    root = make_dataset(num_cases=3, shape=SHAPE, spacing_zyx=SPACING)
    zero_border(root / "imagesTr/case_001_0000.nii.gz", (slice(1, 3), slice(0, 6), slice(1, 4)))
    fp = fingerprint_of(root)
    assert fp.ndim == 3 and fp.dataset_name == "Dataset001_Tiny" and fp.file_ending == ".nii.gz"
    assert [c.case_id for c in fp.cases] == ["case_000", "case_001", "case_002"]
    for case in fp.cases:
        assert case.spacing == pytest.approx(SPACING)
        assert case.shape == SHAPE
    assert fp.cases[0].cropped_shape == SHAPE  # noise around 50 is never exactly 0
    assert fp.cases[1].cropped_shape == (2, 6, 3)


def test_2d_png_dataset_has_2d_fingerprint(make_dataset):
    root = make_dataset(shape=(12, 10), file_ending=".png", num_cases=2)
    fp = fingerprint_of(root)
    assert fp.ndim == 2
    assert [c.shape for c in fp.cases] == [(12, 10), (12, 10)]
    assert [c.spacing for c in fp.cases] == [(1.0, 1.0), (1.0, 1.0)]


def test_label_fractions_sum_to_one_and_match_the_label_files(make_dataset):
    root = make_dataset(num_cases=2, shape=SHAPE, num_labels=3)
    fp = fingerprint_of(root)
    # case_000: each foreground box is 3 (z) x 5 (y) x 1 (x) voxels out of 4*6*5 = 120.
    assert fp.cases[0].label_fractions == pytest.approx({"0": 90 / 120, "1": 15 / 120, "2": 15 / 120})
    for case in fp.cases:
        assert sum(case.label_fractions.values()) == pytest.approx(1.0)
        label, _ = read_label(root / "labelsTr" / f"{case.case_id}.nii.gz")
        for value, fraction in case.label_fractions.items():
            assert fraction == pytest.approx(np.mean(label == int(value)))


def test_component_counts_per_label(make_dataset):
    root = make_dataset(num_cases=2, shape=SHAPE, num_labels=3)
    add_second_blob(root / "labelsTr/case_001.nii.gz", value=2, index=(0, 0, 0))  # far from label 2's box
    fp = fingerprint_of(root)
    assert fp.cases[0].label_components == {"0": 0, "1": 1, "2": 1}  # background is not counted
    assert fp.cases[1].label_components == {"0": 0, "1": 1, "2": 2}


def test_label_centroids_are_fractions_of_the_extent_for_present_labels(make_dataset):
    root = make_dataset(num_cases=1, shape=SHAPE, num_labels=3)
    label, _ = read_label(root / "labelsTr/case_000.nii.gz")
    case = fingerprint_of(root).cases[0]
    assert set(case.label_centroids) == {"1", "2"}  # background has none
    for value, centroid in case.label_centroids.items():
        expected = [np.argwhere(label == int(value))[:, a].mean() / (n - 1) for a, n in enumerate(label.shape)]
        assert centroid == pytest.approx(expected, abs=1e-4)


def test_label_absent_from_a_case_has_zero_fraction_and_components(make_dataset):
    root = make_dataset(num_cases=1, shape=SHAPE, num_labels=3)
    label_path = root / "labelsTr/case_000.nii.gz"
    label, geometry = read_label(label_path)
    write_image(label_path, np.where(label == 2, 0, label).astype(np.uint8), geometry)
    case = fingerprint_of(root).cases[0]
    assert case.label_fractions["2"] == 0.0 and case.label_components["2"] == 0 and "2" not in case.label_centroids


# ---------------------------------------------------------------- intensities
def test_foreground_intensity_statistics_come_from_the_bright_foreground(make_dataset):
    # Background ~ N(50, 5); label 1 ~ N(90, 5); label 2 ~ N(130, 5) (see conftest._image_for).
    root = make_dataset(num_cases=3, shape=(6, 10, 8), num_labels=3)
    stats = fingerprint_of(root).channels[0].foreground
    assert 95 < stats.mean < 125  # between the two foreground labels, far above the background
    assert 15 < stats.std < 30  # dominated by the 40-unit gap between the labels
    assert 70 < stats.min < stats.percentile_00_5 < stats.median < stats.percentile_99_5 < stats.max < 160


def test_each_channel_gets_its_own_statistics(make_dataset):
    root = make_dataset(num_cases=2, num_channels=2, shape=(6, 10, 8))  # channel 1 is 10 brighter
    first, second = (c.foreground for c in fingerprint_of(root).channels)
    assert second.mean - first.mean == pytest.approx(10.0, abs=2.0)


def test_dataset_without_foreground_gets_neutral_statistics(make_dataset):
    root = make_dataset(num_cases=1, shape=SHAPE, num_labels=1)
    stats = fingerprint_of(root).channels[0].foreground
    assert (stats.mean, stats.std) == (0.0, 1.0)
    assert all(np.isfinite(v) for v in (stats.median, stats.min, stats.max))


# ---------------------------------------------------------------- modalities
@pytest.mark.parametrize(
    "channel_name, modality",
    [
        ("CT", "CT"), ("ct", "CT"), ("CT_arterial", "CT"),
        ("xray", "xray"), ("X-Ray", "xray"), ("radiograph", "xray"), ("DX", "xray"), ("CR", "xray"),
        ("MR", "MR"), ("MRI", "MR"), ("T1", "MR"), ("T2star", "MR"), ("FLAIR", "MR"), ("ADC", "MR"), ("DWI", "MR"),
        ("PET", "other"), ("chan0", "other"), ("ultrasound", "other"),
    ],
)
def test_modality_of_channel_name(channel_name, modality):
    assert modality_of(channel_name) == modality


def test_fingerprint_records_channel_names_and_modalities(make_dataset):
    names = {"0": "CT", "1": "T2", "2": "xray", "3": "PET"}
    root = make_dataset(num_cases=1, num_channels=4, shape=SHAPE, extra_json={"channel_names": names})
    channels = fingerprint_of(root).channels
    assert [(c.name, c.modality) for c in channels] == [("CT", "CT"), ("T2", "MR"), ("xray", "xray"), ("PET", "other")]


# ---------------------------------------------------------------- workers and progress
def test_one_or_two_workers_give_the_same_fingerprint(make_dataset):
    root = make_dataset(num_cases=5, shape=SHAPE)
    serial, parallel = fingerprint_of(root, workers=1), fingerprint_of(root, workers=2)
    assert parallel == serial
    assert schema.content_hash(parallel) == schema.content_hash(serial)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_is_called_once_per_case(make_dataset, workers):
    root = make_dataset(num_cases=3, shape=SHAPE, num_test=1)  # test cases are not fingerprinted
    calls: list[int] = []
    fingerprint_of(root, workers=workers, progress=calls.append)
    assert calls == [1, 1, 1]


def test_fingerprint_json_round_trip(make_dataset, tmp_path):
    fp = fingerprint_of(make_dataset(num_cases=2, shape=SHAPE))
    path = schema.write_json_atomic(tmp_path / "fingerprint.json", fp)
    assert load_fingerprint(path) == fp
