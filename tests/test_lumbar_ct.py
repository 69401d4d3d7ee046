"""lumbar-ct (issue 14): level consistency on hand-made label maps, the identification metric
against hand-computed values, crop and paste-back geometry against SimpleITK, the task's report and
its metrics in `autoseg evaluate`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import api
from autoseg.crop_box import box_around, crop_geometry, crop_image, paste_back
from autoseg.io import Geometry, read_label, sitk_from_array, write_image
from autoseg.tasks import TASKS, finish_prediction, task_plan
from autoseg.tasks.levels import check_levels, world_points
from autoseg.tasks.lumbar_ct import LumbarCtOptions
from autoseg.tasks.profile import PredictedCase
from autoseg.tasks.vertebra_metrics import case_identification, identification, summarize_identification

LEVELS = [1, 2, 3, 4, 5]
NAMES = {1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "L5", 6: "sacrum"}
LABELS = {"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5, "sacrum": 6}
# index 0 of axis z is the patient's head: the z axis of the grid points to the feet (-z world)
HEAD_FIRST = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 100.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def column(values_head_to_foot, height: int = 4, gap: int = 2) -> np.ndarray:
    """Vertebrae as boxes stacked along z, head first, separated by `gap` background slices."""
    labels = np.zeros((len(values_head_to_foot) * (height + gap) + gap, 12, 12), np.uint8)
    for i, value in enumerate(values_head_to_foot):
        start = gap + i * (height + gap)
        labels[start:start + height, 3:9, 3:9] = value
    return labels


def block(labels: np.ndarray, i: int, height: int = 4, gap: int = 2) -> tuple[slice, ...]:
    start = gap + i * (height + gap)
    return (slice(start, start + height), slice(3, 9), slice(3, 9))


# ---------------------------------------------------------------- level consistency
def test_a_consistent_column_is_left_alone():
    labels = column(LEVELS)
    check = check_levels(labels, HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "consistent" and not check.problems and np.array_equal(check.labels, labels)


def test_swapped_levels_are_renumbered_head_to_foot():
    check = check_levels(column([1, 3, 2, 4, 5]), HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "repaired"
    assert np.array_equal(check.labels, column(LEVELS))
    assert any("out of head-to-foot order" in p for p in check.problems)
    assert "L3->L2" in check.repairs[-1] and "L2->L3" in check.repairs[-1]


def test_the_patient_axis_comes_from_the_direction_matrix():
    """The same array with an identity direction has its head at the last slice: reversed order."""
    identity = Geometry(HEAD_FIRST.spacing, HEAD_FIRST.origin, tuple(np.eye(3).ravel()))
    check = check_levels(column(LEVELS), identity, LEVELS, NAMES)
    assert check.status == "repaired"
    assert np.array_equal(check.labels, column(LEVELS[::-1]))


def test_a_duplicated_level_is_renumbered_when_the_run_is_unambiguous():
    check = check_levels(column([1, 2, 2, 4, 5]), HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "repaired" and "L2 appears 2 times" in check.problems
    assert np.array_equal(check.labels, column(LEVELS))


def test_an_ambiguous_duplicate_is_flagged_and_left_as_predicted():
    """Two vertebrae both labelled L3: L2-L3 and L3-L4 each keep one label."""
    labels = column([3, 3])
    check = check_levels(labels, HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "flagged" and any("ambiguous" in p for p in check.problems)
    assert np.array_equal(check.labels, labels)


def test_more_vertebrae_than_levels_is_flagged():
    labels = column([1, 2, 3, 4, 5, 5])
    check = check_levels(labels, HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "flagged" and any("6 vertebrae for 5 levels" in p for p in check.problems)
    assert np.array_equal(check.labels, labels)


def test_a_split_level_loses_its_fragment_to_the_level_it_touches():
    labels = column(LEVELS)
    below_l3 = block(labels, 3)
    labels[below_l3[0].start, 3:9, 3:5] = 3  # a sliver of L4 mislabelled L3: apart from L3, touching L4
    check = check_levels(labels, HEAD_FIRST, LEVELS, NAMES)
    assert check.status == "repaired"
    assert any("L3: a separate fragment of 12 voxels" in p for p in check.problems)
    assert check.repairs == ("L3: a fragment of 12 voxels given to L4",)
    assert np.array_equal(check.labels, column(LEVELS))


def test_a_loose_fragment_touching_nothing_is_removed():
    labels = column(LEVELS)
    labels[0, 0, 0] = 2
    check = check_levels(labels, HEAD_FIRST, LEVELS, NAMES)
    assert check.repairs == ("L2: a fragment of 1 voxels removed",)
    assert np.array_equal(check.labels, column(LEVELS))


def test_world_points_apply_spacing_direction_and_origin():
    geometry = Geometry((0.5, 2.0, 3.0), (10.0, -20.0, 7.5), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    image = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    geometry.apply_to(image)
    zyx = np.array([[5, 1, 3]])
    expected = image.TransformIndexToPhysicalPoint((3, 1, 5))
    assert np.allclose(world_points(zyx, geometry)[0], expected)


# ---------------------------------------------------------------- identification
def test_identification_against_hand_computed_values():
    reference = {1: np.array([0.0, 0.0, 100.0]), 2: np.array([0.0, 0.0, 70.0]), 3: np.array([0.0, 0.0, 40.0])}
    predicted = {
        1: np.array([0.0, 3.0, 104.0]),  # 5 mm away, the closest: identified
        2: np.array([0.0, 0.0, 46.0]),  # 24 mm away: too far
        3: np.array([0.0, 0.0, 52.0]),  # 12 mm from L3 but L2's centroid (6 mm) is closer: not identified
    }
    found = identification(predicted, reference)
    assert found[1] == {"identified": True, "distance_mm": 5.0}
    assert found[2] == {"identified": False, "distance_mm": 24.0}
    assert found[3] == {"identified": False, "distance_mm": 12.0}
    del predicted[3]
    assert identification(predicted, reference)[3]["identified"] is False
    assert math.isnan(identification(predicted, reference)[3]["distance_mm"])


def test_case_identification_and_its_pooled_summary():
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    ref = np.zeros((60, 10, 10), np.uint8)
    ref[0:10, 2:8, 2:8], ref[20:30, 2:8, 2:8], ref[40:50, 2:8, 2:8] = 3, 2, 1
    pred = np.roll(ref, 3, axis=0)  # every centroid 3 mm off: all identified
    one = case_identification(pred, ref, geometry, LEVELS, NAMES)
    assert one["identification_rate"] == 1.0 and one["mean_centroid_distance_mm"] == pytest.approx(3.0)
    pred[pred == 1] = 0  # L1 missed
    two = case_identification(pred, ref, geometry, LEVELS, NAMES)
    assert two["identification_rate"] == pytest.approx(2 / 3) and two["levels"]["L1"]["identified"] is False
    pooled = summarize_identification({"a": one, "b": two})
    assert pooled["identification_rate"] == pytest.approx(5 / 6) and pooled["vertebrae"] == 6
    assert pooled["identification_rate_per_level"]["L1"] == 0.5


# ---------------------------------------------------------------- crop and paste-back geometry
ODD = Geometry((0.83, 1.17, 2.9), (-123.457, 88.1, -1017.33),
               tuple(sitk.VersorTransform((0.3, -0.5, 0.8), 0.61).GetMatrix()))


def test_crop_geometry_matches_simpleitk_with_a_rotated_direction_and_odd_origin():
    array = np.random.default_rng(0).integers(0, 100, size=(20, 30, 40)).astype(np.int16)
    mask = np.zeros(array.shape, bool)
    mask[7:9, 11:14, 5:6] = True
    box = box_around(mask, ODD.spacing_zyx, margin_mm=2.0)
    assert box == [(6, 10), (9, 16), (2, 9)]  # ceil(2 / spacing) voxels per side
    cropped, geometry = crop_image(array, ODD, box)
    full = sitk_from_array(array, ODD)
    index, size = [b[0] for b in box][::-1], [b[1] - b[0] for b in box][::-1]
    reference = sitk.RegionOfInterest(full, size, index)
    assert np.array_equal(sitk.GetArrayFromImage(reference), cropped)
    assert geometry.spacing == reference.GetSpacing() and geometry.direction == reference.GetDirection()
    assert np.allclose(geometry.origin, reference.GetOrigin(), atol=1e-9, rtol=0)


def test_paste_back_restores_every_voxel_at_its_world_position(tmp_path):
    labels = np.zeros((20, 30, 40), np.uint8)
    labels[8:12, 10:20, 4:9] = 3
    box = box_around(labels > 0, ODD.spacing_zyx, margin_mm=5.0)
    cropped, geometry = crop_image(labels, ODD, box)
    write_image(tmp_path / "crop.nii.gz", cropped, geometry)  # through a file, as the predictor does
    read_back, read_geometry = read_label(tmp_path / "crop.nii.gz")
    pasted = paste_back(read_back, box, labels.shape)
    assert np.array_equal(pasted, labels)
    full = sitk_from_array(np.zeros_like(labels), ODD)
    placed = sitk.Paste(full, sitk_from_array(read_back, read_geometry), read_back.shape[::-1], (0, 0, 0),
                        [b[0] for b in box][::-1])
    assert np.array_equal(sitk.GetArrayFromImage(placed), pasted)
    corner = world_points(np.array([[0, 0, 0]]), read_geometry)[0]
    assert np.allclose(corner, full.TransformIndexToPhysicalPoint([b[0] for b in box][::-1]), atol=1e-4)


def test_a_margin_is_clipped_at_the_image_border_and_an_empty_mask_has_no_box():
    mask = np.zeros((5, 6, 7), bool)
    assert box_around(mask, (1.0, 1.0, 1.0), 10.0) is None
    mask[0, 5, 3] = True
    assert box_around(mask, (1.0, 1.0, 1.0), 2.0) == [(0, 3), (3, 6), (1, 6)]
    assert crop_geometry(ODD, [(0, 5), (0, 6), (0, 7)]) == ODD


# ---------------------------------------------------------------- the task's steps and metrics
def _predicted(labels: np.ndarray, geometry: Geometry = HEAD_FIRST) -> PredictedCase:
    return PredictedCase("case", np.zeros((1, *labels.shape), np.float32), geometry, labels, LABELS)


def test_the_task_repairs_levels_and_reports_what_it_did():
    final, report = finish_prediction(task_plan("lumbar-ct"), _predicted(column([1, 3, 2, 4, 5])))
    assert np.array_equal(final, column(LEVELS))
    assert report["task"] == "lumbar-ct" and report["level_status"] == "repaired"
    assert report["levels_found"] == ["L1", "L2", "L3", "L4", "L5"]
    assert report["volume_mm3_L1"] == pytest.approx(4 * 36 * 2.0)
    l1 = np.argwhere(final == 1).mean(axis=0)
    assert report["centroid_mm_L1"] == pytest.approx(list(world_points(l1[None], HEAD_FIRST)[0]), abs=0.01)


def test_the_task_keeps_the_sacrum_as_one_bone():
    labels = column([1, 2, 3, 4, 5, 6])
    labels[0, 0, 0] = 6  # a stray speck of sacrum far from it
    final, report = finish_prediction(task_plan("lumbar-ct"), _predicted(labels))
    assert final[0, 0, 0] == 0 and np.array_equal(final, column([1, 2, 3, 4, 5, 6]))
    assert report["level_status"] == "consistent"


def test_a_flagged_case_still_leaves_each_level_in_one_piece():
    final, report = finish_prediction(task_plan("lumbar-ct"), _predicted(column([3, 3])))
    assert report["level_status"] == "flagged"
    assert (final == 3).sum() == (column([3, 3]) == 3).sum() // 2  # one of the two equal pieces kept


def test_with_repair_off_the_task_flags_and_keeps_the_labels():
    labels = column([1, 3, 2, 4, 5])
    final, report = finish_prediction(task_plan("lumbar-ct", {"repair_levels": False}), _predicted(labels))
    assert np.array_equal(final, labels) and report["level_status"] == "flagged" and report["level_repairs"] == []


def test_bad_task_options_are_refused_naming_them():
    with pytest.raises(Exception, match="margin_mm"):
        LumbarCtOptions(margin_mm=-1.0)
    assert TASKS.get("lumbar-ct").model_layout == "localize-crop-segment"


def test_evaluate_reports_identification_for_lumbar_ct_predictions(tmp_path):
    geometry = Geometry((1.0, 1.0, 2.0), (5.0, -3.0, 40.0), tuple(np.eye(3).ravel()))
    ref_dir, pred_dir = tmp_path / "labelsTr", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz",
                                                       "channel_names": {"0": "CT"}, "numTraining": 1}))
    ref = column(LEVELS)
    pred = ref.copy()
    pred[ref == 4], pred[ref == 5] = 5, 4  # L4 and L5 swapped: overlap 0, not identified
    write_image(ref_dir / "c1.nii.gz", ref, geometry)
    write_image(pred_dir / "c1.nii.gz", pred, geometry)
    summary = api.evaluate(pred_dir, ref_dir, workers=1, task="lumbar-ct")
    metrics = json.loads(summary.summary_json.read_text())["task_metrics"]
    assert metrics["task"] == "lumbar-ct" and metrics["identification_rate"] == pytest.approx(3 / 5)
    assert metrics["per_case"]["c1"]["levels"]["L4"]["identified"] is False
    assert summary.mean_per_class["L4"]["dice"] == 0.0 and summary.mean_per_class["L1"]["dice"] == 1.0
    (pred_dir / "c1.report.json").write_text(json.dumps({"case_id": "c1", "task": "lumbar-ct"}))
    assert api.evaluate(pred_dir, ref_dir, workers=1).task_metrics["identification_rate"] == pytest.approx(3 / 5)


# ---------------------------------------------------------------- localize -> crop -> segment
FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0}


@pytest.fixture(scope="module")
def localized(tmp_path_factory):
    """Both stages trained for a few steps on a small phantom (3d_fullres stands in for the localizer)."""
    root = tmp_path_factory.mktemp("localized")
    data = api.example("lumbar-ct", root / "data", cases=3, seed=0, scale=0.5)
    test = api.example("lumbar-ct", root / "test", cases=1, seed=5, scale=0.5)
    api.plan(data, root / "work", workers=1, task="lumbar-ct")
    layout = api.train_localized(data, "full", root / "work", localizer="3d_fullres", margin_mm=10.0, **FAST)
    return {"root": root, "data": data, "test": test, "layout": layout}


def test_train_localized_writes_a_layout_and_a_crop_dataset_with_exact_geometry(localized):
    document = json.loads((localized["layout"] / "layout.json").read_text())
    assert document["layout"] == "localize-crop-segment" and document["margin_mm"] == 10.0
    crops = localized["root"] / "work" / "derived" / "Dataset903_LumbarCT_crops"
    boxes = json.loads((crops / "crop_boxes.json").read_text())["boxes"]
    case = sorted(boxes)[0]
    full, full_geometry = read_label(localized["data"] / "labelsTr" / f"{case}.nii.gz")
    cut, cut_geometry = read_label(crops / "labelsTr" / f"{case}.nii.gz")
    box = boxes[case]["box_zyx"]
    assert np.array_equal(paste_back(cut, box, full.shape), full)  # every label inside the box
    assert cut_geometry == crop_geometry(full_geometry, box)
    assert json.loads((crops / "dataset.json").read_text())["numTraining"] == 3


def test_predict_localized_keeps_the_input_geometry_and_writes_crop_boxes(localized, tmp_path):
    out = tmp_path / "pred"
    written = api.predict_localized(localized["test"] / "imagesTr", out, localized["layout"], tta=False)
    assert len(written) == 1
    labels, geometry = read_label(written[0])
    image, image_geometry = read_label(sorted((localized["test"] / "imagesTr").glob("*"))[0])
    assert geometry == image_geometry and labels.shape == image.shape
    box = json.loads((out / "lct_000.crop_box.json").read_text())
    assert box["margin_mm"] == 10.0 and (box["box_zyx"] is None or len(box["box_zyx"]) == 3)
    report = json.loads((out / "lct_000.report.json").read_text())
    assert report["task"] == "lumbar-ct" and report["level_status"] in ("consistent", "repaired", "flagged")
    assert (out / "task_report.csv").is_file()


def test_a_localizer_that_finds_nothing_gives_an_empty_prediction_and_a_warning(localized, tmp_path, caplog):
    from autoseg.inference.localized import LocalizedPredictor
    from autoseg.localized_training import read_layout

    predictor = LocalizedPredictor(read_layout(localized["layout"]), "cpu", tta=False)
    found_nothing = lambda inferred: (np.zeros(inferred.properties["original_shape"], np.uint8), None)  # noqa: E731
    predictor.localizer.finish = found_nothing
    written = predictor.predict_folder(localized["test"] / "imagesTr", tmp_path / "pred")
    labels, _ = read_label(written[0])
    assert not labels.any()
    assert "found no region" in caplog.text
    assert json.loads((tmp_path / "pred" / "lct_000.crop_box.json").read_text())["box_zyx"] is None


# ---------------------------------------------------------------- the large-field phantom
def test_the_large_field_phantom_holds_a_small_lumbar_spine_in_a_trunk_sized_volume():
    from autoseg.phantoms import generate_case

    cases = [generate_case("lumbar-ct", index=i, seed=0, large_field=True) for i in range(12)]
    centres = []
    for case in cases:
        extent_mm = np.array(case.label.shape) * np.array(case.geometry.spacing_zyx)
        assert np.all((extent_mm > 290) & (extent_mm < 420))
        found = np.argwhere(case.label > 0)
        box = found.max(axis=0) - found.min(axis=0) + 1
        assert np.prod(box) / case.label.size < 0.2
        assert set(np.unique(case.label)) == set(range(7))  # L1-L5 and the sacrum in every case
        centres.append(found.mean(axis=0) / np.array(case.label.shape))
    assert np.ptp(np.array(centres)[:, 0]) > 0.15  # the lumbar spine moves along the body between cases
    variants = [case.metadata for case in cases]
    assert any(v["scoliosis_deg"] != 0 for v in variants) and any(v["transitional"] != "none" for v in variants)


def test_a_sixth_lumbar_vertebra_lies_unlabelled_between_l5_and_the_sacrum():
    """L5 sits one vertebra (about 35 mm) further from the sacrum than in the cases without L6."""
    from autoseg.phantoms import generate_case

    def l5_to_sacrum_mm(case) -> float:
        spacing = np.array(case.geometry.spacing_zyx)
        centre = {v: np.argwhere(case.label == v).mean(axis=0) * spacing for v in (5, 6)}
        return float(np.linalg.norm(centre[5] - centre[6]))

    cases = [generate_case("lumbar-ct", i, 0, large_field=True) for i in range(16)]
    with_l6 = [l5_to_sacrum_mm(c) for c in cases if c.metadata["transitional"] == "L6"]
    usual = [l5_to_sacrum_mm(c) for c in cases if c.metadata["transitional"] == "none"]
    assert with_l6 and min(with_l6) > np.median(usual) + 20


def test_a_speckled_prediction_is_cleaned_quickly_and_reported_briefly():
    """An untrained model's thousands of specks: each is handled inside its own box."""
    import time

    labels = column(LEVELS)
    rng = np.random.default_rng(0)
    big = np.zeros((80, 120, 120), np.uint8)
    big[:labels.shape[0], :12, :12] = labels
    away = big[:, 20:, 20:]  # specks apart from the column (a speck touching a vertebra joins it)
    specks = rng.integers(0, away.size, 3000)
    np.put(away, specks, rng.integers(1, 6, size=specks.size))
    started = time.perf_counter()
    check = check_levels(big, HEAD_FIRST, LEVELS, NAMES)
    assert time.perf_counter() - started < 10
    assert check.status == "repaired" and len(check.repairs) == 6 and check.repairs[-1].startswith("... and")
    assert np.array_equal(check.labels[:labels.shape[0], :12, :12], labels) and not check.labels[:, 20:, 20:].any()


