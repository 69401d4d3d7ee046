"""Cropping, normalization, resampling and the preprocessed case format (tiny arrays, fast)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from autoseg import preprocessing, schema
from autoseg.config import ConfigPlan, NetworkPlan, NormalizationPlan, Plan, ResamplingPlan
from autoseg.cropping import crop, nonzero_bbox, nonzero_mask, uncrop
from autoseg.dataset import load_dataset
from autoseg.errors import PlanError, PreprocessingError
from autoseg.io import Geometry
from autoseg.normalization import normalize
from autoseg.preprocessing import (
    MANIFEST, class_locations, load_case, load_class_locations, preprocess_case, preprocess_dataset,
    read_manifest, restore_original, write_case,
)
from autoseg.resampling import output_shape, resample_image, resample_label, resample_probabilities

ZSCORE_MASKED = (NormalizationPlan("zscore", use_mask=True),)


def make_config(spacing=(1.0, 1.0, 1.0), ndim=3, resampling=ResamplingPlan(), normalization=ZSCORE_MASKED,
                name="3d_fullres") -> ConfigPlan:
    network = NetworkPlan("unet", ndim, len(normalization), 3, (4, 8), ((3,) * ndim,) * 2, ((1,) * ndim, (2,) * ndim))
    return ConfigPlan(name, tuple(spacing), (8,) * ndim, (8,) * ndim, 2, network, normalization, resampling,
                      tuple(range(ndim)))


def make_plan(*configs: ConfigPlan) -> Plan:
    return Plan("Dataset001_Tiny", "default", 8.0, {"background": 0, "label1": 1, "label2": 2}, ("chan0",),
                ".nii.gz", 3, "fingerprint-hash", {c.name: c for c in configs})


def phantom(shape=(10, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A body (ellipsoid of tissue) inside a zero border, with two 'bones' labelled 1 and 2."""
    z, y, x = np.indices(shape)
    body = ((y - 12) / 9) ** 2 + ((x - 10) / 8) ** 2 < 1
    body[:1] = body[-1:] = False  # zero slices at both ends so cropping has work to do
    label = np.zeros(shape, np.int16)
    label[body & ((y - 9) ** 2 + (x - 8) ** 2 < 6)] = 1
    label[body & ((y - 15) ** 2 + (x - 12) ** 2 < 5)] = 2
    rng = np.random.default_rng(0)
    image = np.where(body, 100 + 300 * (label > 0) + rng.normal(0, 5, shape), 0).astype(np.float32)
    return image[None], label


# ---------------------------------------------------------------- cropping
def test_crop_uncrop_round_trip_restores_image_and_fills_outside():
    image = np.zeros((2, 6, 7, 8), np.float32)
    image[0, 1:4, 2:5, 3:7] = 1
    image[1, 2, 6, 1] = 5  # second channel widens the box
    bbox = nonzero_bbox(image)
    assert bbox == [(1, 4), (2, 7), (1, 7)]
    cropped = crop(image, bbox)
    assert cropped.shape == (2, 3, 5, 6)
    assert np.array_equal(uncrop(cropped, bbox, image.shape[1:]), image)
    probs = uncrop(np.full((3, 3, 5, 6), 0.5, np.float32), bbox, image.shape[1:], fill=[1, 0, 0])
    assert probs[0, 0, 0, 0] == 1 and probs[1, 0, 0, 0] == 0 and probs[2, 2, 3, 3] == 0.5
    assert nonzero_mask(image).sum() == 3 * 3 * 4 + 1


def test_all_zero_image_keeps_whole_image():
    assert nonzero_bbox(np.zeros((1, 3, 4))) == [(0, 3), (0, 4)]


# ---------------------------------------------------------------- normalization
def test_ct_normalization_clips_then_uses_dataset_values():
    image = np.array([[-2000.0, 0.0, 100.0, 5000.0]], np.float32)
    plan = NormalizationPlan("ct", clip_low=-1000, clip_high=1000, mean=100, std=50)
    assert np.allclose(normalize(image, [plan]), [[-22.0, -2.0, 0.0, 18.0]])


