"""Trained models for prediction: load run folders or checkpoint files into one checked ensemble.

A checkpoint carries its NetworkPlan, configuration plan and labels (see autoseg.checkpoint), so
a network is rebuilt from the checkpoint alone, never from training code. Members of an ensemble
(typically the folds of one cross-validation) must agree on everything that preprocessing and
the meaning of the outputs depend on; predictions are then averaged per voxel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from autoseg import schema
from autoseg.checkpoint import CHECKPOINT_PREFERENCE, LATEST, config_plan_of, load_checkpoint
from autoseg.config import ConfigPlan, NetworkPlan
from autoseg.errors import AutosegError, CheckpointError
from autoseg.devices import resolve_device

log = logging.getLogger(__name__)



@dataclass
class Member:
    """One trained network, ready for inference (eval mode, deep supervision off)."""

    source: Path  # the checkpoint file it came from
    model: torch.nn.Module
    config: ConfigPlan
    image_ndim: int  # of the training images: 3 for a 2d configuration of 3D data


@dataclass
class Ensemble:
    """Networks whose predictions are averaged; all share preprocessing, labels and channels."""

    members: tuple[Member, ...]
    labels: dict[str, int]  # name -> value, background included
    channel_names: tuple[str, ...]
    dataset_name: str = ""

    @property
    def config(self) -> ConfigPlan:
        """The shared configuration plan (preprocessing and restoring use the first member's)."""
        return self.members[0].config

    @property
    def image_ndim(self) -> int:
        """Dimensionality of the images the members were trained on (all members agree)."""
        return self.members[0].image_ndim

    @property
    def num_classes(self) -> int:
        return self.config.network.num_classes

    @property
    def in_channels(self) -> int:
        """Channels a case's files hold: the network's inputs less those the task's case steps append
        and those a cascade's first stage gives."""
        from autoseg.cascade import previous_stage_channel_count
        from autoseg.tasks.profile import extra_channel_count

        return (self.config.network.in_channels - extra_channel_count(self.config.task)
                - previous_stage_channel_count(self.config))

    @property
    def label_values(self) -> list[int]:
        """Label value of each output class, in class-index order."""
        return sorted(self.labels.values())

    @property
    def label_names(self) -> list[str]:
        by_value = {value: name for name, value in self.labels.items()}
        return [by_value[v] for v in self.label_values]

    def to(self, device: torch.device) -> "Ensemble":
        for member in self.members:
            member.model.to(device)
        return self


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file for a run folder (final, else best, else latest with a warning) or a .pt file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file; train a model first "
                              "(`autoseg train`) or check the path")
    if path.is_file():
        return path
    for name in CHECKPOINT_PREFERENCE:
        if (path / name).is_file():
            if name == LATEST:
                log.warning("%s: no final or best checkpoint; using %s (training has not finished)", path, name)
            return path / name
    raise CheckpointError(f"{path}: run folder holds none of {', '.join(CHECKPOINT_PREFERENCE)}; "
                          "train it first (`autoseg train`) or point at a finished run folder")


def load_member(path: str | Path, device: torch.device) -> tuple[Member, dict[str, Any]]:
    """Rebuild one network from its checkpoint; returns it and the checkpoint's payload."""
    from autoseg.networks.layout import model_to_channels_last, runs_channels_last

    checkpoint = resolve_checkpoint(path)
    payload = load_checkpoint(checkpoint, map_location="cpu", mmap=True)
    missing = [k for k in ("model_state", "config_plan", "labels", "image_ndim") if k not in payload]
    if missing:
        raise CheckpointError(f"{checkpoint}: not a model checkpoint (missing {', '.join(missing)}); "
                              "use a checkpoint written by `autoseg train`")
    config = config_plan_of(payload)
    try:
        # Copied out of the mapping: a checkpoint file rewritten in place must not change a loaded model.
        model = _rebuild(config.network, {name: t.clone() for name, t in payload["model_state"].items()})
    except (AutosegError, RuntimeError) as exc:
        raise CheckpointError(f"{checkpoint}: cannot rebuild its network '{config.network.name}' ({exc}); "
                              "the checkpoint does not match this autoseg version or is damaged") from None
    if hasattr(model, "set_deep_supervision"):
        model.set_deep_supervision(False)  # full-resolution logits only
    model.eval().to(device)
    if runs_channels_last(device):  # the sliding window feeds such models channels-last tiles
        model_to_channels_last(model, config.network.ndim)
    return Member(checkpoint, model, config, int(payload["image_ndim"])), payload


