"""Which configurations of a dataset finished their cross-validation, checked file by file.

    <workdir>/runs/<dataset>/<config>/fold_<k>/run.json, checkpoint_final.pt
    <workdir>/runs/<dataset>/<config>/crossval/crossval.json
    <workdir>/runs/<dataset>/<config>/crossval/predictions/<case><ending>, <case>.npz   (out-of-fold)

A configuration is complete when every fold (from the splits, else crossval.json) finished with a
final checkpoint and every validation case has its out-of-fold label map and probabilities. What
is missing is named fold by fold, with the command that finishes it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autoseg.dataset import Dataset
from autoseg.errors import ConfigError
from autoseg.schema import read_json
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)

CROSSVAL_JSON = Path("crossval") / "crossval.json"
PREDICTIONS = Path("crossval") / "predictions"
FINAL_CHECKPOINT = "checkpoint_final.pt"
FINISHED = "finished"
RESUME_HINT = ("fix: run `autoseg train DATASET_DIR {config} all` to resume the unfinished folds and write the "
               "out-of-fold predictions, then run find-best again")
_LISTED = 5  # missing cases named per fold; the rest are counted


@dataclass(frozen=True)
class CrossvalResult:
    """One configuration whose cross-validation is complete."""

    config: str
    folder: Path  # runs/<dataset>/<config>
    checkpoints: tuple[Path, ...]  # one final checkpoint per fold, in fold order
    cases: tuple[str, ...]  # every fold's validation cases

    @property
    def predictions(self) -> Path:
        return self.folder / PREDICTIONS


def folder_name(name: str, what: str) -> str:
    """A name used as one folder under runs/: no separators and no '..', so paths stay in that tree."""
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ConfigError(f"{what} name '{name}' is not a plain folder name (no '/', '\\' or '..'); pass the name "
                          "as it appears under <workdir>/runs")
    return name


def crossval_documents(runs_dir: Path, configs: Sequence[str] | None) -> dict[Path, dict[str, Any]]:
    """config folder -> its crossval.json, for the requested (or every) configuration."""
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no training runs for this dataset; train every fold of a configuration "
                          "first (`autoseg train DATASET_DIR CONFIG all`) or check --workdir and the dataset name")
    if configs is not None:
        folders = [runs_dir / folder_name(c, "configuration") for c in configs]
        for folder in folders:
            if not (folder / CROSSVAL_JSON).is_file():
                raise ConfigError(f"configuration '{folder.name}': {folder / CROSSVAL_JSON} not found, so its "
                                  "cross-validation has not finished; " + RESUME_HINT.format(config=folder.name))
    else:
        folders = sorted(f for f in runs_dir.iterdir() if (f / CROSSVAL_JSON).is_file())
        for unfinished in sorted(f for f in runs_dir.iterdir() if f.is_dir() and f not in folders
                                 and any(f.glob("fold_*"))):
            log.warning("configuration '%s' skipped: it has fold runs but no %s", unfinished.name, CROSSVAL_JSON)
    if not folders:
        raise ConfigError(f"{runs_dir}: no configuration has {CROSSVAL_JSON}; finish a cross-validation first "
                          "(`autoseg train DATASET_DIR CONFIG all`)")
    docs = {}
    for folder in folders:
        doc = read_json(folder / CROSSVAL_JSON, ConfigError)
        if not isinstance(doc, dict):
            raise ConfigError(f"{folder / CROSSVAL_JSON}: expected a JSON object, found {type(doc).__name__}; "
                              "delete it and run the cross-validation again")
        docs[folder] = doc
    return docs


def resolve_dataset_dir(dataset_dir: str | Path | None, docs: dict[Path, dict[str, Any]]) -> Path:
    if dataset_dir is not None:
        return Path(dataset_dir)
    recorded = sorted({str(d["dataset_dir"]) for d in docs.values() if d.get("dataset_dir")})
    if not recorded:
        raise ConfigError(f"{next(iter(docs)) / CROSSVAL_JSON}: no 'dataset_dir' recorded; pass the dataset folder "
                          "(--dataset-dir) so out-of-fold predictions can be scored against its labelsTr")
    return Path(recorded[0])


def validation_splits(dataset: Dataset, workdir: Workdir, dataset_name: str) -> list[list[str]] | None:
    """Validation cases per fold: the dataset's splits_final.json, else the workdir's splits.json."""
    for path in (dataset.splits_file, workdir.splits_path(dataset_name)):
        if path is not None and path.is_file():
            splits = read_json(path, ConfigError)
            if not isinstance(splits, list) or not all(isinstance(s, dict) and isinstance(s.get("val"), list) for s in splits):
                raise ConfigError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} objects; fix or delete it")
            return [[str(c) for c in s["val"]] for s in splits]
    return None


def _expected_folds(doc: dict[str, Any], splits: list[list[str]] | None) -> list[str]:
    if splits is not None:
        return [str(k) for k in range(len(splits))]
    if isinstance(doc.get("num_folds"), int):
        return [str(k) for k in range(doc["num_folds"])]
    return [str(f) for f in doc.get("folds", [])]


def _run_problems(run_dir: Path, fold: str) -> tuple[list[str], dict[str, Any]]:
    """Problems of one fold's run folder (missing, unfinished, no final checkpoint) and its run.json."""
    if not run_dir.is_dir():
        return [f"fold {fold}: run folder {run_dir} is missing (this fold was never trained)"], {}
    if not (run_dir / "run.json").is_file():
        return [f"fold {fold}: {run_dir / 'run.json'} is missing (training never started or was cut off)"], {}
    run = read_json(run_dir / "run.json", ConfigError)
    run = run if isinstance(run, dict) else {}
    problems = []
    if run.get("status") != FINISHED:
        problems.append(f"fold {fold}: {run_dir / 'run.json'} has status {run.get('status')!r}, expected "
                        f"'{FINISHED}' (training is unfinished or was interrupted)")
    if not (run_dir / FINAL_CHECKPOINT).is_file():
        problems.append(f"fold {fold}: {run_dir / FINAL_CHECKPOINT} is missing")
    return problems, run