def test_zscore_with_mask_uses_mask_statistics_and_zeroes_outside():
    rng = np.random.default_rng(1)
    image = np.zeros((1, 20, 20), np.float32)
    image[0, 5:15, 5:15] = rng.normal(300, 40, (10, 10))
    mask = nonzero_mask(image)
    out = normalize(image, ZSCORE_MASKED, mask)
    assert out.dtype == np.float32
    assert abs(out[0][mask].mean()) < 1e-5 and abs(out[0][mask].std() - 1) < 1e-4
    assert np.all(out[0][~mask] == 0)
    unmasked = normalize(image, [NormalizationPlan("zscore")], mask)
    assert abs(unmasked.mean()) < 1e-5 and unmasked[0, 0, 0] < 0  # whole-image statistics


def test_normalization_rejects_plan_channel_mismatch_and_unknown_scheme():
    with pytest.raises(PlanError, match="2 channel"):
        normalize(np.zeros((1, 4, 4), np.float32), ZSCORE_MASKED * 2)
    with pytest.raises(PlanError, match="Did you mean 'zscore'"):
        normalize(np.zeros((1, 4, 4), np.float32), [NormalizationPlan("zscor")])


# ---------------------------------------------------------------- resampling
def test_image_resampling_shape_matches_cubic_zoom_and_stays_in_range():
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(rng.normal(size=(1, 9, 14, 11)), 1).astype(np.float32)
    out = resample_image(image, (2.0, 1.0, 1.0), (1.5, 0.7, 1.3), ResamplingPlan())
    assert out.shape == (1, 12, 20, 8) == (1, *output_shape((9, 14, 11), (2.0, 1.0, 1.0), (1.5, 0.7, 1.3)))
    zoom = [n / m for n, m in zip(out.shape[1:], image.shape[1:])]
    reference = ndimage.zoom(image[0], zoom, order=3, mode="nearest", grid_mode=True)
    assert np.allclose(out[0], np.clip(reference, image.min(), image.max()), atol=1e-4)
    assert image.min() <= out.min() and out.max() <= image.max()


def test_same_spacing_returns_input_unchanged():
    image, label = phantom()
    assert resample_image(image, (1, 1, 1), (1, 1, 1), ResamplingPlan()) is image
    assert resample_label(label, (1, 1, 1), (1, 1, 1), ResamplingPlan()) is label


def test_label_resampling_matches_full_one_hot_argmax_and_adds_no_values():
    _, label = phantom()
    label[label == 2] = 7  # values need not be consecutive
    for spacing_to in [(0.6, 0.45, 0.8), (2.0, 1.7, 1.3)]:
        out = resample_label(label, (1, 1, 1), spacing_to, ResamplingPlan())
        zoom = [n / m for n, m in zip(out.shape, label.shape)]
        values = np.unique(label)
        scores = [ndimage.zoom((label == v).astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True) for v in values]
        assert np.array_equal(out, values[np.argmax(scores, axis=0)])  # argmax: ties to the lower value
        assert out.dtype == label.dtype and set(np.unique(out)) <= set(values)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.lists(st.floats(0.3, 3.0), min_size=2, max_size=3))
def test_label_resampling_property_nearest_matches_zoom_and_values_stay(seed, spacing_to):
    rng = np.random.default_rng(seed)
    label = rng.choice(np.array([0, 0, 0, 1, 3, 9], np.int16), size=tuple(rng.integers(1, 7, len(spacing_to))))
    spacing_from = (1.0,) * len(spacing_to)
    for order in (0, 1):
        out = resample_label(label, spacing_from, spacing_to, ResamplingPlan(label_order=order))
        assert out.shape == output_shape(label.shape, spacing_from, spacing_to)
        assert set(np.unique(out)) <= set(np.unique(label))
    zoom = [n / m for n, m in zip(out.shape, label.shape)]
    nearest = resample_label(label, spacing_from, spacing_to, ResamplingPlan(label_order=0))
    assert np.array_equal(nearest, ndimage.zoom(label, zoom, order=0, mode="nearest", grid_mode=True))


