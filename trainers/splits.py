"""Cross-validation folds.

Priority: the dataset's own splits_final.json (nnU-Net's format: a list of {"train": [...],
"val": [...]}); else folds that keep each group together (dataset.json "groups" or a regex on case
ids), written once to the workdir so every later run sees the same folds; else seeded k-fold.

The workdir's splits.json keeps nnU-Net's plain list; the options it was made with sit beside it in
splits_options.json. Options given later must agree with them (or with what a splits file without a
record shows: its number of folds, groups kept on one side), else ConfigError: folds are never
silently other than asked. `rebuild` makes new workdir folds from the options given.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from autoseg import schema
from autoseg.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

Split = dict[str, list[str]]
DEFAULT_FOLDS, SEED = 5, 0
_OPTION_NAMES = {"num_folds": "--num-folds", "group_by": "--group-by",
                 "groups_from_dataset_json": "groups from dataset.json", "seed": "seed"}


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


def options_path(splits_path: Path) -> Path:
    """Where the options of the workdir's folds are recorded: splits_options.json beside splits.json."""
    return splits_path.with_name(f"{splits_path.stem}_options.json")


def load_or_create_splits(
    case_ids: list[str], dataset_splits: Path | None, workdir_splits: Path,
    num_folds: int | None = None, seed: int = SEED, groups: list[str] | None = None, *,
    group_by: str | None = None, groups_from_dataset_json: bool = False, rebuild: bool = False,
) -> list[Split]:
    """The dataset's splits, else the workdir's, else new ones (written with their options).

    `num_folds` None: not given (the stored folds, or DEFAULT_FOLDS for new ones). `group_by` and
    `groups_from_dataset_json` say where `groups` came from; they are recorded and compared.
    """
    ids = set(case_ids)
    if dataset_splits is not None and dataset_splits.is_file():
        if rebuild:
            raise ConfigError(f"--rebuild-splits remakes the workdir's folds, but {dataset_splits} (the dataset's own) "
                              "decides them; edit or remove that file instead")
        splits = _check_splits(schema.read_json(dataset_splits, DatasetError), ids, dataset_splits)
        _refuse(dataset_splits, _unrecorded_conflicts(splits, num_folds, groups if group_by else None, case_ids),
                "the dataset's splits_final.json decides the folds: drop these options, or edit or remove that file")
        return splits
    wanted = {"num_folds": num_folds or DEFAULT_FOLDS, "group_by": group_by,
              "groups_from_dataset_json": groups_from_dataset_json, "seed": seed}
    if rebuild:
        _remove_splits(workdir_splits, wanted)
    if workdir_splits.is_file():
        splits = _check_covers(_check_splits(schema.read_json(workdir_splits, DatasetError), ids, workdir_splits),
                               ids, workdir_splits)
        _check_same_options(workdir_splits, splits, wanted, num_folds is not None, groups, case_ids)
        return splits
    order = sorted(range(len(case_ids)), key=lambda i: case_ids[i])  # sort cases, keeping each one's group
    splits = make_splits([case_ids[i] for i in order], wanted["num_folds"], seed,
                         [groups[i] for i in order] if groups else None)
    schema.write_json_atomic(options_path(workdir_splits), wanted)  # first: splits without a record pass unchecked
    schema.write_json_atomic(workdir_splits, splits)
    return splits


def _check_same_options(path: Path, splits: list[Split], wanted: dict, num_folds_given: bool,
                        groups: list[str] | None, case_ids: list[str]) -> None:
    """Refuse options given now that differ from those the workdir's folds were made with."""
    record = options_path(path)
    if not record.is_file():  # made by an older autoseg or by hand: check what the folds show
        given_folds = wanted["num_folds"] if num_folds_given else None
        _refuse(path, _unrecorded_conflicts(splits, given_folds, groups if wanted["group_by"] else None, case_ids),
                _REBUILD)
        return
    recorded = schema.read_json(record, ConfigError)
    recorded = recorded if isinstance(recorded, dict) else {}
    not_given = {"num_folds"} if not num_folds_given else set()
    if wanted["group_by"] is None:
        not_given.add("group_by")  # options not given keep what the folds were made with
    _refuse(path, [f"{_OPTION_NAMES[k]}: {recorded.get(k)!r} when they were made (see {record.name}), now {wanted[k]!r}"
                   for k in wanted if k not in not_given and recorded.get(k) != wanted[k]], _REBUILD)


