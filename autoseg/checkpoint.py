"""Checkpoint files: written atomically, self-describing, loadable without any training code.

A checkpoint carries the network's registered name and NetworkPlan, the configuration plan (for
preprocessing at prediction time; it names the clinical task and its options, if the plan has
one), the label names, the training images' dimensionality and channel names, so the predictor
needs nothing else. Training state (optimizer, scaler, RNG,
progress) rides along under "training" and is ignored by prediction.

Checkpoints are data, never code: they hold only tensors and plain Python values and are read
with `torch.load(weights_only=True)`, so a crafted file cannot run anything. Each top-level
section carries a SHA-256 of its content, recorded at save time and compared at load time, so a
damaged file is refused instead of predicting with garbage weights.
"""
from __future__ import annotations

import hashlib
import pickle
import random
import re
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from autoseg import schema
from autoseg.atomic import atomic_write
from autoseg.config import ConfigPlan
from autoseg.errors import CheckpointError

FORMAT_VERSION = 2  # 2: weights-only content, per-section checksums, image_ndim
# A run folder's checkpoints; prediction prefers them in this order.
FINAL, BEST, LATEST = "checkpoint_final.pt", "checkpoint_best.pt", "checkpoint_latest.pt"
CHECKPOINT_PREFERENCE = (FINAL, BEST, LATEST)
# The sections model_payload writes: everything prediction reads.
PREDICTION_KEYS = ("model_state", "config_plan", "labels", "channel_names", "dataset_name", "image_ndim")
TRAINING = "training"
_HEADER = ("format_version", "checksums")  # not covered by the checksums


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write to a temp file in the same folder, then rename: a kill never leaves half a file."""
    with atomic_write(path) as tmp:
        write_checkpoint(tmp, payload)
    return path


def write_checkpoint(target: Path | IO[bytes], payload: dict[str, Any]) -> None:
    """torch.save the payload with the format version and a fresh checksum of every section."""
    body = {key: value for key, value in payload.items() if key not in _HEADER}
    checksums = {key: _digest(value) for key, value in body.items()}
    torch.save({"format_version": FORMAT_VERSION, "checksums": checksums, **body}, target)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False,
                    with_training: bool = False) -> dict[str, Any]:
    """The checkpoint's payload, checked: data only, current format, checksums match, finite weights.

    mmap: map the file instead of reading it, so only the tensors used are read. The "training"
    section is verified only with `with_training` (resume): prediction then reads just the weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train first or point at a run folder that has one")
    payload = _read(path, map_location, mmap)
    found = payload.get("format_version") if isinstance(payload, dict) else None
    if found != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {found} is not supported (expected {FORMAT_VERSION}); it was "
                              "written by an older autoseg: re-train the model (`autoseg train`) and re-export shared "
                              "models (`autoseg export-model`)")
    _verify_checksums(path, payload, with_training)
    _check_finite(path, payload)
    return payload


def _read(path: Path, map_location: str | torch.device, mmap: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if unsafe:  # torch's own advice (weights_only=False) would run the file's code: never give it
            raise CheckpointError(f"{path}: refused: the file holds Python objects other than tensors and plain data "
                                  f"(it names {unsafe.group(1)}), and loading them could run code; autoseg checkpoints "
                                  "hold data only. Do not use this file; if an older autoseg wrote it, re-train the "
                                  "model") from None
        raise _damaged(path, exc) from None
    except Exception as exc:  # torch raises many types for damaged files
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); the file is damaged, "
                           "use another checkpoint")


def _verify_checksums(path: Path, payload: dict[str, Any], with_training: bool) -> None:
    recorded = payload.get("checksums")
    recorded = recorded if isinstance(recorded, dict) else {}
    sections = {key for key in payload if key not in _HEADER}
    if set(recorded) != sections:
        raise CheckpointError(f"{path}: damaged: its sections ({', '.join(sorted(map(str, sections)))}) do not match the "
                              f"checksums recorded at save time (for {', '.join(sorted(map(str, recorded))) or 'none'}); "
                              "use another checkpoint of the run or re-train")
    for key in sorted(sections - (set() if with_training else {TRAINING})):
        if _digest(payload[key]) != recorded[key]:
            raise CheckpointError(f"{path}: damaged: the content of '{key}' does not match the SHA-256 recorded when "
                                  "it was saved (the file changed on disk or in transfer); use another checkpoint of "
                                  "the run, copy or download it again, or re-train")


def _check_finite(path: Path, payload: dict[str, Any]) -> None:
    state = payload.get("model_state")
    if not isinstance(state, dict):
        return  # the caller's "not a model checkpoint" check names what is missing
    bad = [name for name, t in state.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}); "
                              "the training diverged; use another checkpoint or re-train (e.g. with a lower --lr)")


def _digest(value: Any) -> str:
    hasher = hashlib.sha256()
    _feed(hasher, value)
    return hasher.hexdigest()


def _feed(hasher: Any, value: Any) -> None:
    """A canonical walk: dict keys sorted, tensors as dtype, shape and raw bytes, scalars by repr."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        hasher.update(f"dict {len(value)};".encode())
        for key in sorted(value, key=repr):
            hasher.update(f"{key!r}:".encode())
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):  # one kind: the pickle keeps the difference, a reader need not care
        hasher.update(f"list {len(value)};".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(f"{type(value).__name__} {value!r};".encode())


def model_payload(model: torch.nn.Module, config_plan: ConfigPlan, labels: dict[str, int], channel_names,
                  dataset_name: str, image_ndim: int | None = None) -> dict:
    """Everything prediction needs: the network's weights and the documents that describe them.

    image_ndim: the training images' dimensionality (the plan's); the network's by default, which
    is right except for a 2d configuration of 3D data (image_ndim 3).
    """
    return {
        "model_state": model.state_dict(),
        "config_plan": schema.to_dict(config_plan),
        "labels": dict(labels),
        "channel_names": list(channel_names),
        "dataset_name": dataset_name,
        "image_ndim": int(image_ndim or config_plan.network.ndim),
    }


def config_plan_of(payload: dict) -> ConfigPlan:
    return schema.from_dict(ConfigPlan, payload["config_plan"], "checkpoint.config_plan", CheckpointError)


def capture_rng() -> dict:
    """torch, numpy and python RNG states as tensors and plain values (loadable with weights_only)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "internal": list(internal), "gauss": gauss}}


def restore_rng(state: dict) -> None:
    numpy_state = state["numpy"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss"]))
