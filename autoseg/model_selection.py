"""find-best: choose the configuration (or pair of configurations) and the post-processing to ship.

Reads the cross-validation results of every configuration of a dataset:

    <workdir>/runs/<dataset>/<config>/fold_<k>/run.json, checkpoint_final.pt
    <workdir>/runs/<dataset>/<config>/crossval/crossval.json
    <workdir>/runs/<dataset>/<config>/crossval/predictions/<case><ending>, <case>.npz   (out-of-fold)

Candidates are every complete configuration alone and every pair of them (their out-of-fold
probabilities averaged, then argmax). All are scored the same way against the dataset's labelsTr:
Dice per class and case (`evaluation.case_metrics`), averaged over cases whose reference holds
the class, then over classes (`evaluation.summarize`). Ties go to fewer members, then by name.

On the winner's out-of-fold labels, post-processing is chosen greedily: first keeping the largest
component of the foreground union, then per class keeping that class's largest component. A step
is kept only when it raises the mean foreground Dice and lowers no class's mean Dice. Cleaning one
class only turns its own voxels into background, so the per-class steps are independent.

The result is written as <workdir>/runs/<dataset>/best.json (a ModelBundle, checkpoint paths
relative to that folder and never outside it: dataset and configuration names are plain folder
names, and reading a bundle refuses paths that leave its folder); `autoseg predict --model best`
reads it. Cases are scored one after the other (simple, and fast enough for the small out-of-fold
sets of one dataset).
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from autoseg import io
from autoseg.dataset import Dataset, load_dataset
from autoseg.ensembling import apply_postprocessing, average_probabilities, labels_from_probabilities
from autoseg.errors import ConfigError, DatasetError
from autoseg.evaluation import MetricRow, case_metrics, summarize
from autoseg.inference.bundle import BundleMember, ModelBundle, Postprocessing, save_bundle
from autoseg.progress import ProgressFactory, task
from autoseg.schema import read_json
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
CROSSVAL_JSON = Path("crossval") / "crossval.json"
PREDICTIONS = Path("crossval") / "predictions"
FINAL_CHECKPOINT = "checkpoint_final.pt"
FINISHED = "finished"
RESUME_HINT = ("fix: run `autoseg train DATASET_DIR {config} all` to resume the unfinished folds and write the "
               "out-of-fold predictions, then run find-best again")
_TOLERANCE = 1e-9  # float noise is not an improvement
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


@dataclass(frozen=True)
class Candidate:
    members: tuple[CrossvalResult, ...]

    @property
    def name(self) -> str:
        return "+".join(m.config for m in self.members)


@dataclass(frozen=True)
class Score:
    mean_foreground_dice: float
    per_class_dice: dict[str, float]


@dataclass(frozen=True)
class Ranked:
    """A scored candidate: its per case x class metric rows and their means."""

    candidate: Candidate
    rows: list[MetricRow]
    score: Score


def best_bundle_path(workdir: str | Path | None, dataset_name: str) -> Path:
    """Where find-best writes its bundle: <workdir>/runs/<dataset>/best.json."""
    return Workdir.at(workdir).root / "runs" / _folder_name(dataset_name, "dataset") / BEST_FILE


def _folder_name(name: str, what: str) -> str:
    """A name used as one folder under runs/: no separators and no '..', so paths stay in that tree."""
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ConfigError(f"{what} name '{name}' is not a plain folder name (no '/', '\\' or '..'); pass the name "
                          "as it appears under <workdir>/runs")
    return name


def find_best(dataset_name: str, workdir: str | Path | None = None, dataset_dir: str | Path | None = None,
              configs: Sequence[str] | None = None, progress: ProgressFactory | None = None) -> ModelBundle:
    """Rank configurations and pairs by out-of-fold Dice, choose post-processing, write best.json.

    dataset_dir: the dataset folder whose labelsTr are the references (default: "dataset_dir" in
    crossval.json). configs: only these configurations; each must be complete (default: every
    configuration with crossval.json; incomplete ones are skipped with a warning).
    """
    runs_dir = best_bundle_path(workdir, dataset_name).parent
    docs = _crossval_documents(runs_dir, configs)
    dataset = load_dataset(_resolve_dataset_dir(dataset_dir, docs))
    if dataset.name != dataset_name:
        log.warning("dataset folder %s is named %s, the runs belong to %s", dataset.root, dataset.name, dataset_name)
    results = _complete_results(docs, _validation_splits(dataset, Workdir.at(workdir), dataset_name),
                                dataset.file_ending, explicit=configs is not None)
    references = _references(dataset, _shared_cases(results))
    labels = {name: value for name, value in dataset.labels.items() if value > 0}
    scorer = _Scorer(references, labels, dataset.file_ending, progress)
    ranked = scorer.rank(_candidates(results))
    postprocessing, final = scorer.choose_postprocessing(ranked[0])
    bundle = _bundle(dataset_name, dataset.labels, ranked, postprocessing, final, runs_dir, workdir)
    save_bundle(bundle, runs_dir / BEST_FILE)
    log.info("best: %s (mean foreground Dice %.4f), postprocessing %s", ranked[0].candidate.name,
             final.mean_foreground_dice, postprocessing)
    return bundle


# ---------------------------------------------------------------- collecting cross-validation results
def _crossval_documents(runs_dir: Path, configs: Sequence[str] | None) -> dict[Path, dict[str, Any]]:
    """config folder -> its crossval.json, for the requested (or every) configuration."""
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no training runs for this dataset; train every fold of a configuration "
                          "first (`autoseg train DATASET_DIR CONFIG all`) or check --workdir and the dataset name")
    if configs is not None:
        folders = [runs_dir / _folder_name(c, "configuration") for c in configs]
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


def _resolve_dataset_dir(dataset_dir: str | Path | None, docs: dict[Path, dict[str, Any]]) -> Path:
    if dataset_dir is not None:
        return Path(dataset_dir)
    recorded = sorted({str(d["dataset_dir"]) for d in docs.values() if d.get("dataset_dir")})
    if not recorded:
        raise ConfigError(f"{next(iter(docs)) / CROSSVAL_JSON}: no 'dataset_dir' recorded; pass the dataset folder "
                          "(--dataset-dir) so out-of-fold predictions can be scored against its labelsTr")
    return Path(recorded[0])


def _validation_splits(dataset: Dataset, workdir: Workdir, dataset_name: str) -> list[list[str]] | None:
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


def _complete_results(docs: dict[Path, dict[str, Any]], splits: list[list[str]] | None, ending: str,
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


def _shared_cases(results: list[CrossvalResult]) -> list[str]:
    shared = set(results[0].cases).intersection(*(r.cases for r in results[1:]))
    if any(set(r.cases) != shared for r in results):
        log.warning("configurations were validated on different cases; comparing them on the %d shared case(s)",
                    len(shared))
    if not shared:
        raise ConfigError("the configurations share no validation case, so they cannot be compared; "
                          "train them with the same splits (splits.json)")
    return sorted(shared)


def _references(dataset: Dataset, cases: list[str]) -> dict[str, Path]:
    labels = {c.case_id: c.label for c in dataset.cases}
    missing = [c for c in cases if c not in labels]
    if missing:
        raise DatasetError(f"{dataset.root}: out-of-fold cases have no reference in labelsTr; pass the dataset "
                           "the runs were trained on (--dataset-dir)", [f"case '{c}'" for c in missing])
    return {c: labels[c] for c in cases}


def _candidates(results: list[CrossvalResult]) -> list[Candidate]:
    singles = [Candidate((r,)) for r in results]
    return singles + [Candidate(pair) for pair in itertools.combinations(results, 2)]


# ---------------------------------------------------------------- scoring
class _Scorer:
    """Scores label maps of the shared cases against their references, case by case."""

    def __init__(self, references: dict[str, Path], labels: dict[str, int], ending: str,
                 progress: ProgressFactory | None):
        self.references, self.labels, self.ending, self.progress = references, labels, ending, progress

    def rank(self, candidates: list[Candidate]) -> list[Ranked]:
        """Every candidate scored, best first (ties: fewer members, then name)."""
        rows: dict[str, list[MetricRow]] = {c.name: [] for c in candidates}
        for case_id, ref, spacing in self._cases("Scoring candidates"):
            for candidate in candidates:
                rows[candidate.name] += self._rows(case_id, self._labels_of(candidate, case_id), ref, spacing)
        ranked = [Ranked(c, rows[c.name], self.score(rows[c.name])) for c in candidates]
        ranked.sort(key=lambda r: (_sortable(r.score.mean_foreground_dice), len(r.candidate.members), r.candidate.name))
        for entry in ranked:
            log.info("%-30s mean foreground Dice %.4f", entry.candidate.name, entry.score.mean_foreground_dice)
        return ranked

    def choose_postprocessing(self, best: Ranked) -> tuple[Postprocessing, Score]:
        """Greedy: largest foreground component, then per class largest component; each kept only if it helps."""
        candidate, rows, before = best.candidate, best.rows, best.score
        union_rows = self._rows_after(candidate, Postprocessing(keep_largest_foreground=True))
        keep_union = _improves(before, self.score(union_rows))
        if keep_union:
            rows, before = union_rows, self.score(union_rows)
        per_class = self._per_class_rows(candidate, keep_union)
        kept = {name: value for name, value in self.labels.items()
                if _improves(before, self.score(_replace_class(rows, name, per_class[name])))}
        for name in kept:  # independent steps: each touches its own class's rows only
            rows = _replace_class(rows, name, per_class[name])
        return Postprocessing(keep_union, tuple(sorted(kept.values()))), self.score(rows)

    def score(self, rows: list[MetricRow]) -> Score:
        mean_per_class, mean = summarize(rows, self.labels)
        return Score(mean, {name: means["dice"] for name, means in mean_per_class.items()})

    # ------------------------------------------------------------ helpers
    def _cases(self, description: str) -> Iterator[tuple[str, np.ndarray, tuple[float, ...]]]:
        advance = task(self.progress, description, len(self.references))
        for case_id, path in self.references.items():
            ref, geometry = io.read_label(path)
            yield case_id, ref, geometry.spacing_zyx
            advance(1)

    def _labels_of(self, candidate: Candidate, case_id: str) -> np.ndarray:
        """A single configuration's out-of-fold label map, or the argmax of the members' mean probabilities."""
        if len(candidate.members) == 1:
            return io.read_label(candidate.members[0].predictions / f"{case_id}{self.ending}")[0]
        probabilities, values, _ = average_probabilities([m.predictions / f"{case_id}.npz" for m in candidate.members])
        return labels_from_probabilities(probabilities, values)

    def _rows(self, case_id: str, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
              labels: dict[str, int] | None = None) -> list[MetricRow]:
        labels = labels or self.labels
        if pred.shape != ref.shape:
            raise DatasetError(f"case '{case_id}': out-of-fold prediction of shape {pred.shape} does not match its "
                               f"reference {self.references[case_id]} of shape {ref.shape}; predict it again")
        metrics = case_metrics(pred, ref, spacing, list(labels.values()))
        return [MetricRow(case_id=case_id, label=name, value=value, **metrics[value]) for name, value in labels.items()]

    def _rows_after(self, candidate: Candidate, postprocessing: Postprocessing) -> list[MetricRow]:
        """Rows of the candidate's labels post-processed exactly as prediction will (`apply_postprocessing`)."""
        rows = []
        for case_id, ref, spacing in self._cases("Trying post-processing"):
            rows += self._rows(case_id, apply_postprocessing(self._labels_of(candidate, case_id), postprocessing), ref, spacing)
        return rows

    def _per_class_rows(self, candidate: Candidate, keep_union: bool) -> dict[str, list[MetricRow]]:
        """Rows of each class after keeping that class's largest component (on top of the union step if kept)."""
        per_class: dict[str, list[MetricRow]] = {name: [] for name in self.labels}
        for case_id, ref, spacing in self._cases("Trying per-class post-processing"):
            label = apply_postprocessing(self._labels_of(candidate, case_id), Postprocessing(keep_union))
            for name, value in self.labels.items():
                cleaned = apply_postprocessing(label, Postprocessing(keep_largest_classes=(value,)))
                per_class[name] += self._rows(case_id, cleaned, ref, spacing, {name: value})
        return per_class


