"""Model files are data, never code, and damaged ones are refused (issue 18, points 1, 2 and 10).

Every test reproduces a failure of the old loader first: a crafted pickle ran code at load time, a
checkpoint with flipped bytes or NaN weights predicted silently, bundles could point anywhere, and
a model trained on 2D images labelled 3D volumes without a word.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoseg import api, io
from autoseg.checkpoint import load_checkpoint, save_checkpoint
from autoseg.cli import EXIT_PROBLEM, app
from autoseg.errors import CheckpointError, ConfigError
from autoseg.inference.bundle_predictor import BundlePredictor
from autoseg.inference.ensemble import load_models
from autoseg.model_selection import find_best
from autoseg.sharing import export_model, import_model

WIDE = {"COLUMNS": "250"}  # rich wraps at the terminal width; keep paths on one line
TRAIN = {"epochs": 2, "iters_per_epoch": 2, "val_iters": 1, "workers": 0, "deterministic": True, "checkpoint_every": 1}


class RunsCode:
    """Unpickling this calls open(marker, "w"): the marker file appears if and only if code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def plant_code(checkpoint: Path, marker: Path) -> Path:
    """Rewrite a checkpoint as its own content plus an object that runs code when unpickled."""
    payload = torch.load(checkpoint, weights_only=True)
    torch.save({**payload, "note": RunsCode(marker)}, checkpoint)
    return checkpoint


def flip_tensor_bytes(checkpoint: Path) -> Path:
    """Invert 8 bytes in the middle of the largest weight's data, where they sit in the file."""
    state = torch.load(checkpoint, weights_only=False)["model_state"]  # a file the test wrote itself, any format
    weight = max(state.values(), key=lambda t: t.numel()).contiguous()
    data = weight.reshape(-1).view(torch.uint8).numpy().tobytes()
    raw = bytearray(checkpoint.read_bytes())
    start = raw.find(data)
    assert start >= 0 and raw.find(data, start + 1) < 0  # found exactly once
    middle = start + len(data) // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    checkpoint.write_bytes(bytes(raw))
    return checkpoint


def volume(folder: Path, shape: tuple[int, ...] = (5, 12, 12), name: str = "scan.nii.gz") -> Path:
    """A CT-like volume, or with a 2D shape and a .png name an X-ray-like image."""
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8 if len(shape) == 2 else np.float32)
    spacing = (3.0, 1.0, 1.0) if len(shape) == 3 else (1.0, 1.0)
    return io.write_image(folder / name, image, io.Geometry.default(len(shape), spacing))


def set_image_ndim(checkpoint: Path, image_ndim: int) -> None:
    payload = torch.load(checkpoint, weights_only=True)
    save_checkpoint(checkpoint, {**payload, "image_ndim": image_ndim})


# ---------------------------------------------------------------- point 1: data, never code
def test_import_model_refuses_a_checkpoint_that_would_run_code(make_run, tmp_path: Path) -> None:
    zip_path = export_model(make_run(tmp_path / "fold_0"), tmp_path / "model.zip")
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unpacked")
    marker = tmp_path / "marker"
    plant_code(tmp_path / "unpacked" / "3d_fullres" / "fold_0.pt", marker)
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(crafted, "w") as archive:
        for name in ("model.json", "3d_fullres/fold_0.pt"):
            archive.write(tmp_path / "unpacked" / name, name)

    with pytest.raises(CheckpointError, match=r"crafted\.zip:3d_fullres/fold_0\.pt: refused.*could run code"):
        import_model(crafted, workdir=tmp_path / "work")
    assert not marker.exists()
    assert not (tmp_path / "work" / "models" / "crafted").exists()


def test_predicting_with_a_run_folder_that_would_run_code_is_refused(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ndim=3)
    marker = tmp_path / "marker"
    plant_code(run / "checkpoint_final.pt", marker)

    with pytest.raises(CheckpointError, match=r"checkpoint_final\.pt: refused: .*could run code"):
        load_models([run])
    source = volume(tmp_path / "in")
    with pytest.raises(CheckpointError, match="refused"):
        api.predict_folder([source], tmp_path / "out", [run], device="cpu")
    result = invoke("predict", "-i", source, "-o", tmp_path / "out_cli", "-m", run, "--device", "cpu")
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert "refused" in result.output and "Traceback" not in result.output
    result = invoke("export-model", run, "-o", tmp_path / "shared.zip")
    assert result.exit_code == EXIT_PROBLEM and "refused" in result.output, result.output
    assert not marker.exists()


