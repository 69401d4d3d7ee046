"""The run folder's documents: run.json (what was run, on what, by whom) and resume compatibility."""
from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from autoseg import schema
from autoseg.checkpoint import BEST, FINAL, LATEST
from autoseg.config import RESUMABLE_CHANGES, TrainConfig
from autoseg.errors import ConfigError

CHECKPOINTS = {"latest": LATEST, "best": BEST, "final": FINAL}


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
