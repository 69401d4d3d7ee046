"""Checkpoint files: written atomically, self-describing, loadable without any training code.

A checkpoint carries the network's registered name and NetworkPlan, the configuration plan (for
preprocessing at prediction time) and the label names, so the predictor needs nothing else.
Training state (optimizer, scaler, RNG, progress) rides along under "training" and is ignored
by prediction.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg import schema
from autoseg.atomic import atomic_write
from autoseg.config import ConfigPlan
from autoseg.errors import CheckpointError

FORMAT_VERSION = 1
# A run folder's checkpoints; prediction prefers them in this order.
FINAL, BEST, LATEST = "checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt"
CHECKPOINT_PREFERENCE = (FINAL, BEST, LATEST)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same folder, then rename: a kill never leaves half a file."""
    with atomic_write(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **payload}, tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's payload. mmap: map the file instead of reading it, so only the tensors used are
    read (prediction needs the weights; a training checkpoint also carries the optimizer state)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train first or point at a run folder that has one")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); the file is damaged, use another checkpoint") from None
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {payload.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    return payload


def model_payload(model: torch.nn.Module, config_plan: ConfigPlan, labels: dict[str, int], channel_names, dataset_name: str) -> dict:
    """Everything prediction needs: the network's weights and the documents that describe them."""
    return {
        "model_state": model.state_dict(),
        "config_plan": schema.to_dict(config_plan),
        "labels": dict(labels),
        "channel_names": list(channel_names),
        "dataset_name": dataset_name,
    }


def config_plan_of(payload: dict) -> ConfigPlan:
    return schema.from_dict(ConfigPlan, payload["config_plan"], "checkpoint.config_plan", CheckpointError)


def capture_rng() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