def test_training_checkpoints_load_as_plain_data_and_resume_identically(make_dataset, tmp_path: Path) -> None:
    dataset = make_dataset(num_cases=3, shape=(16, 16), file_ending=".png", num_labels=2)
    workdir = tmp_path / "work"
    api.plan(dataset, workdir, workers=1)
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "reference", **TRAIN)
    interrupted = interrupted_run(dataset, workdir, tmp_path / "interrupted")

    training = torch.load(interrupted / "checkpoint_latest.pt", weights_only=True)["training"]
    assert {"optimizer", "scaler", "state", "rng", "train_config", "plan_hash"} <= set(training)
    assert set(training["rng"]) == {"torch", "numpy", "python"}
    api.train(dataset, "2d", 0, workdir, run_dir=interrupted, resume=True, **TRAIN)

    expected, actual = (load_checkpoint(r / "checkpoint_final.pt")["model_state"] for r in (reference, interrupted))
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def interrupted_run(dataset: Path, workdir: Path, run_dir: Path) -> Path:
    """A run stopped by SIGINT mid-epoch 2: checkpoint_best.pt from epoch 1, checkpoint_latest.pt newer."""

    def on_event(kind: str, info: dict) -> None:
        if kind == "iteration" and (info["epoch"], info["iteration"]) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        api.train(dataset, "2d", 0, workdir, run_dir=run_dir, on_event=on_event, **TRAIN)
    return run_dir


@pytest.mark.parametrize("kind", ["model.json", "best.json"])
@pytest.mark.parametrize("escape", ["relative", "absolute"])
def test_bundle_paths_outside_their_folder_are_refused(make_run, tmp_path: Path, kind: str, escape: str) -> None:
    elsewhere = make_run(tmp_path / "elsewhere" / "fold_0", ndim=2) / "checkpoint_final.pt"
    folder = tmp_path / "work" / ("models/tiny" if kind == "model.json" else "runs/Dataset001_Tiny")
    folder.mkdir(parents=True)
    pointer = os.path.relpath(elsewhere, folder) if escape == "relative" else str(elsewhere)
    bundle = folder / kind
    bundle.write_text(json.dumps({"dataset_name": "Dataset001_Tiny", "labels": {"background": 0, "vertebra": 1, "disc": 2},
                                  "members": [{"config": "2d", "checkpoints": [pointer]}]}))

    with pytest.raises(CheckpointError, match=rf"{kind}: checkpoint path\(s\) .*fold_0/checkpoint_final.pt lead outside"):
        BundlePredictor(bundle, device="cpu")
    if kind == "best.json":  # as `predict --model best` finds it
        source = volume(tmp_path / "in", shape=(12, 12), name="xray.png")
        result = invoke("predict", "-i", source, "-o", tmp_path / "out", "-m", "best", "-d", "Dataset001_Tiny",
                        "-w", tmp_path / "work", "--device", "cpu")
        assert result.exit_code == EXIT_PROBLEM and "lead outside" in result.output, result.output


def test_find_best_refuses_configuration_names_that_leave_the_runs_folder(tmp_path: Path) -> None:
    (tmp_path / "work" / "runs" / "Dataset001_Tiny").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"configuration name '\.\./\.\./x' is not a plain folder name"):
        find_best("Dataset001_Tiny", tmp_path / "work", configs=["../../x"])


# ---------------------------------------------------------------- point 2: damage is refused
def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ndim=3)
    damaged = flip_tensor_bytes(run / "checkpoint_final.pt")
    with pytest.raises(CheckpointError, match=rf"{damaged}: damaged: the content of 'model_state' does not match"):
        load_models([run])
    result = invoke("predict", "-i", volume(tmp_path / "in"), "-o", tmp_path / "out", "-m", run, "--device", "cpu")
    assert result.exit_code == EXIT_PROBLEM and "damaged" in result.output, result.output
    assert not (tmp_path / "out" / "scan.nii.gz").exists()


def test_a_damaged_checkpoint_inside_a_model_zip_is_refused(make_run, tmp_path: Path) -> None:
    zip_path = export_model(make_run(tmp_path / "fold_0"), tmp_path / "model.zip")
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(tmp_path / "unpacked")
    flip_tensor_bytes(tmp_path / "unpacked" / "3d_fullres" / "fold_0.pt")
    damaged = tmp_path / "damaged.zip"  # a fresh zip: its CRCs match the damaged bytes
    with zipfile.ZipFile(damaged, "w") as archive:
        for name in ("model.json", "3d_fullres/fold_0.pt"):
            archive.write(tmp_path / "unpacked" / name, name)
    with pytest.raises(CheckpointError, match=r"damaged\.zip:3d_fullres/fold_0\.pt: damaged"):
        import_model(damaged, workdir=tmp_path / "work")


