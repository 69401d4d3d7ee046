"""A model bundle: what `predict` needs to reproduce a chosen setup, as one small JSON document.

    {"dataset_name": ..., "labels": {...},
     "members": [{"config": "2d", "checkpoints": ["2d/fold_0/checkpoint_final.pt", ...]}, ...],
     "postprocessing": {"keep_largest_foreground": false, "keep_largest_classes": [1, 3]},
     "cv_mean_foreground_dice": 0.91}

Each member is one configuration's fold ensemble; members' probabilities are averaged on the
original image grid, then postprocessing runs on the label map. Checkpoint paths are relative to
the bundle file's folder and must stay inside it (no absolute path, no '..'), so a bundle folder
can be moved, zipped and imported elsewhere, and a bundle cannot point at files elsewhere.
`best.json` (written by `autoseg find-best`) and an imported model's `model.json` share this format.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoseg import schema
from autoseg.errors import CheckpointError

BUNDLE_FILE = "model.json"


@dataclass(frozen=True)
class Postprocessing:
    keep_largest_foreground: bool = False  # largest component of the union of all foreground classes
    keep_largest_classes: tuple[int, ...] = ()  # then, per listed class, its largest component


@dataclass(frozen=True)
class BundleMember:
    config: str
    checkpoints: tuple[str, ...]  # relative to the bundle file's folder
    # a cascade's second stage: its first stage's checkpoints, laid out as in a workdir
    # (<first stage>/<fold>/...) beside the member's own (<config>/<fold>/...), where prediction finds them
    first_stage: tuple[str, ...] = field(default=(), metadata=schema.OMIT_DEFAULT)

    @property
    def files(self) -> tuple[str, ...]:
        """Every checkpoint the member needs: its own and its first stage's."""
        return self.checkpoints + self.first_stage


@dataclass(frozen=True)
class ModelBundle:
    dataset_name: str
    labels: dict[str, int]
    members: tuple[BundleMember, ...]
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    cv_mean_foreground_dice: float | None = None
    predict_command: str = ""
    ranking: tuple[dict[str, Any], ...] = ()  # find-best's table, best first


def load_bundle(path: str | Path) -> tuple[ModelBundle, Path]:
    """Read a bundle (file, or folder holding model.json); returns it and the folder its paths are relative to."""
    path = Path(path)
    file = path / BUNDLE_FILE if path.is_dir() else path
    bundle = schema.load_document(ModelBundle, file, CheckpointError)
    if not bundle.members or any(not m.checkpoints for m in bundle.members):
        raise CheckpointError(f"{file}: a model bundle needs at least one member with at least one checkpoint")
    outside = [c for m in bundle.members for c in m.files if not is_safe_member(c)]
    if outside:
        raise CheckpointError(f"{file}: checkpoint path(s) {', '.join(outside)} lead outside the bundle's folder "
                              f"{file.parent}; expected paths relative to it without '..'. Re-create the bundle "
                              "(`autoseg find-best`, `autoseg import-model`); do not use this file")
    return bundle, file.parent


def is_safe_member(name: str) -> bool:
    """A relative path that stays inside the folder it is relative to (no absolute path, no '..')."""
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return False
    return ".." not in posix.split("/")


def member_checkpoints(bundle: ModelBundle, base: Path) -> list[list[Path]]:
    """Absolute checkpoint paths per member; missing files are an error naming them."""
    resolved = [[(base / c).resolve() for c in m.checkpoints] for m in bundle.members]
    first_stages = [(base / c).resolve() for m in bundle.members for c in m.first_stage]
    missing = [str(p) for p in [*(p for paths in resolved for p in paths), *first_stages] if not p.is_file()]
    if missing:
        raise CheckpointError(f"model bundle in {base}: checkpoint(s) missing: {', '.join(missing)}")
    return resolved


def first_stage_checkpoints(bundle: ModelBundle, base: Path) -> list[list[Path]]:
    """Absolute first-stage checkpoint paths per member (empty for members that are not a cascade's second stage)."""
    return [[(base / c).resolve() for c in m.first_stage] for m in bundle.members]


def save_bundle(bundle: ModelBundle, path: str | Path) -> Path:
    return schema.write_json_atomic(path, bundle)
