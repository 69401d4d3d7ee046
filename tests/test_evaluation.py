"""Metrics against hand-counted values, empty-set rules, folder evaluation and overlay PNGs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from autoseg import io
from autoseg.errors import DatasetError
from autoseg.evaluation import case_metrics, class_metrics, evaluate_folders, surface_distances, surface_voxels
from autoseg.overlay import PALETTE, busiest_slice, render_overlay, write_overlay_png


# ---------------------------------------------------------------- metrics
def test_overlap_metrics_match_hand_counts_2d():
    ref = np.zeros((8, 8), np.uint8)
    ref[0:4, 0:4] = 1  # 16 pixels
    pred = np.zeros_like(ref)
    pred[0:2, 0:4] = 1  # 8 pixels, all inside ref: tp 8, fp 0, fn 8
    m = case_metrics(pred, ref, (1.0, 1.0), [1])[1]
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert (m["n_ref"], m["n_pred"], m["reference_empty"]) == (16, 8, False)


def test_overlap_metrics_per_label_3d():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[0:2] = 1  # 32 voxels of label 1
    ref[2:4, 0:2] = 2  # 16 voxels of label 2
    pred = ref.copy()
    pred[0, 0] = 2  # 4 voxels of label 1 predicted as 2
    m = case_metrics(pred, ref, (1.0, 1.0, 1.0), [1, 2])
    assert m[1]["dice"] == pytest.approx(2 * 28 / (28 + 32))
    assert m[1]["precision"] == pytest.approx(1.0) and m[1]["recall"] == pytest.approx(28 / 32)
    assert m[2]["iou"] == pytest.approx(16 / 20)
    assert m[2]["precision"] == pytest.approx(16 / 20) and m[2]["recall"] == pytest.approx(1.0)


def test_distances_of_parallel_sheets_one_voxel_apart_along_spacing_two():
    ref = np.zeros((6, 8, 8), bool)
    pred = np.zeros_like(ref)
    ref[2, 2:6, 2:6] = True
    pred[3, 2:6, 2:6] = True  # shifted one voxel along axis 0, whose spacing is 2.0
    m = class_metrics(pred, ref, (2.0, 1.0, 1.0))
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx(2.0)
    assert m["dice"] == 0.0


def test_distances_of_overlapping_squares_with_anisotropic_spacing():
    # 4x4 squares shifted by one pixel along x (spacing 2.0). Each ring of 12 surface pixels has
    # 6 pixels on the other ring (0), 2 at one y-step (1.0) and 4 at one x-step (2.0).
    ref = np.zeros((10, 10), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6] = True
    pred[2:6, 3:7] = True
    m = class_metrics(pred, ref, (1.0, 2.0))
    assert m["hd95"] == pytest.approx(2.0)
    assert m["assd"] == pytest.approx((2 * 1.0 + 4 * 2.0) / 12)
    assert m["dice"] == pytest.approx(2 * 12 / 32)


@pytest.mark.parametrize("seed", range(4))
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = (2.5, 0.7, 1.3)
    ref = np.zeros((9, 12, 12), bool)
    pred = np.zeros_like(ref)
    ref[rng.integers(0, 4):rng.integers(5, 9), 2:rng.integers(6, 12), rng.integers(0, 6):11] = True
    pred[rng.integers(0, 4):rng.integers(5, 9), rng.integers(0, 5):10, 1:rng.integers(4, 12)] = True
    to_ref, to_pred = surface_distances(pred, ref, spacing)

    ref_points = np.argwhere(surface_voxels(ref)) * spacing
    pred_points = np.argwhere(surface_voxels(pred)) * spacing
    pairwise = cdist(pred_points, ref_points)
    np.testing.assert_allclose(np.sort(to_ref), np.sort(pairwise.min(axis=1)), atol=1e-9)
    np.testing.assert_allclose(np.sort(to_pred), np.sort(pairwise.min(axis=0)), atol=1e-9)
    # Same as a distance transform of the reference surface sampled at the prediction surface.
    edt = ndimage.distance_transform_edt(~surface_voxels(ref), sampling=spacing)
    np.testing.assert_allclose(np.sort(to_ref), np.sort(edt[surface_voxels(pred)]), atol=1e-9)


def test_empty_set_rules():
    empty = np.zeros((5, 5), bool)
    blob = empty.copy()
    blob[1:3, 1:3] = True
    both = class_metrics(empty, empty, (1.0, 1.0))
    assert (both["dice"], both["iou"], both["precision"], both["recall"]) == (1.0, 1.0, 1.0, 1.0)
    assert (both["hd95"], both["assd"], both["reference_empty"]) == (0.0, 0.0, True)

    false_positive = class_metrics(blob, empty, (1.0, 1.0))
    assert (false_positive["dice"], false_positive["iou"], false_positive["precision"]) == (0.0, 0.0, 0.0)
    assert math.isnan(false_positive["recall"]) and math.isnan(false_positive["hd95"]) and math.isnan(false_positive["assd"])
    assert false_positive["reference_empty"] is True

    missed = class_metrics(empty, blob, (1.0, 1.0))
    assert (missed["dice"], missed["iou"], missed["recall"]) == (0.0, 0.0, 0.0)
    assert math.isnan(missed["precision"]) and math.isnan(missed["hd95"])
    assert missed["reference_empty"] is False


def test_case_metrics_rejects_mismatched_shapes_and_spacing():
    with pytest.raises(DatasetError, match="shape"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 4)), (1.0, 1.0), [1])
    with pytest.raises(DatasetError, match="spacing"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 3)), (1.0, 1.0, 1.0), [1])


# ---------------------------------------------------------------- folder evaluation
def _write_label(path: Path, array: np.ndarray, spacing=(3.0, 1.0, 1.0)) -> None:
    io.write_image(path, array.astype(np.uint8), io.Geometry.default(array.ndim, spacing))


def _dataset(tmp_path: Path, with_json: bool = True) -> tuple[Path, Path]:
    """Two 3D cases; case_a predicted perfectly, case_b with half of label 1 missed and no label 2."""
    ref_dir, pred_dir = tmp_path / "ds" / "labelsTr", tmp_path / "pred"
    ref_a = np.zeros((4, 6, 6), np.uint8)
    ref_a[1:3, 1:5, 1:5] = 1
    ref_a[3, 0:2, 0:2] = 2
    ref_b = np.zeros((4, 6, 6), np.uint8)
    ref_b[0:2, 0:4, 0:4] = 1  # 32 voxels; label 2 absent from reference b
    pred_b = np.zeros_like(ref_b)
    pred_b[0:1, 0:4, 0:4] = 1  # 16 voxels -> Dice 2*16/48
    for name, ref, pred in (("case_a", ref_a, ref_a), ("case_b", ref_b, pred_b)):
        _write_label(ref_dir / f"{name}.nii.gz", ref)
        _write_label(pred_dir / f"{name}.nii.gz", pred)
    if with_json:
        (tmp_path / "ds" / "dataset.json").write_text(json.dumps(
            {"labels": {"background": 0, "vertebra": 1, "disc": 2}, "file_ending": ".nii.gz"}))
    return pred_dir, ref_dir


def _strict_json(path: Path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(path.read_text(), parse_constant=reject)


def test_evaluate_folders_writes_json_csv_and_means(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    calls = []

    def progress(description: str, total: int):
        calls.append(total)
        return calls.append

    summary = evaluate_folders(pred_dir, ref_dir, workers=1, progress=progress)
    assert calls == [2, 1, 1]  # one task of two cases, advanced once per case
    assert summary.labels == {"vertebra": 1, "disc": 2}
    assert len(summary.per_case) == 4
    vertebra, disc = summary.mean_per_class["vertebra"], summary.mean_per_class["disc"]
    assert vertebra["dice"] == pytest.approx((1.0 + 2 * 16 / 48) / 2)
    assert vertebra["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert disc["dice"] == pytest.approx(1.0)  # case_b has no disc in either map: excluded from means
    assert (disc["cases"], disc["cases_reference_empty"], disc["false_positive_on_empty"]) == (1, 1, 0)
    assert summary.mean_foreground_dice == pytest.approx((vertebra["dice"] + 1.0) / 2)

    document = _strict_json(summary.summary_json)
    assert summary.summary_json == pred_dir / "summary.json"
    assert document["mean_foreground_dice"] == pytest.approx(summary.mean_foreground_dice)
    assert {(r["case_id"], r["label"]) for r in document["per_case"]} == {
        ("case_a", "vertebra"), ("case_a", "disc"), ("case_b", "vertebra"), ("case_b", "disc")}
    with open(summary.summary_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    row_b = next(r for r in rows if r["case_id"] == "case_b" and r["label"] == "vertebra")
    assert float(row_b["dice"]) == pytest.approx(2 / 3) and float(row_b["hd95"]) == pytest.approx(3.0)


def test_nan_is_written_as_null_and_ignored_in_means(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    _write_label(pred_dir / "case_b.nii.gz", np.zeros((4, 6, 6)))  # label 1 missed entirely
    summary = evaluate_folders(pred_dir, ref_dir, workers=1)
    row = next(r for r in _strict_json(summary.summary_json)["per_case"]
               if r["case_id"] == "case_b" and r["label"] == "vertebra")
    assert row["hd95"] is None and row["precision"] is None and row["dice"] == 0.0
    assert summary.mean_per_class["vertebra"]["hd95"] == pytest.approx(0.0)  # only case_a's value
    assert summary.mean_per_class["vertebra"]["dice"] == pytest.approx(0.5)


def test_labels_fall_back_to_values_found(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path, with_json=False)
    summary = evaluate_folders(pred_dir, ref_dir, workers=1)
    assert summary.labels == {"1": 1, "2": 2}
    disc_b = next(r for r in summary.per_case if r.case_id == "case_b" and r.value == 2)
    assert disc_b.reference_empty and disc_b.dice == 1.0 and disc_b.hd95 == 0.0


def test_missing_prediction_is_reported_by_name(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_b.nii.gz") as info:
        evaluate_folders(pred_dir, ref_dir, workers=1)
    assert len(info.value.problems) == 1
    # Restricting to the cases that were predicted (e.g. one fold's validation cases) works.
    assert len(evaluate_folders(pred_dir, ref_dir, workers=1, case_ids=["case_a"]).per_case) == 2


def test_only_predicted_scores_the_cases_that_have_a_prediction(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 reference case\(s\) have no prediction.*--only-predicted"):
        evaluate_folders(pred_dir, ref_dir, workers=1)
    summary = evaluate_folders(pred_dir, ref_dir, workers=1, only_predicted=True)
    assert {row.case_id for row in summary.per_case} == {"case_a"}


def test_many_missing_predictions_are_counted_not_all_listed(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    for i in range(12):
        _write_label(ref_dir / f"extra_{i:02d}.nii.gz", np.zeros((4, 5, 6)))
    with pytest.raises(DatasetError, match="12 of 14") as info:
        evaluate_folders(pred_dir, ref_dir, workers=1)
    assert len(info.value.problems) == 11 and info.value.problems[-1] == "... and 2 more"


def test_no_matching_files_and_shape_mismatch_raise(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    with pytest.raises(DatasetError, match="no prediction matches"):
        evaluate_folders(pred_dir, ref_dir, file_ending=".nrrd", workers=1)
    _write_label(pred_dir / "case_a.nii.gz", np.zeros((4, 6, 5)))
    with pytest.raises(DatasetError, match=r"case_a\.nii\.gz: shape"):
        evaluate_folders(pred_dir, ref_dir, workers=1)


def test_parallel_workers_give_the_same_rows(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    serial = evaluate_folders(pred_dir, ref_dir, workers=1)
    parallel = evaluate_folders(pred_dir, ref_dir, workers=2)
    assert parallel.per_case == serial.per_case


# ---------------------------------------------------------------- overlays
def test_overlay_draws_busiest_slice_with_fill_and_outline(tmp_path):
    image = np.linspace(0, 100, 5 * 12 * 10, dtype=np.float32).reshape(5, 12, 10)
    pred = np.zeros((5, 12, 10), np.uint8)
    ref = np.zeros_like(pred)
    pred[3, 2:8, 2:8] = 1
    ref[3, 3:9, 3:9] = 1
    ref[1, 0, 0] = 2
    assert busiest_slice(pred, ref) == 3
    rgb = render_overlay(image[None], pred, ref)
    assert rgb.shape == (3, 12, 10) and rgb.dtype == np.uint8
    assert tuple(rgb[:, 3, 8]) == tuple(PALETTE[0].astype(np.uint8))  # reference outline, opaque
    assert len(set(rgb[:, 4, 4])) > 1  # translucent fill tints the gray pixel
    assert len(set(rgb[:, 0, 9])) == 1  # background stays gray

    path = write_overlay_png(image, pred, ref, tmp_path / "o.png")
    array, _ = io.read_image(path)
    assert array.shape == (3, 12, 10)
    np.testing.assert_array_equal(array, rgb)


def test_evaluate_folders_writes_overlays(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    images_dir = tmp_path / "ds" / "imagesTr"
    for case in ("case_a", "case_b"):
        image = np.random.default_rng(0).normal(size=(4, 6, 6)).astype(np.float32)
        io.write_image(images_dir / f"{case}_0000.nii.gz", image, io.Geometry.default(3, (3.0, 1.0, 1.0)))
    summary = evaluate_folders(pred_dir, ref_dir, workers=1, overlays=1, images_dir=images_dir)
    assert summary.overlays == (pred_dir / "overlays" / "case_b.png",)  # the worse case first
    array, _ = io.read_image(summary.overlays[0])
    assert array.shape == (3, 6, 6)
