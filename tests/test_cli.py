"""Command line: exit codes, what is printed, and what is (not) written, via typer's CliRunner."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cli import EXIT_PROBLEM, app
from autoseg.config import load_fingerprint, load_plan
from autoseg.io import Geometry, read_label, write_image

SHAPE = (16, 24, 24)  # big enough for a U-Net with at least one pooling step per axis group
WIDE = {"COLUMNS": "250"}  # rich wraps at the terminal width; keep table cells and paths on one line


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def clean_dataset(make_dataset) -> Path:
    return make_dataset(num_cases=3, shape=SHAPE)


@pytest.fixture
def broken_dataset(make_dataset) -> Path:
    """case_001's label has the wrong shape; case_002's label holds the undeclared value 7."""
    root = make_dataset(num_cases=3, shape=SHAPE)
    write_image(root / "labelsTr/case_001.nii.gz", np.zeros((16, 24, 23), np.uint8), Geometry.default(3, (3.0, 0.8, 0.8)))
    label, geometry = read_label(root / "labelsTr/case_002.nii.gz")
    label[0, 0, 0] = 7
    write_image(root / "labelsTr/case_002.nii.gz", label, geometry)
    return root


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("validate", "plan", "preprocess", "train", "example"):
        assert command in result.output


def test_plan_help_documents_its_options():
    result = invoke("plan", "--help")
    assert result.exit_code == 0
    assert "--workdir" in result.output and "--configs" in result.output and "--gpu-memory-gb" in result.output


def test_plan_writes_plan_and_fingerprint_and_prints_the_table(clean_dataset, tmp_path):
    workdir = tmp_path / "work"
    result = invoke("plan", str(clean_dataset), "--workdir", str(workdir), "--workers", "1")
    assert result.exit_code == 0, result.output
    plans = workdir / "plans" / "Dataset001_Tiny"
    assert files_under(workdir) == [plans / "fingerprint.json", plans / "plan.json"]
    plan, fingerprint = load_plan(plans / "plan.json"), load_fingerprint(plans / "fingerprint.json")
    assert len(fingerprint.cases) == 3 and plan.dataset_name == "Dataset001_Tiny"
    assert list(plan.configurations) == ["2d", "3d_fullres"]
    # The table's layout is render.py's business; its content is checked here.
    assert "Dataset001_Tiny" in result.output and "spacing" in result.output and "batch" in result.output
    compact = result.output.replace(" ", "")
    for name, config in plan.configurations.items():
        assert name in result.output and "x".join(map(str, config.patch_size)) in compact
    assert "plan written to" in result.output and "plan.json" in result.output


def test_plan_configs_option_plans_only_those(clean_dataset, tmp_path):
    result = invoke("plan", str(clean_dataset), "-w", str(tmp_path / "w"), "--workers", "1", "--configs", "3d_fullres")
    assert result.exit_code == 0, result.output
    plan = load_plan(tmp_path / "w/plans/Dataset001_Tiny/plan.json")
    assert list(plan.configurations) == ["3d_fullres"]


def test_plan_of_a_broken_dataset_exits_2_names_both_files_and_writes_nothing(broken_dataset, tmp_path):
    workdir = tmp_path / "work"
    result = invoke("plan", str(broken_dataset), "--workdir", str(workdir), "--workers", "1")
    assert result.exit_code == EXIT_PROBLEM == 2
    assert "labelsTr/case_001.nii.gz" in result.output  # the label of the wrong shape
    assert "labelsTr/case_002.nii.gz" in result.output and "[7]" in result.output  # the undeclared value
    assert "2 problem(s)" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert files_under(workdir) == []


def test_plan_with_an_unknown_configuration_exits_2_with_a_clear_message(clean_dataset, tmp_path):
    workdir = tmp_path / "work"
    result = invoke("plan", str(clean_dataset), "-w", str(workdir), "--workers", "1", "--configs", "4d")
    assert result.exit_code == 2
    assert "error:" in result.output and "'4d'" in result.output and "3d_fullres" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert files_under(workdir) == []


def test_plan_of_a_missing_folder_exits_2(tmp_path):
    result = invoke("plan", str(tmp_path / "absent"), "-w", str(tmp_path / "w"))
    assert result.exit_code == 2
    assert "not a folder" in result.output and "Traceback" not in result.output


def test_validate_clean_dataset_exits_0(clean_dataset):
    result = invoke("validate", str(clean_dataset), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "3 training cases" in result.output


def test_validate_broken_dataset_exits_2_listing_every_problem(broken_dataset):
    result = invoke("validate", str(broken_dataset), "--workers", "1")
    assert result.exit_code == 2
    assert "labelsTr/case_001.nii.gz" in result.output and "labelsTr/case_002.nii.gz" in result.output
    assert "Traceback" not in result.output


def test_validate_reports_a_broken_dataset_json(clean_dataset):
    (clean_dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    result = invoke("validate", str(clean_dataset), "--workers", "1")
    assert result.exit_code == 2
    assert "channel_names" in result.output and "file_ending" in result.output


def test_problem_lines_are_printed_verbatim(clean_dataset):
    (clean_dataset / "labelsTr/case_000.nii.gz").rename(clean_dataset / "labelsTr/scan[abc].nii.gz")
    result = invoke("validate", str(clean_dataset), "--workers", "1")
    assert result.exit_code == 2
    assert "labelsTr/scan[abc].nii.gz" in result.output


def test_train_hands_the_deep_supervision_ratio_to_the_config_check_which_refuses_1_5(clean_dataset, tmp_path):
    result = invoke("train", str(clean_dataset), "2d", "0", "-w", str(tmp_path / "work"), "--deep-supervision-ratio", "1.5")

    assert result.exit_code == EXIT_PROBLEM
    assert "--deep-supervision-ratio" in result.output and "1.5" in result.output
    assert not (tmp_path / "work" / "runs").exists()
