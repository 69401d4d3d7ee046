"""Training runs end to end on tiny datasets: run folder contents, interruption and resume,
determinism, and the errors a user meets (changed options, damaged data, unsupported devices).

Interruptions are real signals: SIGINT to this process from an iteration callback (an exact point
mid-epoch), Ctrl-C to a CLI process group, and SIGKILL to a training subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from autoseg import api, schema
from autoseg.checkpoint import config_plan_of, load_checkpoint
from autoseg.cli import app
from autoseg.config import load_plan
from autoseg.errors import ConfigError, PreprocessingError
from autoseg.networks import build_network
from autoseg.trainers.interrupt import StopRequest

FAST = {"iters_per_epoch": 2, "val_iters": 1, "workers": 0}
RUN_FILES = {"checkpoint_final.pt", "checkpoint_best.pt", "run.json", "progress.png", "train.log"}


def planned(make_dataset, tmp_path: Path, **dataset_options) -> tuple[Path, Path]:
    """A tiny dataset and a workdir holding its plan (tiny images: patch = whole image)."""
    options = {"num_cases": 3, "shape": (8, 16, 16), "num_labels": 2, **dataset_options}
    dataset = make_dataset(**options)
    workdir = tmp_path / "work"
    api.plan(dataset, workdir, workers=1)
    return dataset, workdir


def run_record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def interrupt_at(epoch: int, iteration: int):
    """An on_event callback that sends this process SIGINT once the given iteration is done."""

    def on_event(kind: str, info: dict) -> None:
        if kind == "iteration" and (info["epoch"], info["iteration"]) == (epoch, iteration):
            os.kill(os.getpid(), signal.SIGINT)

    return on_event


def wait_for(condition, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended early with code {process.returncode}:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


def model_state(run: Path, kind: str = "final") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / f"checkpoint_{kind}.pt")["model_state"]


# ---------------------------------------------------------------- complete runs
def test_3d_run_writes_checkpoints_and_run_documents(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)

    run = api.train(dataset, "3d_fullres", 0, workdir, epochs=2, **FAST)

    assert RUN_FILES <= {p.name for p in run.iterdir()}
    record = run_record(run)
    assert record["status"] == "finished" and record["epochs_done"] == 2
    assert record["train_config"]["epochs"] == 2 and record["train_config"]["config"] == "3d_fullres"
    plan = load_plan(workdir / "plans" / dataset.name / "plan.json")
    assert record["plan_hash"] == schema.content_hash(plan.config("3d_fullres"))
    assert {"autoseg", "torch", "numpy", "python"} <= set(record["versions"])
    assert isinstance(record["command_line"], list) and record["command_line"]
    assert len(record["train_cases"]) == 2 and len(record["val_cases"]) == 1  # 3 cases: 3 folds
    assert "epoch 2:" in (run / "train.log").read_text()
    assert Image.open(run / "progress.png").size == (900, 420)
    # the final checkpoint alone rebuilds the network, no training code needed
    payload = load_checkpoint(run / "checkpoint_final.pt")
    network = build_network(config_plan_of(payload).network)
    network.load_state_dict(payload["model_state"])
    network.eval()
    with torch.no_grad():
        output = network(torch.zeros(1, 1, 8, 16, 16))
    logits = output[0] if isinstance(output, (list, tuple)) else output
    assert logits.shape == (1, 2, 8, 16, 16)


def test_2d_png_run_with_a_loader_worker(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(32, 32), file_ending=".png")

    run = api.train(dataset, "2d", "full", workdir, epochs=1, iters_per_epoch=3, val_iters=2, workers=1)

    assert RUN_FILES <= {p.name for p in run.iterdir()}
    record = run_record(run)
    assert record["status"] == "finished" and record["train_config"]["workers"] == 1
    assert record["train_cases"] == record["val_cases"] == ["case_000", "case_001", "case_002"]
    history = load_checkpoint(run / "checkpoint_final.pt")["training"]["state"]["history"]
    assert len(history["train_loss"]) == 1 and np.isfinite(history["train_loss"][0])
    assert 0.0 <= history["pseudo_dice"][0] <= 1.0


# ---------------------------------------------------------------- interruption and resume
CLI_EPOCHS = 8  # long enough that a signal sent in epoch 2 always lands before the end


def cli_train(dataset: Path, workdir: Path, *extra: str, **popen_options) -> subprocess.Popen:
    command = [sys.executable, "-c", "from autoseg.cli import app; app()", "train", str(dataset), "2d", "0",
               "-w", str(workdir), "--epochs", str(CLI_EPOCHS), "--iters-per-epoch", "12", "--val-iters", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                            **popen_options)


def interrupt_cli_run(dataset: Path, workdir: Path, signal_number: int) -> Path:
    """Start `autoseg train` with a loader worker, signal its process group in epoch 2, check that it
    stopped cleanly; returns the run folder."""
    run = workdir / "runs" / dataset.name / "2d" / "fold_0"
    # its own session: Ctrl-C in a terminal reaches the whole process group, loader worker included
    process = cli_train(dataset, workdir, "--workers", "1", start_new_session=True)
    wait_for(lambda: "epoch 1:" in ((run / "train.log").read_text() if (run / "train.log").is_file() else ""), 90, process)
    time.sleep(0.4)  # well inside epoch 2
    os.killpg(process.pid, signal_number)
    output = process.communicate(timeout=60)[0]

    assert process.returncode == 130, output
    assert "Traceback" not in output
    record = run_record(run)
    assert record["status"] == "interrupted" and record["epochs_done"] >= 1
    state = load_checkpoint(run / "checkpoint_latest.pt")["training"]["state"]
    assert (state["epoch"], state["iteration"]) != (CLI_EPOCHS, 0)  # stopped before the end
    assert not (run / "checkpoint_final.pt").exists()
    return run


def test_sigterm_to_the_process_group_stops_cleanly(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(16, 16), file_ending=".png")
    interrupt_cli_run(dataset, workdir, signal.SIGTERM)  # a batch scheduler's "time is up"


def test_ctrl_c_saves_latest_and_resume_finishes(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(16, 16), file_ending=".png")
    run = interrupt_cli_run(dataset, workdir, signal.SIGINT)

    resumed = cli_train(dataset, workdir, "--workers", "0", "--resume")  # workers may change on resume
    output = resumed.communicate(timeout=120)[0]

    assert resumed.returncode == 0, output
    assert run_record(run)["status"] == "finished" and run_record(run)["epochs_done"] == CLI_EPOCHS
    assert (run / "checkpoint_final.pt").is_file()


KILLABLE_RUN = """
import json, sys, time
from autoseg import api
marker = sys.argv[3]
def on_event(kind, info):
    if kind == "iteration" and (info["epoch"], info["iteration"]) == (1, 2):
        open(marker, "w").close()
        time.sleep(600)  # mid-epoch 2, well after checkpoint_latest.pt of epoch 1: wait for SIGKILL