def _rebuild(network: NetworkPlan, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The network with the given weights. Built on the meta device and handed the tensors as they
    are (assign): no random initialisation to overwrite, no copy beyond the caller's."""
    from autoseg.networks import build_network  # registers the built-in networks

    with torch.device("meta"):
        model = build_network(network)
    model.load_state_dict(state, assign=True)
    unset = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if unset:
        raise CheckpointError(f"the checkpoint holds no values for {', '.join(unset[:3])}")
    return model


def load_models(run_dirs_or_checkpoints: Sequence[str | Path] | str | Path,
                device: str | torch.device = "cpu") -> Ensemble:
    """Load every run folder or checkpoint file as one ensemble, checking that they fit together."""
    sources = [run_dirs_or_checkpoints] if isinstance(run_dirs_or_checkpoints, (str, Path)) else list(run_dirs_or_checkpoints)
    if not sources:
        raise CheckpointError("no model given; pass at least one run folder or checkpoint file")
    target = resolve_device(device)
    loaded = [load_member(source, target) for source in sources]
    first_member, first_payload = loaded[0]
    for member, payload in loaded[1:]:
        _check_compatible(first_member, first_payload, member, payload)
    labels = {str(k): int(v) for k, v in first_payload["labels"].items()}
    _check_labels(first_member, labels)
    ensemble = Ensemble(tuple(m for m, _ in loaded), labels,
                        tuple(first_payload.get("channel_names", ())), str(first_payload.get("dataset_name", "")))
    log.info("loaded %d model(s) for %s on %s", len(ensemble.members), ensemble.dataset_name or "prediction", target)
    return ensemble


def _signature(member: Member, payload: dict[str, Any]) -> dict[str, Any]:
    """What ensemble members must share: preprocessing, patch, network dimensionality and outputs."""
    c = member.config
    return {
        "spacing": tuple(c.spacing),
        "normalization": schema.to_dict(c.normalization),
        "resampling": schema.to_dict(c.resampling),
        "patch_size": tuple(c.patch_size),
        "network ndim": c.network.ndim,
        "training image ndim": member.image_ndim,
        "input channels": c.network.in_channels,
        "classes": c.network.num_classes,
        "labels": dict(payload["labels"]),
        "task": schema.to_dict(c.task),
        "normalize at": c.normalize_at,
    }


def _check_compatible(first: Member, first_payload: dict, other: Member, other_payload: dict) -> None:
    expected, found = _signature(first, first_payload), _signature(other, other_payload)
    differing = [f"{key}: {found[key]} (but {expected[key]} in {first.source})" for key in expected if found[key] != expected[key]]
    if differing:
        raise CheckpointError(f"{other.source}: cannot join an ensemble with {first.source}; it differs in "
                              + "; ".join(differing) + ". Ensemble only runs trained with the same plan configuration")


def _check_labels(member: Member, labels: dict[str, int]) -> None:
    values = sorted(labels.values())
    if values != list(range(member.config.network.num_classes)):
        raise CheckpointError(f"{member.source}: labels {labels} do not match the network's "
                              f"{member.config.network.num_classes} output classes (expected values 0.."
                              f"{member.config.network.num_classes - 1}); the checkpoint is inconsistent, retrain it")
