"""Scale-out: data-parallel training on 2 ranks (torchrun, gloo on the CPU) and folds trained at once.

Every launched job runs under a timeout (JOB_TIMEOUT_S): a hang fails the test instead of freezing
the suite. Ranks are real processes started by torchrun; signals are real signals.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from autoseg import api
from autoseg.checkpoint import load_checkpoint
from autoseg.cli import app
from autoseg.errors import ConfigError
from autoseg.trainers.distributed import RankShare, check_batch_divides
from autoseg.trainers.interrupt import StopRequest
from autoseg.trainers.launch import exit_code, without_nproc

JOB_TIMEOUT_S = 240
# 2d on 3D cases (random slices), deterministic: 2 ranks x batch 1 must train what 1 process x batch 2 does
RUN = {"epochs": 2, "iters_per_epoch": 3, "val_iters": 2, "workers": 0, "deterministic": True, "batch_size": 2}
# Measured: 1.2e-7 with the Dice terms summed over ranks, 2.5e-4 without (each rank's own batch Dice)
WEIGHT_TOLERANCE = 1e-5


def planned(make_dataset, tmp_path: Path) -> tuple[Path, Path]:
    dataset = make_dataset(num_cases=4, shape=(6, 16, 16), num_labels=2)
    workdir = tmp_path / "work"
    api.plan(dataset, workdir, workers=1)
    api.preprocess(dataset, "2d", workdir, workers=1)
    return dataset, workdir


def torchrun(script: Path, *args: str) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node 2 script args`, one thread per rank, output captured."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process: subprocess.Popen) -> str:
    try:
        return process.communicate(timeout=JOB_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the job did not end within {JOB_TIMEOUT_S} s:\n{process.communicate()[0]}") from None


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the job ended early ({process.returncode}):\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} not written within {timeout_s} s")
        time.sleep(0.02)


def weights(run: Path, kind: str = "final") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / f"checkpoint_{kind}.pt")["model_state"]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


# A training script for torchrun: the test's hooks are trainers registered by name, like any variant.
SCRIPT = """
import json, os, sys, time
from pathlib import Path
from autoseg import api
from autoseg.registry import TRAINERS
from autoseg.trainers.trainer import Trainer

dataset, workdir, run_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
options, pause = json.loads(sys.argv[5]), json.loads(sys.argv[6])  # pause: [epoch, iteration, seconds] on rank 0
rank = int(os.environ["RANK"])
(out / f"pid_{rank}").write_text(str(os.getpid()))

@TRAINERS.register("test_hooks")
class TestHooks(Trainer):
    def _train_step(self, data, targets):
        if options.get("fail_on_rank") == self.dist.rank and self.state.iteration == 2:
            raise RuntimeError(f"injected failure on rank {self.dist.rank}")
        return super()._train_step(data, targets)

    def fit(self, resume=False):
        try:
            return super().fit(resume)
        finally:  # where this rank stopped
            (out / f"stopped_{rank}.json").write_text(json.dumps([self.state.epoch, self.state.iteration]))

def on_event(kind, info):
    if pause and kind == "iteration" and [info["epoch"], info["iteration"]] == pause[:2]:
        (out / "paused").write_text(str(os.getpid()))
        time.sleep(pause[2])

try:
    api.train(dataset, "2d", 0, workdir, run_dir=run_dir, on_event=on_event,
              **{"trainer": "test_hooks", **{k: v for k, v in options.items() if k != "fail_on_rank"}})
except KeyboardInterrupt:
    sys.exit(130)