def test_predict_localized_refuses_a_folder_without_layout_json_with_exit_2_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from autoseg.cli import app

    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "c1_0000.nii.gz", np.zeros((4, 5, 6), np.int16), HEAD_FIRST)
    result = CliRunner().invoke(app, ["predict-localized", "-i", str(images), "-o", str(tmp_path / "out"),
                                      "-m", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 2 and "layout.json" in result.output
    assert not (tmp_path / "out").exists()


def test_the_crop_dataset_is_planned_for_the_localizer_plans_time_budget(tmp_path):
    """A budget-sized localizer gets a segmenter planned for the same budget, not a GPU-sized default."""
    from autoseg import schema
    from autoseg.config import load_fingerprint
    from autoseg.localized_training import Stages, train_localized
    from autoseg.planners.time_budget import BudgetRequest, fit_plan_to_budget

    data = api.example("lumbar-ct", tmp_path / "data", cases=2, seed=0, scale=0.5)
    plan, plan_path = api.plan(data, tmp_path / "work", workers=1, task="lumbar-ct")
    fingerprint = load_fingerprint(plan_path.parent / "fingerprint.json")
    request = BudgetRequest(900.0, "cpu", "test-cpu", "fp32", 4.0)
    schema.write_json_atomic(plan_path, fit_plan_to_budget(plan, fingerprint, request,
                                                           lambda c: 1e-6 * math.prod(c.patch_size) * c.batch_size))
    planned = []
    stages = Stages(train=lambda dataset, config, fold, workdir, **kw: tmp_path / f"run_{config}",
                    plan=lambda *args, **kw: planned.append(kw), load_or_make_plan=None)
    train_localized(stages, data, "full", tmp_path / "work", localizer="3d_fullres", margin_mm=10.0)
    assert [(p["time_budget_s"], p["device"]) for p in planned] == [(900.0, "cpu")]
