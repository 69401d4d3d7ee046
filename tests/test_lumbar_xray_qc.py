"""lumbar-xray-qc: each QC criterion on hand-made label maps, positions from every source, the
verdict table, position-balanced sampling, the qc / qc-evaluate commands and their refusals, and
the phantom's known verdicts."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from autoseg.cli_app import EXIT_PROBLEM
from autoseg.cli import app
from autoseg.data.sampling import _case_probabilities
from autoseg.errors import ConfigError
from autoseg.io import Geometry, write_image
from autoseg.tasks import finish_folder, qc_criteria as qc, task_plan
from autoseg.tasks.lumbar_xray_qc import LumbarXrayQcOptions, position_weights
from autoseg.tasks.qc_evaluation import evaluate_qc
from autoseg.tasks.qc_report import judge
from autoseg.tasks.qc_rules import DEFAULT_RULES, POSITION_FREE, load_rules, rules_for
from autoseg.tasks.xray_positions import (
    dataset_positions, dicom_view_position, normalize_position, position_of, read_positions_file,
)

WIDE = {"COLUMNS": "250"}
LABELS = {"background": 0, "vertebra": 1, "pedicle": 2, "spinous_process": 3}
ROLES = qc.roles_from_names(LABELS)
RULES = load_rules()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


# ---------------------------------------------------------------- hand-made label maps
def ap_map(shape=(200, 120), centre=60, top=30, spinous=0.0, pedicle=12, levels=5, height=20, gap=8) -> np.ndarray:
    """Five bodies 40 px wide, a pedicle either side and the spinous process `spinous` px off the midline."""
    labels = np.zeros(shape, np.uint8)
    for i in range(levels):
        y = top + i * (height + gap)
        labels[y:y + height, centre - 20:centre + 21] = 1
        for side in (-1, 1):
            labels[y + 3:y + 9, centre + side * pedicle - 2:centre + side * pedicle + 3] = 2
        s = int(round(centre + spinous))
        labels[y + 10:y + 16, s - 2:s + 3] = 3
    return labels


def lat_map(depth=26, height=26, gap=8, shape=(240, 140)) -> np.ndarray:
    """Bodies `depth` wide and `height` high, pedicles and spinous processes behind them (to the right)."""
    labels = np.zeros(shape, np.uint8)
    front = 40
    for i in range(5):
        y = 20 + i * (height + gap)
        labels[y:y + height, front:front + depth] = 1
        labels[y + 4:y + 12, front + depth:front + depth + 8] = 2
        labels[y + 10:y + 20, front + depth + 14:front + depth + 34] = 3
    return labels


def radiograph(labels, image=None, spacing=(1.0, 1.0)) -> qc.Radiograph:
    return qc.Radiograph(labels, spacing, ROLES, image)


def run(name: str, labels, position="AP", image=None) -> qc.CriterionResult:
    function, _ = qc.CRITERIA[name]
    rule = RULES[position].get(name) or next(RULES[p][name] for p in RULES if name in RULES[p])
    return function(radiograph(labels, image), rule)


def test_field_of_view_passes_a_whole_column_and_fails_one_cut_at_the_top():
    assert run("field_of_view", ap_map()).passed
    cut = run("field_of_view", ap_map()[40:])  # L1 (rows 30-49) cut by the top border
    assert not cut.passed and cut.value == 0.0 and "top" in cut.reason


def test_field_of_view_fails_when_a_labelled_level_is_missing():
    levels = {"background": 0, "L1": 1, "L2": 2, "L3": 3, "L4": 4, "L5": 5}
    labels = np.zeros((200, 100), np.uint8)
    for value in range(1, 6):
        labels[20 + 30 * value:40 + 30 * value - 15, 30:70] = value
    rule = RULES["AP"]["field_of_view"]
    whole = qc.field_of_view(qc.Radiograph(labels, (1.0, 1.0), qc.roles_from_names(levels)), rule)
    labels[labels == 5] = 0
    without_l5 = qc.field_of_view(qc.Radiograph(labels, (1.0, 1.0), qc.roles_from_names(levels)), rule)
    assert whole.passed and not without_l5.passed and "L5" in without_l5.reason


def test_centring_passes_a_centred_column_and_fails_one_off_to_the_side():
    assert run("centring", ap_map()).passed
    off = run("centring", ap_map(centre=85))
    assert not off.passed and off.value == pytest.approx(25 / 120, abs=0.01)


def test_tilt_is_the_angle_of_the_column_from_vertical():
    straight = run("tilt", ap_map())
    tilted = run("tilt", ndimage.rotate(ap_map(), 15, reshape=False, order=0))
    assert straight.passed and straight.value < 1.0
    assert not tilted.passed and tilted.value == pytest.approx(15, abs=3)


def test_rotation_passes_spinous_processes_midway_and_fails_them_off_the_pedicles_midpoint():
    assert run("rotation", ap_map(spinous=0)).value == pytest.approx(0, abs=0.05)
    rotated = run("rotation", ap_map(spinous=6))
    assert not rotated.passed and rotated.value == pytest.approx(0.5, abs=0.05)


def test_obliquity_estimates_the_angle_from_the_pedicle_asymmetry():
    k = qc.SPINOUS_TO_PEDICLE_K
    at_45 = run("obliquity", ap_map(spinous=12 * k * np.tan(np.radians(45))), "OBL")
    at_20 = run("obliquity", ap_map(spinous=12 * k * np.tan(np.radians(20))), "OBL")
    assert at_45.passed and at_45.value == pytest.approx(45, abs=3)
    assert not at_20.passed and at_20.value == pytest.approx(20, abs=3)


def test_true_lateral_fails_bodies_widened_by_a_double_posterior_contour():
    true = run("true_lateral", lat_map(depth=26), "LAT")
    rotated = run("true_lateral", lat_map(depth=38), "LAT")
    assert true.passed and true.value == pytest.approx(1.0, abs=0.05)
    assert not rotated.passed and rotated.value == pytest.approx(38 / 26, abs=0.05)


def test_disc_spaces_fail_when_neighbouring_bodies_nearly_touch():
    rule = {"min_gap_mm": 3.0}
    open_spaces = qc.disc_spaces(radiograph(lat_map(gap=8)), rule)
    closed = qc.disc_spaces(radiograph(lat_map(gap=2)), rule)
    assert open_spaces.passed and open_spaces.value == pytest.approx(8, abs=0.5)
    assert not closed.passed and closed.value == pytest.approx(2, abs=0.5)


def test_exposure_counts_clipped_pixels_inside_the_column():
    labels = ap_map()
    image = np.full(labels.shape, 100.0)
    image[0, 0], image[0, 1] = 0.0, 255.0  # the range: nothing inside the column clipped
    assert run("exposure", labels, image=image).value == 0.0
    column = labels > 0
    burnt = image.copy()
    burnt[column & (np.arange(labels.shape[0])[:, None] < 100)] = 255.0
    result = run("exposure", labels, image=burnt)
    assert not result.passed and result.value > 0.3


def test_a_criterion_without_its_structures_is_not_measurable_and_does_not_decide():
    bodies_only = np.where(ap_map() == 1, 1, 0).astype(np.uint8)
    result = judge(radiograph(bodies_only), RULES, "c", "AP")
    assert result.criteria["rotation"].passed is None and "not measurable" in result.criteria["rotation"].reason
    assert result.verdict == "qualified"


# ---------------------------------------------------------------- verdict table and rules
def test_the_verdict_lists_every_failed_criterion_with_its_reason():
    labels = ap_map(centre=85, spinous=6)
    result = judge(radiograph(labels), RULES, "c", "AP")
    assert result.verdict == "not qualified" and result.failed == ["centring", "rotation"]
    document = result.to_dict()
    assert document["reasons"] == [document["criteria"][n]["reason"] for n in ("centring", "rotation")]
    assert judge(radiograph(ap_map()), RULES, "c", "AP").verdict == "qualified"


def test_each_position_has_its_own_criteria():
    assert set(rules_for(RULES, "AP")) >= {"field_of_view", "centring", "tilt", "rotation", "exposure"}
    assert {"true_lateral", "disc_spaces"} <= set(rules_for(RULES, "LAT")) and "rotation" not in RULES["LAT"]
    assert RULES["OBL"]["obliquity"] == {"min_deg": 35.0, "max_deg": 55.0}
    assert set(rules_for(RULES, None)) == set(POSITION_FREE)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["AP"].update(sharpness={"min": 1}), "unknown criterion 'sharpness'"),
    (lambda d: d["LAT"]["disc_spaces"].pop("min_gap_mm"), "missing threshold.*min_gap_mm"),
    (lambda d: d.update(PA=d["AP"]), "unknown: PA"),
    (lambda d: d["OBL"]["obliquity"].update(max_deg="55"), "expected a number"),
])
def test_a_bad_rules_file_is_refused_naming_it(tmp_path, change, message):
    data = json.loads(DEFAULT_RULES.read_text())
    change(data)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- positions
def test_positions_normalise_dicom_and_textbook_spellings():
    assert [normalize_position(v, "x") for v in ("ap", "PA", "LL", "lateral", "RPO", "oblique")] == \
        ["AP", "AP", "LAT", "LAT", "OBL", "OBL"]
    with pytest.raises(ConfigError, match="here: unknown position 'SIDE'"):
        normalize_position("SIDE", "here")


def test_positions_from_cases_json_and_dataset_json_and_a_file(tmp_path):
    (tmp_path / "cases.json").write_text(json.dumps({"a": {"position": "lateral"}, "b": {"position": "AP"},
                                                     "note": "a remark, not a case", "c": {"scale_x": 0.5}}))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "positions": {"b": "OBL"}}))
    assert dataset_positions(tmp_path) == {"a": "LAT", "b": "OBL"}  # dataset.json wins
    (tmp_path / "mine.json").write_text(json.dumps({"c": "RAO"}))
    assert read_positions_file(tmp_path / "mine.json") == {"c": "OBL"}
    assert position_of("c", {"c": "OBL"}) == ("OBL", "given")
    assert position_of("d", {}) == (None, "inferred")


def test_position_from_the_dicom_view_position_attribute(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for tag, value in (("0008|0060", "DX"), ("0018|5101", "LL")):
        image.SetMetaData(tag, value)
    writer.SetFileName(str(tmp_path / "x.dcm"))
    writer.Execute(image)
    assert dicom_view_position(tmp_path / "x.dcm") == "LAT"
    assert position_of("x", {}, tmp_path / "x.dcm") == ("LAT", "dicom")


def test_qc_of_a_dicom_radiograph_takes_its_position_from_the_view_position(tmp_path):
    import SimpleITK as sitk

    labels = lat_map()
    series = tmp_path / "images" / "spine"
    series.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.where(labels > 0, 900, 100).astype(np.int16)[None])
    for tag, value in (("0008|0060", "DX"), ("0018|5101", "RL"), ("0020|0013", "1")):
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(series / "1.dcm"))
    writer.Execute(image)
    write_image(tmp_path / "pred" / "spine.nii.gz", labels[None], Geometry.default(3))
    result = invoke("qc", "-i", tmp_path / "images", "-p", tmp_path / "pred", "-o", tmp_path / "qc")
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "qc" / "qc.json").read_text())["cases"]["spine"]
    assert (entry["position"], entry["position_source"]) == ("LAT", "dicom") and "true_lateral" in entry["criteria"]


def test_position_is_inferred_from_the_label_map():
    k = qc.SPINOUS_TO_PEDICLE_K
    assert qc.infer_position(radiograph(ap_map())) == "AP"
    assert qc.infer_position(radiograph(ap_map(spinous=12 * k))) == "OBL"
    assert qc.infer_position(radiograph(ap_map(spinous=12 * k * 2))) == "LAT"  # 62 degrees


# ---------------------------------------------------------------- position-balanced sampling
def test_training_draws_each_position_equally_often(tmp_path):
    cases = {f"c{i}": {"position": "AP" if i < 6 else "LAT" if i < 8 else "OBL"} for i in range(9)}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    weights = position_weights(tmp_path, list(cases), LumbarXrayQcOptions())
    probabilities = _case_probabilities(list(cases), [weights[c] for c in cases])
    by_position = {p: sum(probabilities[i] for i, c in enumerate(cases) if cases[c]["position"] == p) for p in ("AP", "LAT", "OBL")}
    assert by_position == pytest.approx({"AP": 1 / 3, "LAT": 1 / 3, "OBL": 1 / 3})
    assert position_weights(tmp_path, list(cases), LumbarXrayQcOptions(balance_positions=False)) == {}
    with pytest.raises(ConfigError, match="case_weights"):
        _case_probabilities(["a", "b"], [1.0, -1.0])


# ---------------------------------------------------------------- the commands
@pytest.fixture
def folder(tmp_path) -> Path:
    """A tiny dataset: one qualified AP, one off-centre AP, with dataset.json positions."""
    root = tmp_path / "Dataset900_Qc"
    for case_id, labels in (("good", ap_map()), ("off", ap_map(centre=85))):
        image = np.where(labels > 0, 3000, 1000).astype(np.uint16)
        image[0, 0], image[-1, -1] = 0, 4095
        write_image(root / "imagesTr" / f"{case_id}_0000.png", image, Geometry.default(2))
        write_image(root / "labelsTr" / f"{case_id}.png", labels, Geometry.default(2))
    (root / "dataset.json").write_text(json.dumps({"labels": LABELS, "positions": {"good": "AP", "off": "AP"}}))
    return root


def test_qc_writes_verdicts_csv_and_an_overlay_per_failed_image(folder, tmp_path):
    result = invoke("qc", "-i", folder / "imagesTr", "-p", folder / "labelsTr", "-o", tmp_path / "qc")
    assert result.exit_code == 0, result.output
    cases = json.loads((tmp_path / "qc" / "qc.json").read_text())["cases"]
    assert cases["good"]["verdict"] == "qualified" and cases["off"]["failed"] == ["centring"]
    assert cases["off"]["criteria"]["centring"]["value"] == pytest.approx(25 / 120, abs=0.01)
    rows = (tmp_path / "qc" / "qc.csv").read_text().splitlines()
    assert rows[0].startswith("case_id,position,position_source,verdict") and len(rows) == 3
    assert [p.name for p in (tmp_path / "qc" / "overlays").iterdir()] == ["off.png"]
    assert "NOT OK" in result.output

    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"good": {"qc": {"verdict": "qualified"}}, "off": {"qc": {"verdict": "qualified"}}}))
    scores = evaluate_qc(tmp_path / "qc" / "qc.json", truth)
    assert scores["overall"]["accuracy"] == 0.5 and scores["overall"]["specificity"] == 0.5
    assert scores["overall"]["sensitivity"] is None and scores["positions"]["AP"]["confusion"]["qualified_failed"] == 1
    shown = invoke("qc-evaluate", tmp_path / "qc" / "qc.json", tmp_path / "qc" / "qc.json")
    assert shown.exit_code == 0 and "1.000" in shown.output and "centring" in shown.output


@pytest.mark.parametrize("problem", ["unknown position", "unknown criterion", "missing threshold", "no image"])
def test_qc_refuses_bad_input_with_exit_2_naming_the_file_and_writes_nothing(folder, tmp_path, problem):
    extra, named = [], None
    if problem == "unknown position":
        named = tmp_path / "positions.json"
        named.write_text(json.dumps({"good": "SIDEWAYS"}))
        extra = ["--positions", named]
    elif problem in ("unknown criterion", "missing threshold"):
        data = json.loads(DEFAULT_RULES.read_text())
        if problem == "unknown criterion":
            data["AP"]["sharpness"] = {"min": 1}
        else:
            del data["AP"]["tilt"]["max_deg"]
        named = tmp_path / "rules.json"
        named.write_text(json.dumps(data))
        extra = ["--qc-rules", named]
    else:
        (folder / "imagesTr" / "off_0000.png").unlink()
        named = folder / "labelsTr" / "off.png"
    result = invoke("qc", "-i", folder / "imagesTr", "-p", folder / "labelsTr", "-o", tmp_path / "qc", *extra)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert str(named) in result.output.replace("\n", "")
    assert not (tmp_path / "qc").exists()


# ---------------------------------------------------------------- the phantom's known verdicts
def test_phantom_faults_are_recorded_and_qc_on_reference_labels_finds_them(tmp_path):
    from autoseg.phantoms import write_example

    folder = write_example("lumbar-xray", tmp_path, cases=15, seed=5)
    truth = json.loads((folder / "cases.json").read_text())
    faulty = [c for c, e in truth.items() if e["qc"]["verdict"] == "not qualified"]
    assert faulty == ["lxr_003", "lxr_004", "lxr_005", "lxr_012", "lxr_013", "lxr_014"]
    assert all(truth[c]["qc"]["reasons"] for c in faulty)
    result = invoke("qc", "-i", folder / "imagesTr", "-p", folder / "labelsTr", "-o", tmp_path / "qc")
    assert result.exit_code == 0, result.output
    judged = json.loads((tmp_path / "qc" / "qc.json").read_text())["cases"]
    for case_id, entry in truth.items():
        assert judged[case_id]["verdict"] == entry["qc"]["verdict"], (case_id, judged[case_id]["reasons"])
        assert set(entry["qc"]["reasons"]) <= set(judged[case_id]["failed"])


def test_predicting_with_a_model_of_the_task_runs_qc_over_the_predicted_folder(folder, tmp_path):
    """The folder report that `autoseg predict` runs for this task (finish_folder): `autoseg qc`'s
    outputs beside the predictions, positions as the images' dataset gives them."""
    predictions = tmp_path / "pred"
    shutil.copytree(folder / "labelsTr", predictions)
    written = finish_folder(task_plan("lumbar-xray-qc"), folder / "imagesTr", predictions, LABELS)
    assert {p.name for p in written} >= {"qc.json", "qc.csv", "off.png", "good.report.json", "off.report.json"}
    cases = json.loads((predictions / "qc.json").read_text())["cases"]
    assert {c: (e["position"], e["position_source"], e["verdict"]) for c, e in cases.items()} == {
        "good": ("AP", "given", "qualified"), "off": ("AP", "given", "not qualified")}
    report = json.loads((predictions / "off.report.json").read_text())
    assert report["task"] == "lumbar-xray-qc" and report["failed"] == "centring" and "centr" in report["reasons"]
    assert evaluate_qc(predictions / "qc.json", predictions / "qc.json")["overall"]["accuracy"] == 1.0
    assert finish_folder(task_plan("lumbar-xray-qc"), None, predictions, LABELS) == []  # inputs from several folders
