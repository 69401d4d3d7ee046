"""Clinical task profiles (autoseg/tasks): the registry contract, run for every registered task on its
phantom (plan -> a few training steps -> predict -> report), how a plan records a task, the loader's
deferred normalization with the dose augmentation before it, and evaluate-dose end to end."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg import api, schema
from autoseg.cli import EXIT_PROBLEM, app
from autoseg.config import ConfigPlan, load_plan
from autoseg.data.loader import BatchPipeline
from autoseg.data.transforms import NormalizeTransform
from autoseg.errors import ConfigError, RegistryError
from autoseg.io import Geometry, read_image, write_image
from autoseg.phantoms import PHANTOMS
from autoseg.preprocessing import load_case, preprocess_case
from autoseg.tasks import TASKS, cervical_lowdose, task_plan
from autoseg.tasks.reports import SUMMARY_CSV
from autoseg.trainers.data_setup import training_source, validation_source

FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0}
WIDE = {"COLUMNS": "250"}


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, dict]:
    """Every registered task on its phantom: planned with the task, trained for a few steps, and
    its test images predicted (small phantoms, so the whole contract stays fast)."""
    runs = {}
    for name in TASKS.names():
        root = tmp_path_factory.mktemp(name)
        profile = TASKS.get(name)
        data = api.example(profile.phantom, root / "data", cases=4, seed=0, scale=0.5)
        test = api.example(profile.phantom, root / "test", cases=2, seed=3, scale=0.5)
        plan, plan_path = api.plan(data, root / "work", workers=1, task=name)
        config = next(iter(plan.configurations))
        run = api.train(data, config, 0, root / "work", **FAST)
        predictions = root / "predictions"
        api.predict_folder(test / "imagesTr", predictions, [run], tta=False)
        runs[name] = {"root": root, "data": data, "test": test, "plan": plan_path, "run": run, "predictions": predictions}
    return runs


# ---------------------------------------------------------------- the contract, per registered task
@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_is_well_formed(name):
    profile = TASKS.get(name)
    assert profile.name == name and profile.summary and "\n" not in profile.summary
    assert profile.phantom in PHANTOMS
    recorded = task_plan(name)  # every option has a default, and the record round-trips strictly
    assert task_plan(name, recorded.options) == recorded
    assert profile.configurations and all(c in ("2d", "3d_fullres", "3d_lowres") for c in profile.configurations)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_plans_trains_predicts_and_reports_on_its_phantom(trained, name):
    found = trained[name]
    plan = load_plan(found["plan"])
    # every option recorded (a task may fill dataset-dependent ones when planning: plan_options)
    assert all(c.task.name == name and c.task == task_plan(name, c.task.options) for c in plan.configurations.values())
    assert all(c.normalize_at == TASKS.get(name).normalize_at for c in plan.configurations.values())
    assert json.loads(found["plan"].read_text())["configurations"][next(iter(plan.configurations))]["task"]["name"] == name
    ending = json.loads((found["data"] / "dataset.json").read_text())["file_ending"]
    labels = sorted(found["predictions"].glob(f"*{ending}"))
    assert len(labels) == 2
    profile = TASKS.get(name)
    if profile.report is not None or profile.folder_report is not None:
        reports = sorted(found["predictions"].glob("*.report.json"))
        assert [p.name.split(".")[0] for p in reports] == [p.name.split(".")[0] for p in labels]
        assert all(json.loads(p.read_text())["task"] == name for p in reports)
    if profile.report is not None:
        rows = list(csv.DictReader((found["predictions"] / SUMMARY_CSV).open()))
        assert [r["case_id"] for r in rows] == [p.name.split(".")[0] for p in labels]
        assert all(r["task"] == name for r in rows)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_exported_task_model_predicts_with_nothing_else(trained, name, tmp_path):
    found = trained[name]
    imported = api.import_model(api.export_model(found["run"], tmp_path / "model.zip"), tmp_path / "work")
    result = invoke("predict", "-i", found["test"] / "imagesTr", "-o", tmp_path / "out", "-m", imported, "--no-tta")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / SUMMARY_CSV).is_file() == (TASKS.get(name).report is not None)


# ---------------------------------------------------------------- choosing a task
def test_tasks_lists_every_registered_task_one_line_each():
    result = invoke("tasks")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == TASKS.names()


def test_an_unknown_task_is_refused_with_a_guess_and_nothing_is_written(make_dataset, tmp_path):
    dataset = make_dataset(shape=(24, 24), file_ending=".png", num_labels=2)
    result = invoke("plan", dataset, "-w", tmp_path / "work", "--task", "cervical-lowdos")
    assert result.exit_code == EXIT_PROBLEM
    assert "did you mean 'cervical-lowdose'" in result.output.lower()
    assert files_under(tmp_path / "work") == []


def test_dataset_json_names_the_task_and_its_options(make_dataset, tmp_path):
    dataset = make_dataset(shape=(24, 24), file_ending=".png", num_labels=2,
                           extra_json={"task": {"name": "cervical-lowdose", "options": {"dose_augmentation_p": 0.25}}})
    plan, _ = api.plan(dataset, tmp_path / "work", workers=1)
    assert list(plan.configurations) == ["2d"]  # the task's configurations
    assert plan.configurations["2d"].task.options["dose_augmentation_p"] == 0.25
    assert plan.configurations["2d"].task.options["dose_min"] == 0.075  # expanded with the defaults


@pytest.mark.parametrize("task, message", [({"name": "cervical", "options": {}}, "dataset.json: task.*Did you mean"),
                                           ({"name": "cervical-lowdose", "options": {"dose_min": 3}}, "dose_min 3"),
                                           ({"name": "cervical-lowdose", "options": {"dosemin": 0.1}}, "unknown key")])
def test_bad_task_in_dataset_json_is_refused_naming_it(make_dataset, tmp_path, task, message):
    dataset = make_dataset(shape=(24, 24), file_ending=".png", num_labels=2, extra_json={"task": task})
    with pytest.raises((ConfigError, RegistryError), match=message):
        api.plan(dataset, tmp_path / "work", workers=1)
    assert files_under(tmp_path / "work") == []


def test_a_plan_without_a_task_keeps_its_document_and_hash(make_dataset, tmp_path):
    plan, path = api.plan(make_dataset(shape=(24, 24), file_ending=".png"), tmp_path / "work", workers=1)
    config = plan.configurations["2d"]
    written = json.loads(path.read_text())["configurations"]["2d"]
    assert "task" not in written and "normalize_at" not in written
    assert config.task is None and config.normalize_at == "preprocessing"
    tasked = replace(config, task=task_plan("cervical-lowdose"), normalize_at="loader")
    assert schema.content_hash(tasked) != schema.content_hash(config)  # a task re-preprocesses
    assert schema.from_dict(ConfigPlan, schema.to_dict(tasked)) == tasked


# ---------------------------------------------------------------- deferred normalization and dose augmentation
def _tasked_config(trained, **options) -> tuple[ConfigPlan, Path, list[str]]:
    found = trained["cervical-lowdose"]
    config = load_plan(found["plan"]).configurations["2d"]
    config = replace(config, task=task_plan("cervical-lowdose", {**config.task.options, **options}))
    folder = found["root"] / "work" / "preprocessed" / found["data"].name / "2d"
    return config, folder, sorted(p.stem for p in folder.glob("*_seg.npy"))


def test_preprocessing_stores_raw_intensities_and_their_normalization(trained):
    config, folder, _ = _tasked_config(trained)
    case_id = "cxr_000"
    data, _, properties = load_case(folder, case_id)
    image, _ = read_image(trained["cervical-lowdose"]["data"] / "imagesTr" / f"{case_id}_0000.png")
    np.testing.assert_array_equal(data, image.astype(np.float32))  # photon-domain values, not normalized
    recorded = properties["normalization"][0]
    assert recorded["mean"] == pytest.approx(float(image.mean())) and recorded["maximum"] == float(image.max())


def test_the_dose_simulation_runs_on_raw_intensities_before_the_loader_normalizes(trained, monkeypatch):
    config, folder, cases = _tasked_config(trained, dose_augmentation_p=1.0, dose_min=0.075, dose_max=0.075)
    cases = [c[: -len("_seg")] for c in cases]
    steps = [type(t).__name__ for t in training_source(config, folder, cases, 2, 0.33).transforms.transforms]
    assert steps.index("DoseAugmentation") < steps.index("NormalizeTransform") < steps.index("SpatialTransform")
    seen = []
    real = cervical_lowdose.apply_low_dose
    monkeypatch.setattr(cervical_lowdose, "apply_low_dose", lambda image, *a: seen.append(image.copy()) or real(image, *a))
    source = training_source(config, folder, cases, 2, 0.33)
    batch = BatchPipeline(source.sampler, source.transforms, seed=1, producer_index=0).next_batch()
    assert len(seen) == 2 and all(s.min() >= 0 and s.max() > 100 for s in seen)  # raw detector values
    assert abs(float(batch["data"].mean())) < 1.0  # normalized afterwards


def test_dose_augmentation_happens_only_in_training_and_only_for_the_task(trained):
    config, folder, cases = _tasked_config(trained, dose_augmentation_p=1.0)
    cases = [c[: -len("_seg")] for c in cases]
    validation = [type(t).__name__ for t in validation_source(config, folder, cases, 2, 0.33).transforms.transforms]
    assert "NormalizeTransform" in validation and "DoseAugmentation" not in validation
    untasked = replace(config, task=None, normalize_at="preprocessing")
    plain = [type(t) for t in training_source(untasked, folder, cases, 2, 0.33).transforms.transforms]
    assert NormalizeTransform not in plain and cervical_lowdose.DoseAugmentation not in plain
    plain_source = training_source(untasked, folder, cases, 2, 0.33)
    assert not plain_source.sampler.raw_intensities
    assert set(plain_source.sampler.sample_batch()) == {"data", "target", "case_ids"}  # as before tasks existed
    # prediction: normalized, never simulated (the same input gives the same data every time)
    image, geometry = read_image(trained["cervical-lowdose"]["test"] / "imagesTr" / "cxr_000_0000.png")
    first, _, properties = preprocess_case(image, geometry, None, config)
    second, _, _ = preprocess_case(image, geometry, None, config)
    np.testing.assert_array_equal(first, second)
    assert "normalization" not in properties and abs(float(first.mean())) < 1e-3 and float(first.std()) == pytest.approx(1.0, rel=1e-3)


def test_a_negative_image_is_refused_by_the_task_case_step(trained):
    config, _, _ = _tasked_config(trained)
    image = np.full((1, 32, 32), -5.0, np.float32)
    with pytest.raises(Exception, match="case 'neg'.*non-negative detector values"):
        preprocess_case(image, Geometry.default(2), None, config, "neg")


# ---------------------------------------------------------------- evaluate-dose
def test_evaluate_dose_writes_summary_csv_and_curve_with_one_row_per_dose(trained, tmp_path):
    found = trained["cervical-lowdose"]
    out = tmp_path / "eval"
    result = invoke("evaluate-dose", "-m", found["run"], "-i", found["test"] / "imagesTr", "-r", found["test"] / "labelsTr",
                    "-o", out, "--doses", "0.5,0.075", "--no-tta")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "dose_summary.json").read_text())
    assert [g["dose"] for g in summary["groups"]] == [1.0, 0.5, 0.075]  # full dose always, as the reference
    full, half, low = summary["groups"]
    assert full["ssim_mean"] == 1.0 and full["psnr_db_mean"] is None and full["wilcoxon_p"] is None
    assert low["ssim_mean"] < half["ssim_mean"] < 1.0 and low["psnr_db_mean"] < half["psnr_db_mean"]
    assert 0.0 <= low["wilcoxon_p"] <= 1.0 and all(0.0 <= g["dice_mean"] <= 1.0 for g in summary["groups"])
    rows = list(csv.DictReader((out / "dose_summary.csv").open()))
    assert [float(r["dose"]) for r in rows] == [1.0, 0.5, 0.075] and "iou_spine_sd" in rows[0]
    assert len(list(csv.DictReader((out / "dose_cases.csv").open()))) == 3 * 2
    assert (out / "dose_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("problem", ["missing label", "bad dose", "negative image"])
def test_evaluate_dose_refuses_bad_input_with_exit_2_and_writes_nothing(trained, tmp_path, problem):
    found = trained["cervical-lowdose"]
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for case in ("a", "b"):
        image = np.full((40, 40), 200.0, np.float32)
        if problem == "negative image" and case == "b":
            image[3, 3] = -1.0
        write_image(images / f"{case}_0000.nii.gz", image, Geometry.default(2))
        if not (problem == "missing label" and case == "b"):
            write_image(labels / f"{case}.nii.gz", np.zeros((40, 40), np.uint8), Geometry.default(2))
    doses = "0,0.5" if problem == "bad dose" else "0.5"
    out = tmp_path / "out"
    result = invoke("evaluate-dose", "-m", found["run"], "-i", images, "-r", labels, "-o", out, "--doses", doses)
    assert result.exit_code == EXIT_PROBLEM, result.output
    expected = {"missing label": "no label for b", "bad dose": "dose fraction 0.0", "negative image": "b_0000.nii.gz"}[problem]
    assert expected in result.output
    assert files_under(out) == []