def _sortable(dice: float) -> float:
    return math.inf if math.isnan(dice) else -dice


def _improves(before: Score, after: Score) -> bool:
    """Higher mean foreground Dice and no class lower (classes without references are ignored)."""
    if math.isnan(after.mean_foreground_dice) or not after.mean_foreground_dice > before.mean_foreground_dice + _TOLERANCE:
        return False
    return all(math.isnan(before.per_class_dice[n]) or after.per_class_dice[n] >= before.per_class_dice[n] - _TOLERANCE
               for n in before.per_class_dice)


def _replace_class(rows: list[MetricRow], name: str, replacement: list[MetricRow]) -> list[MetricRow]:
    return [r for r in rows if r.label != name] + replacement


# ---------------------------------------------------------------- the bundle
def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _ranking_row(candidate: Candidate, score: Score) -> dict[str, Any]:
    return {"name": candidate.name, "configs": [m.config for m in candidate.members],
            "mean_foreground_dice": _finite_or_none(score.mean_foreground_dice),
            "per_class_dice": {n: _finite_or_none(d) for n, d in score.per_class_dice.items()}}


def _bundle(dataset_name: str, labels: dict[str, int], ranked: list[Ranked], postprocessing: Postprocessing,
            final: Score, runs_dir: Path, workdir: str | Path | None) -> ModelBundle:
    """best.json's content; checkpoint paths are relative to runs_dir, where the file lives."""
    members = tuple(BundleMember(m.config, tuple(Path(os.path.relpath(c, runs_dir)).as_posix() for c in m.checkpoints))
                    for m in ranked[0].candidate.members)
    command = f"autoseg predict -i INPUT -o OUTPUT --model best -d {dataset_name} -w {Workdir.at(workdir).root}"
    return ModelBundle(dataset_name, dict(labels), members, postprocessing, _finite_or_none(final.mean_foreground_dice),
                       command, tuple(_ranking_row(r.candidate, r.score) for r in ranked))
