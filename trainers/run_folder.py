"""The run folder's documents: run.json (what was run, on what, by whom) and resume compatibility,
and the lock that keeps two trainings out of one run folder."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autoseg import schema
from autoseg.checkpoint import BEST, FINAL, LATEST, load_checkpoint
from autoseg.config import RESUMABLE_CHANGES, TrainConfig
from autoseg.errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not protected against a second training
    fcntl = None

log = logging.getLogger(__name__)

CHECKPOINTS = {"latest": LATEST, "best": BEST, "final": FINAL}
LOCK = "run.lock"
RUNNING, FINISHED, KILLED = "running", "finished", "killed"  # KILLED: said "running", but nobody holds the lock


def checkpoint_path(run_dir: Path, kind: str) -> Path:
    return run_dir / CHECKPOINTS[kind]


def versions() -> dict[str, str]:
    from autoseg import __version__

    return {"autoseg": __version__, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def write_run_json(run_dir: Path, options: TrainConfig, plan_hash: str, train_ids, val_ids, status: str, **extra) -> Path:
    document = {
        "status": status,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "train_config": schema.to_dict(options),
        "plan_hash": plan_hash,
        "versions": versions(),
        "command_line": sys.argv,
        "train_cases": list(train_ids),
        "val_cases": list(val_ids),
        **extra,
    }
    return schema.write_json_atomic(run_dir / "run.json", document)


def newest_resumable_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """latest, or best when written after it: both carry the full training state of an epoch's end
    (a run killed before its first periodic checkpoint still resumes from its first best). A
    damaged newer one falls back to the other, with a warning. Returns the path and its payload,
    read onto the CPU (it may be sent to other ranks; loading the state moves it to the model)."""
    candidates = [p for p in (checkpoint_path(run_dir, "latest"), checkpoint_path(run_dir, "best")) if p.is_file()]
    if not candidates:
        raise ConfigError(f"{checkpoint_path(run_dir, 'latest')}: no checkpoint to resume from (runs save one "
                          "every checkpoint_every epochs, at each new best and when interrupted); start without --resume")
    problems = []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):  # ties keep latest
        try:
            payload = load_checkpoint(path, map_location="cpu", with_training=True)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if "training" not in payload:
            problems.append(f"{path}: holds no training state (a prediction-only checkpoint)")
            continue
        for problem in problems:
            log.warning("%s; resuming from %s instead", problem, path.name)
        return path, payload
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from:\n  - " + "\n  - ".join(problems)
                          + "\nstart the run again without --resume")


def check_resumable(saved: dict, options: TrainConfig, saved_plan_hash: str, plan_hash: str, checkpoint: Path) -> None:
    """Refuse to resume with a different configuration, naming every differing field."""
    previous = schema.from_dict(TrainConfig, saved, "checkpoint.train_config", ConfigError)
    changed = [
        f"{f.name}: {getattr(previous, f.name)!r} -> {getattr(options, f.name)!r}"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES and getattr(previous, f.name) != getattr(options, f.name)
    ]
    if saved_plan_hash != plan_hash:
        changed.append("plan: the plan.json this run was trained with has changed (re-planned?)")
    if changed:
        raise ConfigError(
            f"cannot resume {checkpoint}: the configuration differs from the interrupted run ("
            + "; ".join(changed) + "). Resume with the original options, or start a new run without --resume."
        )


def check_run_cases(run_dir: Path, train_ids, val_ids) -> None:
    """Refuse to continue a run on other cases than it was trained on (folds rebuilt, dataset changed)."""
    path = run_dir / "run.json"
    record = schema.read_json(path, CheckpointError) if path.is_file() else {}
    recorded = {side: record.get(f"{side}_cases") for side in ("train", "val")} if isinstance(record, dict) else {}
    differing = [side for side, ids in (("train", train_ids), ("val", val_ids))
                 if recorded.get(side) is not None and sorted(recorded[side]) != sorted(ids)]
    if differing:
        raise CheckpointError(f"{path}: this run was trained with other {' and '.join(differing)} cases than its fold "
                              "has now (folds rebuilt, or the dataset changed); its results are not comparable. Delete "
                              "the run folder (or pass another --run-dir) to train the fold anew")


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Append autoseg's log records to <run_dir>/train.log for the duration of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("autoseg")
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        handler.close()


# ---------------------------------------------------------------- one training per run folder
@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this process: a second training of it is refused at once.

    An OS lock (flock), so a killed holder leaves nothing stale; the lock file records the
    holder's PID and start time for the refusal message.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        log.warning("file locks are not available here: nothing stops a second training of %s", run_dir)
        yield
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, run_dir)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the lock file must not name a process that no longer holds it
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, run_dir: Path) -> None:
    # a few tries: run_is_active's probe holds the lock for an instant
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05 * (attempt + 1))
    raise _in_use(run_dir)


def _in_use(run_dir: Path) -> CheckpointError:
    try:
        holder = json.loads((run_dir / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    who = (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
           if holder.get("pid") else "another process (it has not recorded its PID yet)")
    return CheckpointError(f"{run_dir}: another training is using this run folder ({who}); wait for it to end or stop "
                           "it, or train into another folder (--run-dir). Two trainings of one folder would mix their files")


def run_is_active(run_dir: Path) -> bool:
    """True while a training process holds the run folder's lock (probed with an instant shared lock)."""
    if fcntl is None:  # cannot tell: trust run.json
        return _recorded_status(run_dir) == RUNNING
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def check_not_in_use(run_dir: Path) -> None:
    """Refuse early (before preprocessing) when another training holds the run folder."""
    if fcntl is not None and run_is_active(run_dir):
        raise _in_use(run_dir)


def _recorded_status(run_dir: Path) -> str | None:
    path = run_dir / "run.json"
    document = schema.read_json(path, CheckpointError) if path.is_file() else None
    return document.get("status") if isinstance(document, dict) else None


def run_status(run_dir: Path) -> str | None:
    """run.json's status (None: no run.json), except that a "running" run nobody holds is KILLED:
    a killed process could not write its end into run.json."""
    status = _recorded_status(run_dir)
    if status == RUNNING and not run_is_active(run_dir):
        return KILLED
    return status
