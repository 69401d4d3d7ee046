"""Reliability of inputs and outputs: unusable output paths fail before any work, file-system errors
are one line, empty datasets and NaN/inf images are reported, --continue sweeps half-written files,
and prediction options are checked. Each test reproduces a failure of the code before these guarantees."""
from __future__ import annotations

import json
import logging
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import autoseg.inference.ensemble
import autoseg.inference.predictor
from autoseg import api, ensembling
from autoseg.cli import EXIT_PROBLEM, app
from autoseg.io import Geometry, read_image, write_image

WIDE = {"COLUMNS": "250"}
GEOMETRY = Geometry.default(3, (2.0, 1.0, 1.0))


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.fixture
def model_loads(monkeypatch) -> list[object]:
    """Records every model loading (and still loads), so a test can show that none happened."""
    calls: list[object] = []
    real = autoseg.inference.ensemble.load_models

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(autoseg.inference.predictor, "load_models", recording)
    monkeypatch.setattr(autoseg.inference.ensemble, "load_models", recording)
    return calls


@pytest.fixture
def run_and_inputs(make_run, tmp_path) -> tuple[Path, Path]:
    run = make_run(tmp_path / "run")
    write_image(tmp_path / "in" / "a_0000.nii.gz", np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32),
                GEOMETRY)
    return run, tmp_path / "in"


# ---------------------------------------------------------------- outputs checked before work
def test_predict_to_an_existing_file_exits_2_before_any_model_is_loaded(run_and_inputs, tmp_path, model_loads):
    run, inputs = run_and_inputs
    existing = tmp_path / "predictions.nii.gz"
    existing.write_bytes(b"keep me")
    result = invoke("predict", "-i", inputs, "-o", existing, "-m", run, "--device", "cpu")
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert model_loads == [] and existing.read_bytes() == b"keep me"
    assert str(existing) in result.output and "is a file" in result.output and "Traceback" not in result.output


def test_predict_to_a_folder_under_a_file_exits_2_with_one_line(run_and_inputs, tmp_path, model_loads):
    # chmod cannot make a folder unwritable for root (tests run as root here); a file in the path can
    run, inputs = run_and_inputs
    (tmp_path / "afile").write_text("")
    result = invoke("predict", "-i", inputs, "-o", tmp_path / "afile" / "out", "-m", run, "--device", "cpu")
    assert result.exit_code == EXIT_PROBLEM and model_loads == []
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error:") and str(tmp_path / "afile") in lines[0]


def test_os_error_reaching_the_cli_is_one_line_with_exit_2(monkeypatch, tmp_path):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/x/y")

    monkeypatch.setattr(api, "validate", refused)
    result = invoke("validate", tmp_path)
    assert result.exit_code == EXIT_PROBLEM
    lines = error_lines(result.output)
    assert len(lines) == 1 and "/x/y" in lines[0] and "Permission denied" in lines[0] and "errno 13" in lines[0]


def test_plan_with_a_workdir_that_is_a_file_exits_2_before_fingerprinting(make_dataset, tmp_path, monkeypatch):
    fingerprinted: list[object] = []
    monkeypatch.setattr(api, "compute_fingerprint", lambda *a, **k: fingerprinted.append(a))
    workdir = tmp_path / "work.txt"
    workdir.write_text("not a folder")
    result = invoke("plan", make_dataset(), "-w", workdir, "--workers", "1")
    assert result.exit_code == EXIT_PROBLEM and fingerprinted == []
    assert str(workdir) in result.output and "workdir" in result.output and "Traceback" not in result.output


def test_ensemble_to_an_existing_file_exits_2_before_averaging(tmp_path, monkeypatch):
    folders = [tmp_path / "p1", tmp_path / "p2"]
    for folder in folders:
        ensembling.save_probabilities(folder / "a.npz", np.full((2, 4, 4, 4), 0.5, np.float32), [0, 1], ["bg", "fg"])
        write_image(folder / "a.nii.gz", np.zeros((4, 4, 4), np.uint8), GEOMETRY)
    averaged: list[object] = []
    monkeypatch.setattr(ensembling, "average_probabilities", lambda paths: averaged.append(paths))
    existing = tmp_path / "out"
    existing.write_text("")
    result = invoke("ensemble", *folders, "-o", existing)
    assert result.exit_code == EXIT_PROBLEM and averaged == []
    assert str(existing) in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- datasets
def test_empty_dataset_is_refused_by_validate(tmp_path):
    root = tmp_path / "Dataset009_Empty"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "bone": 1},
                                                   "numTraining": 0, "file_ending": ".nii.gz"}))
    result = invoke("validate", root, "--workers", "1")
    assert result.exit_code == EXIT_PROBLEM
    assert str(root) in result.output and "no training cases" in result.output and "imagesTr/" in result.output


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nan_and_inf_in_nifti_images_are_reported_by_validate_naming_the_file(make_dataset, ending):
    root = make_dataset(file_ending=ending)
    for case, value in (("case_001", np.nan), ("case_002", np.inf)):
        path = root / "imagesTr" / f"{case}_0000{ending}"
        image, geometry = read_image(path)
        image[0, 0, 0, :2] = value
        write_image(path, image[0], geometry)
    result = invoke("validate", root, "--workers", "1")
    assert result.exit_code == EXIT_PROBLEM
    for case in ("case_001", "case_002"):
        assert f"imagesTr/{case}_0000{ending}: 2 NaN/inf value(s)" in result.output
    assert "case_000" not in result.output


def test_zero_spacing_in_a_nifti_header_is_warned_about(tmp_path, caplog):
    path = write_image(tmp_path / "flat.nii", np.zeros((3, 4, 5), np.int16), GEOMETRY)
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 76 + 4 * 2, 0.0)  # pixdim[2]: the y spacing
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="autoseg.io"):
        read_image(path)
    assert any(str(path) in r.getMessage() and "spacing" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- prediction
def test_predict_continue_removes_stale_temporaries_and_keeps_other_files(run_and_inputs, tmp_path):
    run, inputs = run_and_inputs
    out = tmp_path / "out"
    write_image(out / "a.nii.gz", np.ones((8, 8, 8), np.uint8), GEOMETRY)  # finished: nothing left to predict
    stale, fresh = out / ".case.nii.gz.1234abcd.tmp.nii.gz", out / ".b.nii.gz.0badcafe.tmp.nii.gz"
    others = [out / "notes.txt", out / ".case.nii.gz.xyz.tmp", out / "case.nii.gz.1234abcd.tmp.nii.gz"]
    for path in (stale, fresh, *others):
        path.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))  # a kill's leftover; `fresh` may be another run's file in progress
    result = invoke("predict", "-i", inputs, "-o", out, "-m", run, "--device", "cpu", "--continue")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (out / "a.nii.gz", fresh, *others))


@pytest.mark.parametrize("option, value, allowed", [("--max-tile-growth", "0", ">= 1"), ("--step", "0", "(0, 1]"),
                                                    ("--precision", "fp8", "auto, fp32, bf16")])
def test_predict_options_out_of_range_are_refused_before_loading(run_and_inputs, tmp_path, model_loads,
                                                                  option, value, allowed):
    run, inputs = run_and_inputs
    result = invoke("predict", "-i", inputs, "-o", tmp_path / "out", "-m", run, "--device", "cpu", option, value)
    assert result.exit_code == EXIT_PROBLEM and model_loads == []
    assert allowed in result.output and value in result.output
    assert not (tmp_path / "out").exists()