def test_label_between_samples_may_vanish_when_downsampling():
    label = np.zeros((9, 9), np.int16)
    label[0, 0], label[4, 4] = 1, 2  # nearest sampling at factor 3 reads rows/columns 1, 4, 7 only
    out = resample_label(label, (1, 1), (3, 3), ResamplingPlan(label_order=0))
    assert out.tolist() == [[0, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_label_ties_go_to_the_lower_value():
    label = np.array([[2, 5], [5, 2], [0, 3]], np.int16)  # each row merges two values into one voxel
    assert resample_label(label, (1, 1), (1, 2), ResamplingPlan()).tolist() == [[2], [2], [0]]


def test_anisotropic_path_uses_nearest_across_slices():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    separate = ResamplingPlan(separate_out_of_plane=True, out_of_plane_order=0, out_of_plane_axis=0)
    out = resample_image(image, (4.0, 1.0, 1.0), (2.0, 0.5, 0.5), separate)
    assert out.shape == (1, 8, 16, 16)
    in_plane = resample_image(image, (4.0, 1.0, 1.0), (4.0, 0.5, 0.5), ResamplingPlan())
    assert np.allclose(out[0], np.repeat(in_plane[0], 2, axis=0), atol=1e-6)  # slices copied, never blended
    joint = resample_image(image, (4.0, 1.0, 1.0), (2.0, 0.5, 0.5), ResamplingPlan())
    assert not np.allclose(joint[0, 0], joint[0, 1])  # cubic across slices blends them
    label = (image[0] > 0).astype(np.int16)
    seg = resample_label(label, (4.0, 1.0, 1.0), (2.0, 0.5, 0.5), separate)
    assert np.array_equal(seg[0::2], seg[1::2])
    with pytest.raises(PlanError, match="out_of_plane_axis"):
        resample_image(image[:, 0], (1.0, 1.0), (2.0, 2.0), ResamplingPlan(separate_out_of_plane=True, out_of_plane_axis=2))


def test_probabilities_stay_a_distribution():
    rng = np.random.default_rng(4)
    probs = rng.random((3, 5, 6, 7)).astype(np.float32)
    probs /= probs.sum(axis=0)
    out = resample_probabilities(probs, (1, 1, 1), (0.5, 0.6, 1.5), ResamplingPlan(), out_shape=(10, 9, 5))
    assert out.shape == (3, 10, 9, 5) and out.dtype == np.float32
    assert np.allclose(out.sum(axis=0), 1, atol=1e-5) and out.min() >= 0


# ---------------------------------------------------------------- one case
def test_preprocess_case_then_restore_original_recovers_the_grid():
    image, label = phantom()
    geometry = Geometry.default(3, (2.5, 0.8, 0.8))
    config = make_config(spacing=(1.25, 1.0, 1.0))
    data, seg, props = preprocess_case(image, geometry, label, config, "c1")
    assert props["crop_bbox"][0] == [1, 9] and props["cropped_shape"][0] == 8
    assert data.shape == (1, 16, 14, 12) and data.dtype == np.float32 and seg.dtype == np.int8
    assert seg.shape == (1, *data.shape[1:]) and set(np.unique(seg)) == {0, 1, 2}
    assert props["spacing_before"] == [2.5, 0.8, 0.8] and props["spacing_after"] == [1.25, 1.0, 1.0]
    json.dumps(props)  # the properties must be JSON-able as returned
    one_hot = np.stack([(seg[0] == k) for k in range(3)]).astype(np.float32)
    restored = restore_original(one_hot, props, config)
    assert restored.shape == (3, *label.shape) and restored.dtype == np.float32
    assert np.all(restored[0, 0] == 1) and np.all(restored[1:, 0] == 0)  # outside the crop: background
    recovered = restored.argmax(axis=0)
    for k in (1, 2):
        dice = 2 * np.sum((recovered == k) & (label == k)) / (np.sum(recovered == k) + np.sum(label == k))
        assert dice > 0.7


def test_2d_config_of_3d_data_resamples_in_plane_only():
    image, label = phantom()
    config = make_config(spacing=(0.4, 0.4), ndim=2, name="2d")
    data, seg, props = preprocess_case(image, Geometry.default(3, (2.5, 0.8, 0.8)), label, config, "c1")
    assert data.shape == (1, 8, 34, 30) and seg.shape == (1, 8, 34, 30)
    assert props["spacing_after"] == [2.5, 0.4, 0.4]


def test_class_locations_are_deterministic_bounded_and_correct():
    seg = np.zeros((1, 30, 40), np.int8)
    seg[0, :, :20] = 1
    seg[0, 3, 5] = 4
    first = class_locations(seg, "case_a", max_per_class=50)
    assert sorted(first) == ["1", "4"] and first["1"].shape == (50, 2) and first["1"].dtype == np.int32
    assert np.all(seg[0][tuple(first["1"].T)] == 1) and first["4"].tolist() == [[3, 5]]
    assert np.array_equal(first["1"], class_locations(seg, "case_a", max_per_class=50)["1"])
    assert not np.array_equal(first["1"], class_locations(seg, "case_b", max_per_class=50)["1"])


# ---------------------------------------------------------------- dataset on disk
def test_preprocess_dataset_writes_format_skips_and_reruns(make_dataset, tmp_path):
    dataset = load_dataset(make_dataset(shape=(4, 6, 5)))
    config = make_config(spacing=(1.5, 0.8, 0.8))
    folder = tmp_path / "pre" / "3d_fullres"
    ticks = []
    assert preprocess_dataset(dataset, make_plan(config), "3d_fullres", folder, workers=1, progress=ticks.append) == folder
    assert sum(ticks) == 3
    manifest = read_manifest(folder)
    assert manifest["cases"] == ["case_000", "case_001", "case_002"] and manifest["plan_hash"] == schema.content_hash(config)
    data, seg, props = load_case(folder, "case_001")
    assert isinstance(data, np.memmap) and data.shape == (1, 8, 6, 5) and seg.shape == (1, 8, 6, 5)
    assert props["class_locations_file"] == "case_001_locations.npz"
    locations = load_class_locations(folder, "case_001")
    assert sorted(locations) == [1, 2] and np.all(seg[0][tuple(locations[2].T)] == 2)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    preprocess_dataset(dataset, make_plan(config), "3d_fullres", folder, workers=1)  # up to date: skipped
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    (folder / "case_002.npy").unlink()  # only the missing case is redone
    preprocess_dataset(dataset, make_plan(config), "3d_fullres", folder, workers=1)
    assert (folder / "case_002.npy").is_file()
    assert (folder / "case_000.npy").stat().st_mtime_ns == mtimes["case_000.npy"]

    changed = make_config(spacing=(3.0, 0.8, 0.8))  # new plan hash: everything again, in 2 processes
    preprocess_dataset(dataset, make_plan(changed), "3d_fullres", folder, workers=2)
    assert load_case(folder, "case_000")[0].shape == (1, 4, 6, 5)
    assert read_manifest(folder)["plan_hash"] == schema.content_hash(changed)


def test_interrupted_run_is_not_complete_and_resumes_safely(make_dataset, tmp_path, monkeypatch):
    dataset = load_dataset(make_dataset(shape=(3, 4, 4), num_cases=2))
    folder = tmp_path / "pre"
    preprocess_dataset(dataset, make_plan(make_config()), "3d_fullres", folder, workers=1)
    finer = make_config(spacing=(1.5, 0.8, 0.8))
    calls = []

    def dies_on_second_case(case, config, out):
        if calls:
            raise KeyboardInterrupt
        calls.append(case.case_id)
        return original(case, config, out)

    original = preprocessing._process_case
    monkeypatch.setattr(preprocessing, "_process_case", dies_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(dataset, make_plan(finer), "3d_fullres", folder, workers=1)
    with pytest.raises(PreprocessingError, match="never finished"):
        read_manifest(folder)
    monkeypatch.setattr(preprocessing, "_process_case", original)
    preprocess_dataset(dataset, make_plan(finer), "3d_fullres", folder, workers=1)
    assert [load_case(folder, c)[0].shape for c in ("case_000", "case_001")] == [(1, 6, 4, 4)] * 2


@pytest.fixture
def written_case(tmp_path) -> Path:
    image, label = phantom((6, 10, 10))
    write_case(tmp_path, *preprocess_case(image, Geometry.default(3), label, make_config(), "c1"))
    return tmp_path


def test_truncated_npy_names_the_file_and_the_fix(written_case):
    path = written_case / "c1.npy"
    path.write_bytes(path.read_bytes()[:200])
    for mmap in (True, False):
        with pytest.raises(PreprocessingError, match=r"c1\.npy.*truncated or corrupt.*--force"):
            load_case(written_case, "c1", mmap=mmap)


def test_seg_shape_mismatch_and_missing_file_are_reported(written_case):
    np.save(written_case / "c1_seg.npy", np.zeros((1, 2, 2, 2), np.int8))
    with pytest.raises(PreprocessingError, match=r"c1_seg\.npy: shape"):
        load_case(written_case, "c1")
    os.remove(written_case / "c1.json")
    with pytest.raises(PreprocessingError, match=r"c1\.json: file not found.*--force"):
        load_case(written_case, "c1")