def _fold_problems(folder: Path, fold: str, splits: list[list[str]] | None, ending: str) -> tuple[list[str], list[str]]:
    """Problems of one fold (run folder, out-of-fold files) and its validation cases."""
    problems, run = _run_problems(folder / f"fold_{fold}", fold)
    val_cases = [str(c) for c in run.get("val_cases", [])]
    if not val_cases and splits is not None and fold.isdigit() and int(fold) < len(splits):
        val_cases = splits[int(fold)]
    predictions = folder / PREDICTIONS
    missing = [c for c in val_cases if not ((predictions / f"{c}{ending}").is_file() and (predictions / f"{c}.npz").is_file())]
    if missing:
        more = f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
        problems.append(f"fold {fold}: out-of-fold prediction (<case>{ending} and <case>.npz) missing in {predictions} "
                        f"for {', '.join(missing[:_LISTED])}{more}")
    return problems, val_cases


def _check_result(folder: Path, doc: dict[str, Any], splits: list[list[str]] | None,
                  ending: str) -> tuple[CrossvalResult | None, list[str]]:
    problems, cases = [], []
    folds = _expected_folds(doc, splits)
    if not folds:
        problems.append(f"{folder / CROSSVAL_JSON}: names no folds ('num_folds' and 'folds' are missing)")
    if doc.get("complete") is False:
        problems.append(f"{folder / CROSSVAL_JSON} says the cross-validation is not complete")
    for fold in folds:
        fold_problems, val_cases = _fold_problems(folder, fold, splits, ending)
        problems += fold_problems
        cases += val_cases
    if problems:
        return None, problems
    checkpoints = tuple(folder / f"fold_{k}" / FINAL_CHECKPOINT for k in folds)
    return CrossvalResult(folder.name, folder, checkpoints, tuple(sorted(set(cases)))), []


def complete_results(docs: dict[Path, dict[str, Any]], splits: list[list[str]] | None, ending: str,
                     explicit: bool) -> list[CrossvalResult]:
    """The complete configurations; an incomplete one is an error when asked for by name or when none is complete."""
    results, failures = [], {}
    for folder, doc in docs.items():
        result, problems = _check_result(folder, doc, splits, ending)
        if result is not None:
            results.append(result)
        else:
            failures[folder.name] = problems
    for config, problems in failures.items():
        message = _incomplete_message(config, problems)
        if explicit or not results:
            raise ConfigError(message)
        log.warning("%s; it is left out of the comparison", message)
    return results


def _incomplete_message(config: str, problems: list[str]) -> str:
    listing = "".join(f"\n  - {p}" for p in problems)
    return (f"configuration '{config}': cross-validation is incomplete:{listing}\n"
            + RESUME_HINT.format(config=config))