_REBUILD = ("to make new folds pass --rebuild-splits (or delete the file); runs trained on the old folds are then "
            "not comparable and must be retrained. To keep the old folds, drop the differing options")


def _unrecorded_conflicts(splits: list[Split], num_folds: int | None, groups: list[str] | None,
                          case_ids: list[str]) -> list[str]:
    """What can be checked of folds without a record: their number, and each group on one side."""
    problems = []
    expected = None if num_folds is None else min(num_folds, len(set(groups or case_ids)))
    if expected is not None and len(splits) != expected:
        problems.append(f"--num-folds {num_folds} asks for {expected} folds, the file has {len(splits)}")
    if groups:
        group_of = dict(zip(case_ids, groups))
        mixed = [str(k) for k, s in enumerate(splits)
                 if {group_of[c] for c in s["train"]} & {group_of[c] for c in s["val"]}]
        if mixed:
            problems.append(f"--group-by: fold(s) {', '.join(mixed)} have a group's cases in both train and val")
    return problems


def _refuse(path: Path, problems: list[str], fix: str) -> None:
    if problems:
        raise ConfigError(f"{path}: the folds there disagree with the options given ({'; '.join(problems)}); {fix}")


def _remove_splits(path: Path, wanted: dict) -> None:
    if path.is_file():
        log.warning("--rebuild-splits: replacing %s with new folds (%s); runs trained on the old folds are not "
                    "comparable with the new ones: retrain them", path, wanted)
    path.unlink(missing_ok=True)
    options_path(path).unlink(missing_ok=True)


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


def check_split_options(num_folds: int | None, group_by: str | None) -> None:
    """--num-folds and --group-by are usable (before any work)."""
    if num_folds is not None and (not isinstance(num_folds, int) or isinstance(num_folds, bool) or num_folds < 2):
        raise ConfigError(f"--num-folds: expected an integer >= 2, found {num_folds!r}; "
                          f"for one model on every case train fold '{FULL}'")
    if group_by is not None:
        try:
            re.compile(group_by)
        except re.error as exc:
            raise ConfigError(f"--group-by '{group_by}' is not a regular expression ({exc}); "
                              r"e.g. '^(\d+)_' takes the digits before the first '_' as the patient") from None


def splits_for(dataset, splits_path: Path, num_folds: int | None = None, group_by: str | None = None,
               rebuild: bool = False) -> list[Split]:
    """The folds of a Dataset: its splits_final.json, else the workdir's splits.json, else new
    seeded folds grouped by dataset.json "groups" or the `group_by` regex on case ids."""
    check_split_options(num_folds, group_by)
    if dataset.groups and group_by:
        log.warning("--group-by '%s' is not used: dataset.json 'groups' names each case's patient", group_by)
        group_by = None
    case_ids = [c.case_id for c in dataset.cases]
    groups = group_ids(case_ids, dataset.groups, group_by) if (dataset.groups or group_by) else None
    return load_or_create_splits(case_ids, dataset.splits_file, splits_path, num_folds=num_folds, groups=groups,
                                 group_by=group_by, groups_from_dataset_json=bool(dataset.groups), rebuild=rebuild)


def fold_cases(dataset, splits_path: Path, fold: str, num_folds: int | None = None,
               group_by: str | None = None, rebuild: bool = False) -> tuple[list[str], list[str]]:
    """(train, val) case ids of `fold` for a Dataset; 'full' needs no splits."""
    case_ids = [c.case_id for c in dataset.cases]
    splits = [] if fold == FULL else splits_for(dataset, splits_path, num_folds, group_by, rebuild)
    return cases_for_fold(splits, fold, case_ids)
