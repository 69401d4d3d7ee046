"""Where autoseg keeps what it derives from a dataset. One root folder, no environment variables:

    <root>/plans/<dataset>/fingerprint.json, plan.json, splits.json
    <root>/preprocessed/<dataset>/<config>/...
    <root>/runs/<dataset>/<config>/fold_<k>/...
    <root>/models/<name>/model.json (imported models)

The root defaults to ./autoseg_work (relative to the current directory); pass --workdir to move it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKDIR = Path("autoseg_work")


@dataclass(frozen=True)
class Workdir:
    root: Path = DEFAULT_WORKDIR

    @classmethod
    def at(cls, root: str | Path | None) -> "Workdir":
        return cls(Path(root) if root is not None else DEFAULT_WORKDIR)

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
