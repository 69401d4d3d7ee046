"""Where autoseg keeps what it derives from a dataset. One root folder, no environment variables:

    <root>/plans/<dataset>/fingerprint.json, plan.json, splits.json
    <root>/preprocessed/<dataset>/<config>/...
    <root>/runs/<dataset>/<config>/fold_<k>/...
    <root>/models/<name>/model.json (imported models)

The root defaults to ./autoseg_work (relative to the current directory); pass --workdir to move it.

`check_folder` and `make_folder` also serve other output folders (predictions, ensembles): a path
that cannot hold outputs is refused before any work, not after hours of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from autoseg.errors import ConfigError

DEFAULT_WORKDIR = Path("autoseg_work")


def check_folder(path: str | Path, role: str, writable: bool = True) -> Path:
    """`path` is a folder, or can be created as one (and written to, if `writable`); nothing is created.

    `role` names the folder in the message, e.g. "output folder (-o)"; ConfigError otherwise.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())  # '.' or '/' at the latest
    if not existing.is_dir():
        where = "it is a file" if existing == path else f"{existing} is a file, not a folder"
        raise ConfigError(f"{path}: cannot be the {role}: {where}; choose another folder or move the file")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot be the {role}: {existing} is not writable for this user; "
                          "choose a folder you can write to")
    return path


def make_folder(path: str | Path, role: str) -> Path:
    """check_folder, then create the folder (and its parents)."""
    path = check_folder(path, role)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the {role} ({exc.strerror}); choose a folder you can write to") from None
    return path


@dataclass(frozen=True)
class Workdir:
    root: Path = DEFAULT_WORKDIR

    @classmethod
    def at(cls, root: str | Path | None) -> "Workdir":
        """The workdir at `root`; a ConfigError when a file stands where its folder must be.
        (Writability is checked by the commands that write: predicting from a read-only one is fine.)"""
        return cls(check_folder(root if root is not None else DEFAULT_WORKDIR, "workdir (--workdir)", writable=False))

    def plans_dir(self, dataset: str) -> Path:
        return self.root / "plans" / dataset

    def fingerprint_path(self, dataset: str) -> Path:
        return self.plans_dir(dataset) / "fingerprint.json"

    def plan_path(self, dataset: str) -> Path:
        return self.plans_dir(dataset) / "plan.json"

    def splits_path(self, dataset: str) -> Path:
        return self.plans_dir(dataset) / "splits.json"

    def preprocessed_dir(self, dataset: str, config: str) -> Path:
        return self.root / "preprocessed" / dataset / config

    def run_dir(self, dataset: str, config: str, fold: int | str) -> Path:
        return self.root / "runs" / dataset / config / f"fold_{fold}"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def step_time_cache(self) -> Path:
        """Measured training step times, per machine (the budget-aware planner's cache)."""
        return self.root / "cache" / "step_times.json"
