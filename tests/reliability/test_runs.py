"""Training runs cannot be corrupted by how they are started, stopped or repeated: one training per
run folder (an OS lock a kill releases), every option checked before any work, folds checked before
the first one trains, folds never silently other than asked, and temporaries of killed writers swept.

Each test reproduces a failure of the code before these guarantees; new names are imported inside
the tests so that each one fails on its own there.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from autoseg import api
from autoseg.cli import app
from autoseg.dataset import load_dataset
from autoseg.errors import ConfigError

FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0}
FAST_FLAGS = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--workers", "0"]
STALE = ".x.1234abcd.tmp"  # atomic_write's naming: .{name}.{8 hex}.tmp{suffix}


def invoke(*args) -> SimpleNamespace:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    return SimpleNamespace(code=result.exit_code, text=" ".join(result.output.split()))  # rich wraps lines


def tiny(make_dataset, num_cases: int = 4) -> Path:
    """2D PNG cases, the cheapest to write and train."""
    return make_dataset(num_cases=num_cases, shape=(16, 16), file_ending=".png", num_labels=2)


def planned(make_dataset, tmp_path: Path) -> tuple[Path, Path]:
    dataset, workdir = tiny(make_dataset), tmp_path / "work"
    api.plan(dataset, workdir, workers=1)
    return dataset, workdir


def wait_for(condition, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"process ended early with code {process.returncode}:\n{process.stdout.read()}")
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(0.05)


# ---------------------------------------------------------------- one training per run folder
HOLD_THE_RUN = """
import sys, time
from autoseg import api
def on_event(kind, info):
    if kind == "iteration":
        open(sys.argv[3], "w").close()
        time.sleep(600)  # mid-epoch, holding the run folder: wait for SIGKILL
