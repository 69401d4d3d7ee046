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


def _check_splits(splits: object, case_ids: set[str], path: Path) -> list[Split]:
    """The folds of a splits file, each {"train": [...], "val": [...]} naming only dataset cases."""
    well_formed = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and all(isinstance(s.get(k), list) for k in ("train", "val")) for s in splits)
    if not well_formed:
        raise DatasetError(f"{path}: expected a non-empty list of {{\"train\": [case ids], \"val\": [case ids]}} objects, "
                           f"found {type(splits).__name__}; fix or delete the file")
    folds = [{"train": [str(c) for c in s["train"]], "val": [str(c) for c in s["val"]]} for s in splits]
    unknown = sorted({c for s in folds for c in s["train"] + s["val"]} - case_ids)
    if unknown:
        raise DatasetError(f"{path}: names cases that are not in the dataset: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
                           "use ids of the dataset's training cases")
    return folds


def _check_covers(splits: list[Split], case_ids: set[str], path: Path) -> list[Split]:
    """Folds autoseg wrote must cover today's cases: a case added since would silently never be used."""
    missing = sorted(case_ids - {c for s in splits for c in s["train"] + s["val"]})
    if missing:
        raise DatasetError(f"{path}: was made for a different set of cases; {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                           "are in no fold. Delete the file to make new folds (runs of the old folds are "
                           "then not comparable)")
    return splits


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
        raise ConfigError(f"cross-validation needs at least 2 cases/groups, found {len(unique)}; train fold 'full' (every case)")
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
        splits = _check_splits(schema.read_json(workdir_splits, DatasetError), ids, workdir_splits)
        return _check_covers(splits, ids, workdir_splits)
    order = sorted(range(len(case_ids)), key=lambda i: case_ids[i])  # sort cases, keeping each one's group
    splits = make_splits([case_ids[i] for i in order], num_folds, seed, [groups[i] for i in order] if groups else None)
    schema.write_json_atomic(workdir_splits, splits)
    return splits


FULL = "full"  # the fold name for one model trained on every case (nnU-Net calls it "all")


def cases_for_fold(splits: list[Split], fold: str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """(train, val) case ids. Fold 'full' trains on everything and validates on the training cases."""
    if fold == FULL:
        return sorted(case_ids), sorted(case_ids)
    if not fold.isdigit() or int(fold) >= len(splits):
        raise ConfigError(f"fold '{fold}' does not exist; this dataset has folds 0-{len(splits) - 1}, "
                          f"'all' (each fold in turn) and '{FULL}' (one model on every case)")
    split = splits[int(fold)]
    empty = [side for side in ("train", "val") if not split[side]]
    if empty:  # the loader would fail later with a message that does not mention the splits
        raise ConfigError(f"fold {fold} has no {' and no '.join(empty)} cases; "
                          f"give it some in the splits file, or train fold '{FULL}'")
    return sorted(split["train"]), sorted(split["val"])


def splits_for(dataset, splits_path: Path, num_folds: int = 5, group_by: str | None = None) -> list[Split]:
    """The folds of a Dataset: its splits_final.json, else the workdir's splits.json, else new
    seeded folds grouped by dataset.json "groups" or the `group_by` regex on case ids."""
    case_ids = [c.case_id for c in dataset.cases]
    groups = group_ids(case_ids, dataset.groups, group_by) if (dataset.groups or group_by) else None
    return load_or_create_splits(case_ids, dataset.splits_file, splits_path, num_folds=num_folds, groups=groups)


def fold_cases(dataset, splits_path: Path, fold: str, num_folds: int = 5,
               group_by: str | None = None) -> tuple[list[str], list[str]]:
    """(train, val) case ids of `fold` for a Dataset; 'full' needs no splits."""
    case_ids = [c.case_id for c in dataset.cases]
    splits = [] if fold == FULL else splits_for(dataset, splits_path, num_folds, group_by)
    return cases_for_fold(splits, fold, case_ids)
