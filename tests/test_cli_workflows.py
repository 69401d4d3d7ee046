"""End-to-end command lines on phantoms: example -> plan for every clinical task, and the
cross-validation workflow train all -> find-best -> predict --model best -> evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.config import load_plan
from autoseg.io import read_image, read_label
from autoseg.phantoms import PHANTOMS

WIDE = {"COLUMNS": "250"}


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("name", PHANTOMS.names())
def test_every_phantom_is_generated_and_planned(name, tmp_path):
    invoke("example", name, tmp_path / "data", "--cases", 3)
    (dataset,) = (tmp_path / "data").iterdir()
    invoke("plan", dataset, "-w", tmp_path / "work")
    plan = load_plan(tmp_path / "work" / "plans" / dataset.name / "plan.json")
    assert "2d" in plan.configurations
    assert ("3d_fullres" in plan.configurations) == (plan.image_ndim == 3)


def test_cross_validation_find_best_and_predict_with_the_best_model(tmp_path):
    work = tmp_path / "work"
    invoke("example", "lumbar-xray", tmp_path / "data", "--cases", 4)
    dataset = tmp_path / "data" / "Dataset902_LumbarXray"
    fast = ("--epochs", 1, "--iters-per-epoch", 2, "--val-iters", 1, "--workers", 0, "--num-folds", 2)
    invoke("train", dataset, "2d", "all", "-w", work, *fast)

    crossval = json.loads((work / "runs" / dataset.name / "2d" / "crossval" / "crossval.json").read_text())
    assert crossval["complete"] and crossval["num_folds"] == 2 and len(crossval["cases"]) == 4
    invoke("train", dataset, "2d", "all", "-w", work, *fast)  # again: both folds finished, nothing retrained

    result = invoke("find-best", dataset.name, "-w", work)
    assert "2d" in result.output
    best = json.loads((work / "runs" / dataset.name / "best.json").read_text())
    assert [m["config"] for m in best["members"]] == ["2d"] and len(best["members"][0]["checkpoints"]) == 2

    invoke("example", "lumbar-xray", tmp_path / "unseen", "--cases", 2, "--seed", 7)
    images = tmp_path / "unseen" / "Dataset902_LumbarXray" / "imagesTr"
    invoke("predict", "-i", images, "-o", tmp_path / "pred", "--model", "best", "-d", dataset.name, "-w", work, "--no-tta")
    for image in sorted(images.glob("*.png")):
        label, geometry = read_label(tmp_path / "pred" / image.name.replace("_0000", ""))
        source, source_geometry = read_image(image)
        assert label.shape == source.shape[1:] and geometry == source_geometry
    result = invoke("evaluate", tmp_path / "pred", images.parent / "labelsTr")
    assert "vertebra" in result.output and Path(tmp_path / "pred" / "summary.json").is_file()


def test_two_configurations_cross_validated_and_ensembled_by_find_best(tmp_path):
    work = tmp_path / "work"
    invoke("example", "lumbar-ct", tmp_path / "data", "--cases", 4)
    dataset = tmp_path / "data" / "Dataset903_LumbarCT"
    fast = ("--epochs", 1, "--iters-per-epoch", 1, "--val-iters", 1, "--workers", 0, "--num-folds", 2, "--batch-size", 2)
    for config in ("2d", "3d_fullres"):
        invoke("train", dataset, config, "all", "-w", work, *fast)

    invoke("find-best", dataset.name, "-w", work)
    best = json.loads((work / "runs" / dataset.name / "best.json").read_text())
    names = [row["name"] for row in best["ranking"]]
    assert sorted(names) == sorted(["2d", "3d_fullres", "2d+3d_fullres"]), names
    assert best["ranking"][0]["mean_foreground_dice"] >= best["ranking"][-1]["mean_foreground_dice"]
    for member in best["members"]:  # every checkpoint best.json names exists
        assert all((work / "runs" / dataset.name / c).is_file() for c in member["checkpoints"])