api.train(sys.argv[1], "2d", 0, sys.argv[2], epochs=1, iters_per_epoch=2, val_iters=1, workers=0, on_event=on_event)
"""


def test_a_second_training_of_a_run_folder_is_refused_and_a_killed_holder_leaves_no_lock(make_dataset, tmp_path):
    from autoseg.trainers.run_folder import KILLED, RUNNING, run_is_active, run_lock, run_status

    dataset, workdir = planned(make_dataset, tmp_path)
    run, marker = workdir / "runs" / dataset.name / "2d" / "fold_0", tmp_path / "training"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_RUN, str(dataset), str(workdir), str(marker)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    try:
        wait_for(marker.exists, 120, holder)
        log_before = (run / "train.log").read_text()

        second = invoke("train", dataset, "2d", "0", "-w", workdir, *FAST_FLAGS)

        assert second.code == 2 and "Traceback" not in second.text
        assert f"process {holder.pid}" in second.text and "another training is using this run folder" in second.text
        assert (run / "train.log").read_text() == log_before  # the refused run wrote nothing there
        assert run_is_active(run) and run_status(run) == RUNNING
    finally:
        holder.kill()
        holder.communicate(timeout=30)

    assert json.loads((run / "run.json").read_text())["status"] == "running"  # the killed process could not say
    assert not run_is_active(run) and run_status(run) == KILLED
    with run_lock(run):  # the OS released the lock with the process: nothing stale to remove
        assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()


def test_a_running_status_reads_as_running_only_while_the_lock_is_held(tmp_path):
    from autoseg.trainers.run_folder import KILLED, RUNNING, run_is_active, run_lock, run_status

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    with run_lock(run):
        assert run_is_active(run) and run_status(run) == RUNNING
    assert not run_is_active(run) and run_status(run) == KILLED


# ---------------------------------------------------------------- options checked before any work
@pytest.mark.parametrize("fold", ["0", "all"])
@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: expected an integer >= 1, found 0"),
    (["--epochs", "-1"], "--epochs: expected an integer >= 1, found -1"),
    (["--iters-per-epoch", "0"], "--iters-per-epoch: expected an integer >= 1, found 0"),
    (["--val-iters", "0"], "--val-iters: expected an integer >= 1, found 0"),
    (["--checkpoint-every", "0"], "--checkpoint-every: expected an integer >= 1 (epochs), found 0"),
    (["--lr", "-1"], "--lr: expected a number > 0, found -1.0"),
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, found 0"),
    (["--early-stop", "0"], "--early-stop: expected an integer >= 1 (epochs), found 0"),
    (["--workers", "-1"], "--workers: expected an integer >= 0 (0: in-process), found -1"),
    (["--seed", "-1"], "--seed: expected an integer >= 0, found -1"),
    (["--precision", "fp8"], "--precision: expected auto, fp32, bf16 or fp16, found 'fp8'"),
    (["--device", "gpu"], "--device: expected auto, cpu, cuda, cuda:N or mps, found 'gpu'"),
    (["--time-budget", "0s"], "time budget '0s' is 0 seconds: expected a duration > 0"),
    (["--time-budget", "-5m"], "time budget '-5m' is not a duration"),
    (["--time-budget", "30x"], "time budget '30x' is not a duration"),
    (["--num-folds", "1"], "--num-folds: expected an integer >= 2, found 1"),
    (["--group-by", "(unclosed"], "--group-by '(unclosed' is not a regular expression"),
])
def test_invalid_training_options_are_refused_with_their_range_before_any_work(make_dataset, tmp_path, fold, flags, message):
    dataset, workdir = tiny(make_dataset), tmp_path / "work"

    result = invoke("train", dataset, "2d", fold, "-w", workdir, *FAST_FLAGS, *flags)

    assert result.code == 2 and message in result.text and "Traceback" not in result.text
    assert not (workdir / "preprocessed").exists() and not (workdir / "runs").exists()
    assert not (workdir / "plans" / dataset.name / "plan.json").exists()


def test_every_train_option_has_a_checked_range():
    from autoseg.config import TRAIN_OPTION_RULES, TrainConfig

    assert set(TRAIN_OPTION_RULES) == {f.name for f in fields(TrainConfig)}
    # options the CLI lacks are named as the API knows them
    for option, value, message in [
        ("momentum", 1.0, "momentum (train option): expected a number >= 0 and < 1, found 1.0"),
        ("weight_decay", -1e-5, "weight_decay (train option): expected a number >= 0, found -1e-05"),
        ("grad_clip", 0.0, "grad_clip (train option): expected a number > 0, found 0.0"),
        ("oversample_foreground", 1.5, "oversample_foreground (train option): expected a fraction >= 0 and <= 1, found 1.5"),
        ("lr", float("nan"), "--lr: expected a number > 0, found nan"),
        ("time_budget_s", 0, "--time-budget: expected a duration > 0 seconds, found 0"),
        ("epochs", 2.5, "--epochs: expected an integer >= 1, found 2.5"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig("Dataset001_Tiny", "2d", "0", **{option: value})


# ---------------------------------------------------------------- folds
@pytest.mark.parametrize("folds, message", [
    ("0,9", "--folds: fold(s) 9 do not exist; this dataset has folds 0-1"),
    ("full", "'full' is no cross-validation fold"),
    ("0,,1", "--folds '0,,1': expected names separated by commas"),
])
def test_folds_outside_the_splits_are_refused_before_fold_0_trains(make_dataset, tmp_path, folds, message):
    dataset, workdir = planned(make_dataset, tmp_path)

    result = invoke("train", dataset, "2d", "all", "--folds", folds, "--num-folds", "2", "-w", workdir, *FAST_FLAGS)

    assert result.code == 2 and message in result.text and "Traceback" not in result.text
    assert not (workdir / "runs").exists() and not (workdir / "preprocessed").exists()


def test_changed_num_folds_or_group_by_is_refused_until_the_splits_are_rebuilt(make_dataset, tmp_path):
    from autoseg.trainers.splits import fold_cases, splits_for

    dataset, workdir = planned(make_dataset, tmp_path)
    splits_path = workdir / "plans" / dataset.name / "splits.json"
    fold_cases(load_dataset(dataset), splits_path, "0", num_folds=3)  # what a first `train ... --num-folds 3` leaves

    for flags, named in [(["--num-folds", "2"], "--num-folds: 3 when they were made"),
                         (["--group-by", r"^(case_\d+)"], "--group-by: None when they were made")]:
        result = invoke("train", dataset, "2d", "0", "-w", workdir, *FAST_FLAGS, *flags)
        assert result.code == 2 and named in result.text and "--rebuild-splits" in result.text
        assert "not comparable" in result.text
    assert not (workdir / "preprocessed").exists()  # refused before any work
    assert len(json.loads(splits_path.read_text())) == 3  # nnU-Net's plain list, unchanged
    assert len(splits_for(load_dataset(dataset), splits_path)) == 3  # options not given keep the folds

    rebuilt = splits_for(load_dataset(dataset), splits_path, num_folds=2, group_by=r"^(case_\d+)", rebuild=True)

    assert len(rebuilt) == 2 and json.loads(splits_path.read_text()) == rebuilt
    assert splits_for(load_dataset(dataset), splits_path, num_folds=2) == rebuilt
    with pytest.raises(ConfigError, match="--num-folds: 2 when they were made"):
        splits_for(load_dataset(dataset), splits_path, num_folds=3)


def test_splits_without_a_record_are_checked_by_what_they_show(make_dataset, tmp_path):
    from autoseg.trainers.splits import splits_for

    # a workdir splits.json from before options were recorded: patient p1 on both sides
    patients = SimpleNamespace(cases=[SimpleNamespace(case_id=c) for c in ("p1_a", "p1_b", "p2_a", "p2_b")],
                               groups=None, splits_file=None)
    legacy = tmp_path / "splits.json"
    legacy.write_text(json.dumps([{"train": ["p1_a", "p2_a"], "val": ["p1_b", "p2_b"]},
                                  {"train": ["p1_b", "p2_b"], "val": ["p1_a", "p2_a"]}]))
    assert len(splits_for(patients, legacy)) == 2  # still read
    with pytest.raises(ConfigError, match=r"--group-by: fold\(s\) 0, 1 have a group's cases in both train and val"):
        splits_for(patients, legacy, group_by=r"^(p\d)_")

    # the dataset's own splits_final.json decides; options that disagree with it are refused
    root = tiny(make_dataset)
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"], "val": ["case_002", "case_003"]},
                                                        {"train": ["case_002", "case_003"], "val": ["case_000", "case_001"]}]))
    assert len(splits_for(load_dataset(root), tmp_path / "work_splits.json", num_folds=2)) == 2
    with pytest.raises(ConfigError, match=r"splits_final\.json.*--num-folds 5 asks for 4 folds, the file has 2"):
        splits_for(load_dataset(root), tmp_path / "work_splits.json", num_folds=5)


# ---------------------------------------------------------------- temporaries of killed writers
@pytest.mark.parametrize("name, removed", [
    (STALE, True), (".checkpoint_latest.pt.0f1e2d3c.tmp", True), (".case_000.nii.gz.89abcdef.tmp.nii.gz", True),
    ("x.1234abcd.tmp", False), (".x.1234abcg.tmp", False), (".x.1234abc.tmp", False), (".x.1234abcd.tmpx", False),
    ("notes.tmp", False), ("checkpoint_latest.pt", False),
])
def test_sweep_removes_only_files_named_like_atomic_write_temporaries(tmp_path, name, removed):
    from autoseg.atomic import sweep_stale_temporaries

    (tmp_path / name).write_bytes(b"half")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / STALE).write_bytes(b"not swept: the sweep is not recursive")

    assert sweep_stale_temporaries(tmp_path) == ([tmp_path / name] if removed else [])
    assert (tmp_path / name).exists() != removed and (tmp_path / "sub" / STALE).exists()


def test_stale_temporaries_in_the_run_folder_are_removed_when_the_run_resumes(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)

    def interrupt(kind: str, info: dict) -> None:
        if kind == "iteration":
            os.kill(os.getpid(), signal.SIGINT)  # a stop after this step: latest is saved

    with pytest.raises(KeyboardInterrupt):
        api.train(dataset, "2d", 0, workdir, on_event=interrupt, **FAST)
    run = workdir / "runs" / dataset.name / "2d" / "fold_0"
    (run / STALE).write_bytes(b"\0" * 1000)  # as a kill during a checkpoint write leaves it
    (run / "notes.txt").write_text("mine")

    api.train(dataset, "2d", 0, workdir, resume=True, **FAST)

    assert not (run / STALE).exists() and (run / "notes.txt").read_text() == "mine"
    assert f"removed {run / STALE}" in (run / "train.log").read_text()


def test_stale_temporaries_in_the_preprocessed_folder_are_removed_when_preprocessing_runs(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    folder = api.preprocess(dataset, "2d", workdir, workers=1)
    stale, live = folder / ".case_000_locations.npz.1234abcd.tmp", folder / ".case_001.npy.5678abcd.tmp"
    for path in (stale, live, folder / "notes.txt"):
        path.write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))  # left by a kill; `live` may be another process's write

    api.preprocess(dataset, "2d", workdir, workers=1)

    assert not stale.exists() and live.exists() and (folder / "notes.txt").exists()