def test_non_finite_weights_are_refused(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", ndim=2)
    path = run / "checkpoint_final.pt"
    payload = torch.load(path, weights_only=True)
    name = next(k for k, t in payload["model_state"].items() if t.is_floating_point())
    payload["model_state"][name].view(-1)[0] = float("nan")
    save_checkpoint(path, payload)  # checksums match: the NaN was there when it was saved
    with pytest.raises(CheckpointError, match=rf"{path}: 1 weight tensor\(s\) hold NaN or infinite values \({name}\)"):
        load_models([run])


def test_resume_falls_back_to_the_intact_checkpoint_and_refuses_when_both_are_damaged(make_dataset, tmp_path: Path,
                                                                                       caplog) -> None:
    dataset = make_dataset(num_cases=3, shape=(16, 16), file_ending=".png", num_labels=2)
    workdir = tmp_path / "work"
    api.plan(dataset, workdir, workers=1)
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "reference", **TRAIN)
    both = interrupted_run(dataset, workdir, tmp_path / "both")
    for kind in ("latest", "best"):
        flip_tensor_bytes(both / f"checkpoint_{kind}.pt")
    with pytest.raises(CheckpointError, match=r"(?s)no intact checkpoint to resume from(?=.*checkpoint_latest\.pt: damaged)"
                                              r"(?=.*checkpoint_best\.pt: damaged).*without --resume"):
        api.train(dataset, "2d", 0, workdir, run_dir=both, resume=True, **TRAIN)

    run = interrupted_run(dataset, workdir, tmp_path / "one")
    flip_tensor_bytes(run / "checkpoint_latest.pt")
    with caplog.at_level(logging.WARNING):
        api.train(dataset, "2d", 0, workdir, run_dir=run, resume=True, **TRAIN)
    assert "checkpoint_latest.pt: damaged" in caplog.text and "resuming from checkpoint_best.pt instead" in caplog.text
    expected, actual = (load_checkpoint(r / "checkpoint_final.pt")["model_state"] for r in (reference, run))
    assert all(torch.equal(actual[k], expected[k]) for k in expected)  # deterministic: the same weights


def test_checkpoints_of_an_older_format_are_refused_with_the_fix(make_run, tmp_path: Path) -> None:
    path = make_run(tmp_path / "run", ndim=2) / "checkpoint_final.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format_version": 1}, path)
    with pytest.raises(CheckpointError, match=r"format 1 is not supported \(expected 2\).*re-train"):
        load_models([path])


# ---------------------------------------------------------------- point 10: dimensionality
def test_a_model_trained_on_2d_images_refuses_a_volume_unless_slicewise(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "xray_run", ndim=2)
    source = volume(tmp_path / "in")
    with pytest.raises(ConfigError, match=rf"\({source}\): is a 3D image, but the model '2d' of Dataset001_Tiny "
                                          r"\(.*xray_run/checkpoint_final.pt\) was trained on 2D images \(CT\).*--slicewise"):
        api.predict_folder([source], tmp_path / "out", [run], device="cpu")
    result = invoke("predict", "-i", source, "-o", tmp_path / "out", "-m", run, "--device", "cpu")
    assert result.exit_code == EXIT_PROBLEM and "trained on 2D images" in result.output, result.output
    assert not (tmp_path / "out" / "scan.nii.gz").exists()

    result = invoke("predict", "-i", source, "-o", tmp_path / "out", "-m", run, "--device", "cpu", "--slicewise")
    assert result.exit_code == 0, result.output
    assert io.read_label(tmp_path / "out" / "scan.nii.gz")[0].shape == (5, 12, 12)


def test_a_model_trained_on_3d_images_refuses_a_2d_image(make_run, tmp_path: Path) -> None:
    run = make_run(tmp_path / "ct_run", ndim=2)
    set_image_ndim(run / "checkpoint_final.pt", 3)  # a 2d configuration of CT volumes
    source = volume(tmp_path / "in", shape=(12, 12), name="xray.png")
    with pytest.raises(ConfigError, match=rf"\({source}\): is a 2D image, but .* was trained on 3D images"):
        api.predict_folder([source], tmp_path / "out", [run], device="cpu")
    with pytest.raises(ConfigError, match="was trained on 3D images"):
        api.predict(np.zeros((12, 12), np.float32), [run], device="cpu")
    assert api.predict_folder([volume(tmp_path / "ct")], tmp_path / "out", [run], device="cpu")  # 3D: slice by slice

