"""Cross-validation folds.

Priority: the dataset's own splits_final.json (nnU-Net's format: a list of {"train": [...],
"val": [...]}); else folds that keep each group together (dataset.json "groups" or a regex on case
ids), written once to the workdir so every later run sees the same folds; else seeded k-fold.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from autoseg import schema
from autoseg.errors import ConfigError, DatasetError

Split = dict[str, list[str]]


def _check_splits(splits: list, case_ids: set[str], path: Path) -> list[Split]:
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise DatasetError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} objects")
    unknown = sorted({c for s in splits for c in s["train"] + s["val"]} - case_ids)
    if unknown:
        raise DatasetError(f"{path}: names cases that are not in the dataset: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return [{"train": list(s["train"]), "val": list(s["val"])} for s in splits]


def group_ids(case_ids: list[str], groups: dict[str, str] | None, group_by: str | None) -> list[str]:
    """Group per case: from `groups`, else the first match (or first capture group) of `group_by`."""
    if groups:
        return [groups.get(c, c) for c in case_ids]
    if group_by:
        pattern = re.compile(group_by)
        found = [pattern.search(c) for c in case_ids]
        return [(m.group(1) if m.groups() else m.group(0)) if m else c for m, c in zip(found, case_ids)]
    return list(case_ids)


def make_splits(case_ids: list[str], num_folds: int = 5, seed: int = 0, groups: list[str] | None = None) -> list[Split]:
    """Seeded k-fold over groups (each case its own group by default)."""
    groups = groups or list(case_ids)
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(f"cross-validation needs at least 2 cases/groups, found {len(unique)}; train fold 'all'")
    num_folds = min(num_folds, len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_group = {unique[g]: i % num_folds for i, g in enumerate(order)}
    splits = []
    for fold in range(num_folds):
        in_val = [fold_of_group[g] == fold for g in groups]
        splits.append({
            "train": [c for c, v in zip(case_ids, in_val) if not v],
            "val": [c for c, v in zip(case_ids, in_val) if v],
        })
    return splits


def load_or_create_splits(
    case_ids: list[str], dataset_splits: Path | None, workdir_splits: Path,
    num_folds: int = 5, seed: int = 0, groups: list[str] | None = None,
) -> list[Split]:
    ids = set(case_ids)
    if dataset_splits is not None and dataset_splits.is_file():
        return _check_splits(schema.read_json(dataset_splits, DatasetError), ids, dataset_splits)
    if workdir_splits.is_file():
        return _check_splits(schema.read_json(workdir_splits, DatasetError), ids, workdir_splits)
    splits = make_splits(sorted(case_ids), num_folds, seed, groups)
    schema.write_json_atomic(workdir_splits, splits)
    return splits


def cases_for_fold(splits: list[Split], fold: str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) case ids. Fold 'all' trains on everything and validates on the training cases."""
    if fold == "all":
        return sorted(case_ids), sorted(case_ids)
    if not fold.isdigit() or int(fold) >= len(splits):
        raise ConfigError(f"fold '{fold}' does not exist; this dataset has folds 0-{len(splits) - 1} and 'all'")
    split = splits[int(fold)]
    return sorted(split["train"]), sorted(split["val"])


def fold_cases(dataset, splits_path: Path, fold: str, num_folds: int = 5, group_by: str | None = None) -> tuple[list[str], list[str]]:
    """(train, val) case ids of `fold` for a Dataset; 'all' needs no splits."""
    case_ids = [c.case_id for c in dataset.cases]
    if fold == "all":
        return cases_for_fold([], fold, case_ids)
    groups = group_ids(case_ids, dataset.groups, group_by) if (dataset.groups or group_by) else None
    splits = load_or_create_splits(case_ids, dataset.splits_file, splits_path, num_folds=num_folds, groups=groups)
    return cases_for_fold(splits, fold, case_ids)