"""


def launch_script(tmp_path: Path, dataset: Path, workdir: Path, run: Path, options: dict, pause=None) -> tuple[subprocess.Popen, Path]:
    script, out = tmp_path / "train_ddp.py", tmp_path / "out"
    script.write_text(SCRIPT)
    out.mkdir(exist_ok=True)
    process = torchrun(script, str(dataset), str(workdir), str(run), str(out), json.dumps(options), json.dumps(pause))
    return process, out


# ---------------------------------------------------------------- correctness
def test_two_ranks_with_half_batches_train_what_one_process_trains_with_the_whole_batch(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "one_rank", **RUN)

    command = [sys.executable, "-m", "autoseg", "train", str(dataset), "2d", "0", "-w", str(workdir), "--run-dir",
               str(tmp_path / "two_ranks"), "--epochs", "2", "--iters-per-epoch", "3", "--val-iters", "2", "--workers", "0",
               "--deterministic", "--batch-size", "2", "--nproc", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    output = finish(process)

    assert process.returncode == 0, output
    run = tmp_path / "two_ranks"
    assert record(run)["status"] == "finished"
    assert (record(run)["world_size"], record(run)["backend"]) == (2, "gloo")
    assert sorted(p.name for p in run.glob("checkpoint_*.pt")) == ["checkpoint_best.pt", "checkpoint_final.pt"]
    assert (run / "train.log").read_text().count("epoch 2:") == 1  # rank 0 alone writes the log
    assert largest_difference(weights(run), weights(reference)) < WEIGHT_TOLERANCE
    history = load_checkpoint(run / "checkpoint_final.pt")["training"]["state"]["history"]
    expected = load_checkpoint(reference / "checkpoint_final.pt")["training"]["state"]["history"]
    for key in ("train_loss", "val_loss", "pseudo_dice", "lr"):
        assert history[key] == pytest.approx(expected[key], abs=1e-4), key  # losses and Dice over both ranks


def test_a_failing_rank_ends_the_whole_job_with_its_error(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    run = tmp_path / "run"
    started = time.monotonic()

    process, _ = launch_script(tmp_path, dataset, workdir, run, {**RUN, "epochs": 3, "fail_on_rank": 1})
    output = finish(process)

    assert process.returncode != 0
    assert "RuntimeError: injected failure on rank 1" in output
    assert record(run)["status"] in ("failed", "interrupted")  # rank 0 noticed (lost contact, or torchrun's SIGTERM)
    assert not (run / "checkpoint_final.pt").exists()
    assert time.monotonic() - started < 120  # the others were not left waiting for a collective to time out


@pytest.mark.slow
@pytest.mark.parametrize("who", ["rank 0", "every process"])
def test_a_stop_signal_stops_every_rank_at_the_same_step(make_dataset, tmp_path, who):
    dataset, workdir = planned(make_dataset, tmp_path)
    run = tmp_path / "run"
    process, out = launch_script(tmp_path, dataset, workdir, run, {**RUN, "epochs": 3}, pause=[1, 2, 1.5])
    wait_for(out / "paused", process)

    # "every process": what a scheduler does; each rank then also gets the signal torchrun passes on
    targets = [int((out / "pid_0").read_text())] if who == "rank 0" else [
        process.pid, int((out / "pid_0").read_text()), int((out / "pid_1").read_text())]
    for pid in targets:
        os.kill(pid, signal.SIGTERM)
    output = finish(process)

    stopped = [json.loads((out / f"stopped_{rank}.json").read_text()) for rank in (0, 1)]
    assert stopped[0] == stopped[1] == [1, 2], output
    assert record(run)["status"] == "interrupted", output
    state = load_checkpoint(run / "checkpoint_latest.pt")["training"]["state"]
    assert (state["epoch"], state["iteration"]) == (1, 2)


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_on_another_number_of_ranks(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    options = {**RUN, "checkpoint_every": 1, "trainer": "default"}  # resumed here, where test_hooks is unknown
    reference = api.train(dataset, "2d", 0, workdir, run_dir=tmp_path / "reference", **options)
    killed = tmp_path / "killed"
    process, out = launch_script(tmp_path, dataset, workdir, killed, options, pause=[1, 1, 600])
    wait_for(out / "paused", process)

    os.kill(int((out / "paused").read_text()), signal.SIGKILL)  # rank 0 dies mid-epoch 2; torchrun ends rank 1
    finish(process)
    assert record(killed)["status"] == "running"  # nobody could say otherwise
    api.train(dataset, "2d", 0, workdir, run_dir=killed, resume=True, **options)  # one process now

    assert record(killed)["status"] == "finished" and record(killed)["world_size"] == 1
    assert largest_difference(weights(killed), weights(reference)) < WEIGHT_TOLERANCE


# ---------------------------------------------------------------- folds at once
def test_parallel_folds_train_every_fold_and_write_crossval_json(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    command = [sys.executable, "-m", "autoseg", "train", str(dataset), "2d", "all", "-w", str(workdir), "--num-folds", "2",
               "--parallel", "2", "--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")
    output = finish(process)

    assert process.returncode == 0, output
    folder = workdir / "runs" / dataset.name / "2d"
    summary = json.loads((folder / "crossval" / "crossval.json").read_text())
    assert summary["complete"] and summary["folds"] == ["0", "1"] and len(summary["cases"]) == 4
    text = " ".join(output.split())
    for fold in ("0", "1"):
        assert record(folder / f"fold_{fold}")["status"] == "finished"
        assert f"fold {fold}: epoch 1:" in text  # the folds' log records reach this console, named
    assert text.index("fold 1: started") < text.index("fold 0: epoch 1:")  # both started before either trained


@pytest.mark.slow
def test_ctrl_c_stops_every_parallel_fold_and_the_same_command_finishes_them(make_dataset, tmp_path):
    dataset, workdir = planned(make_dataset, tmp_path)
    command = [sys.executable, "-m", "autoseg", "train", str(dataset), "2d", "all", "-w", str(workdir), "--num-folds", "2",
               "--parallel", "2", "--epochs", "8", "--iters-per-epoch", "12", "--val-iters", "1", "--workers", "1"]
    runs = [workdir / "runs" / dataset.name / "2d" / f"fold_{fold}" for fold in (0, 1)]
    logs = [run / "train.log" for run in runs]
    # its own session, like a terminal's foreground job: Ctrl-C reaches the parent, not the folds
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                               errors="replace", start_new_session=True)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not all(log.is_file() and "epoch 1:" in log.read_text() for log in logs):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else ""
        time.sleep(0.05)

    os.killpg(process.pid, signal.SIGINT)
    output = finish(process)

    assert process.returncode == 130, output
    for run in runs:
        assert record(run)["status"] == "interrupted" and (run / "checkpoint_latest.pt").is_file()
    again = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=JOB_TIMEOUT_S)
    assert again.returncode == 0, again.stdout + again.stderr
    for run in runs:
        assert record(run)["status"] == "finished" and record(run)["epochs_done"] == 8
        assert "resumed from" in (run / "train.log").read_text()
    assert json.loads((workdir / "runs" / dataset.name / "2d" / "crossval" / "crossval.json").read_text())["complete"]


# ---------------------------------------------------------------- refusals and small parts
def test_a_batch_that_does_not_divide_over_the_ranks_is_refused_with_the_fix(make_dataset, tmp_path):
    dataset = make_dataset(num_cases=3, shape=(16, 16), file_ending=".png")

    result = CliRunner().invoke(app, ["train", str(dataset), "2d", "0", "-w", str(tmp_path / "w"), "--batch-size", "3",
                                      "--nproc", "2"])

    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--batch-size 3 does not divide over 2 ranks" in message and "Pass --batch-size 2 or 4" in message
    with pytest.raises(ConfigError, match=r"the plan's batch size 2 does not divide over 4 ranks.*--batch-size 4 "):
        check_batch_divides(2, 4, from_plan=True)


@pytest.mark.parametrize("flags, message", [
    (["0", "--parallel", "2"], "--parallel trains cross-validation folds at once"),
    (["all", "--parallel", "2", "--nproc", "2"], "--parallel and --nproc together"),
    (["all", "--devices", "cuda:0"], "pass --parallel N too"),
    (["0", "--nproc", "0"], "--nproc: expected a number of processes >= 1, found 0"),
])
def test_scale_out_options_that_do_not_fit_are_refused(make_dataset, tmp_path, flags, message):
    dataset = make_dataset(num_cases=3, shape=(16, 16), file_ending=".png")

    result = CliRunner().invoke(app, ["train", str(dataset), "2d", *flags, "-w", str(tmp_path / "w")])

    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "w").exists()  # refused before any work


def test_each_rank_keeps_its_rows_of_the_global_batch():
    class Loader:
        def __init__(self):
            self.seeds = []

        def reseed(self, seed):
            self.seeds.append(seed)

        def __next__(self):
            return {"data": torch.arange(4.0).reshape(4, 1), "target": [torch.arange(4).reshape(4, 1)], "case_ids": list("abcd")}

    loader = Loader()
    shares = [next(RankShare(loader, rank, 2)) for rank in (0, 1)]
    RankShare(loader, 1, 2).reseed(7)

    assert [s["case_ids"] for s in shares] == [["a", "b"], ["c", "d"]]
    assert torch.equal(torch.cat([s["data"] for s in shares]), torch.arange(4.0).reshape(4, 1))
    assert shares[1]["target"][0].flatten().tolist() == [2, 3] and loader.seeds == [7]


def test_a_repeated_stop_signal_within_the_grace_is_one_request():
    with StopRequest(repeat_grace_s=0.5) as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's signal
        os.kill(os.getpid(), signal.SIGTERM)  # the same one, passed on by torchrun: no abort
        assert stop.requested
        time.sleep(0.6)
        with pytest.raises(KeyboardInterrupt):  # asked again later: abort without saving
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_launcher_arguments_and_exit_codes():
    assert without_nproc(["train", "D", "2d", "0", "--nproc", "2", "--nproc=3", "--epochs", "2"]) == [
        "train", "D", "2d", "0", "--epochs", "2"]
    assert exit_code([130, -15]) == 130  # every rank was stopped: interrupted
    assert exit_code([2, -15]) == 2  # a rank refused a user mistake
    assert exit_code([1, -15]) == 1