api.train(sys.argv[1], "2d", 0, sys.argv[2], run_dir=sys.argv[4], on_event=on_event, **json.loads(sys.argv[5]))
"""


def kill_mid_epoch_2(dataset: Path, workdir: Path, tmp_path: Path, options: dict) -> Path:
    """Run training in a subprocess, SIGKILL it mid-epoch 2 and return its run folder."""
    marker, killed = tmp_path / "waiting", tmp_path / "sigkill"
    arguments = [str(dataset), str(workdir), str(marker), str(killed), json.dumps(options)]
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    wait_for(marker.exists, 90, process)
    process.kill()
    process.communicate(timeout=30)
    return killed


def test_interrupted_and_killed_runs_resume_to_identical_weights(make_dataset, tmp_path):
    # 2d on 3D cases: patches are random slices, so training and validation batches both vary
    dataset, workdir = planned(make_dataset, tmp_path, shape=(6, 16, 16))
    options = {"epochs": 2, "iters_per_epoch": 3, "val_iters": 2, "workers": 0, "deterministic": True, "checkpoint_every": 1}
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "reference", **options)

    # SIGINT mid-epoch: stops after the current step, resumes from that exact step
    with pytest.raises(KeyboardInterrupt):
        api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "sigint", on_event=interrupt_at(1, 1), **options)
    assert run_record(tmp_path / "sigint")["status"] == "interrupted"
    state = load_checkpoint(tmp_path / "sigint" / "checkpoint_latest.pt")["training"]["state"]
    assert (state["epoch"], state["iteration"]) == (1, 1)
    api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "sigint", resume=True, **options)

    # SIGKILL mid-epoch: nothing is saved, the run resumes from the last epoch's checkpoint
    killed = kill_mid_epoch_2(dataset, workdir, tmp_path, options)
    assert run_record(killed)["status"] == "running"  # nobody could say otherwise
    api.train(dataset, "2d", 0, workdir, run_dir=killed, resume=True, **options)

    expected = model_state(reference)
    expected_history = load_checkpoint(reference / "checkpoint_final.pt")["training"]["state"]["history"]
    for run in (tmp_path / "sigint", killed):
        assert run_record(run)["status"] == "finished"
        actual = model_state(run)
        assert actual.keys() == expected.keys()
        assert all(torch.equal(actual[k], expected[k]) for k in expected), f"{run.name}: weights differ"
        assert load_checkpoint(run / "checkpoint_final.pt")["training"]["state"]["history"] == expected_history


def test_run_killed_before_its_first_periodic_checkpoint_resumes_from_best(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(6, 16, 16))
    options = {"epochs": 2, "iters_per_epoch": 3, "val_iters": 2, "workers": 0, "deterministic": True, "checkpoint_every": 100}
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "reference", **options)
    killed = kill_mid_epoch_2(dataset, workdir, tmp_path, options)
    assert not (killed / "checkpoint_latest.pt").exists() and (killed / "checkpoint_best.pt").is_file()

    api.train(dataset, "2d", 0, workdir, run_dir=killed, resume=True, **options)

    expected, actual = model_state(reference), model_state(killed)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_resume_refuses_changed_options_and_explains_missing_or_finished_runs(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(16, 16), file_ending=".png")
    options = {"epochs": 2, **FAST}
    with pytest.raises(KeyboardInterrupt):
        api.train(dataset, "2d", 0, workdir, on_event=interrupt_at(0, 1), **options)

    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.02.*original options"):
        api.train(dataset, "2d", 0, workdir, resume=True, **{**options, "lr": 0.02})
    with pytest.raises(ConfigError, match="no checkpoint to resume from.*without --resume"):
        api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "empty_run", resume=True, **options)

    run = api.train(dataset, "2d", 0, workdir, resume=True, **options)
    assert run_record(run)["status"] == "finished"
    with pytest.raises(ConfigError, match="already finished.*nothing to resume"):
        api.train(dataset, "2d", 0, workdir, resume=True, **options)


# ---------------------------------------------------------------- user errors
def test_truncated_preprocessed_case_is_named(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path, shape=(16, 16), file_ending=".png")
    folder = api.preprocess(dataset, "2d", workdir, workers=1)
    damaged = folder / "case_001.npy"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    with pytest.raises(PreprocessingError, match=r"case_001\.npy.*truncated") as caught:
        api.train(dataset, "2d", "full", workdir, epochs=1, **FAST)

    assert "autoseg preprocess --force" in str(caught.value)
    record = run_record(workdir / "runs" / dataset.name / "2d" / "fold_full")
    assert record["status"] == "failed" and "case_001" in record["error"]


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp16", "--device", "cpu"], "fp16 is not supported on CPU"),
    (["--device", "cuda"], "no CUDA GPU is available"),
])
def test_unsupported_precision_or_device_is_a_clear_cli_error(make_dataset, tmp_path, flags, message):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    dataset, workdir = planned(make_dataset, tmp_path, shape=(16, 16), file_ending=".png")

    result = CliRunner().invoke(app, ["train", str(dataset), "2d", "0", "-w", str(workdir), "--workers", "0", *flags])

    assert result.exit_code == 2
    assert message in " ".join(result.output.split())  # rich wraps long lines
    assert "Traceback" not in result.output


def test_stop_request_defers_the_first_signal_and_aborts_on_the_second():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's polite kill counts as a stop request too
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here at the latest
    assert signal.getsignal(signal.SIGINT) is before
