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
reads it. Which configurations are complete is checked by autoseg/crossval_results.py. Cases are
scored one after the other (simple, and fast enough for the small out-of-fold sets of one dataset).
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
from autoseg.crossval_results import (
    CrossvalResult, complete_results, crossval_documents, folder_name, resolve_dataset_dir, validation_splits,
)
from autoseg.dataset import Dataset, load_dataset
from autoseg.ensembling import apply_postprocessing, average_probabilities, labels_from_probabilities
from autoseg.errors import ConfigError, DatasetError
from autoseg.evaluation import MetricRow, case_metrics, summarize
from autoseg.inference.bundle import BundleMember, ModelBundle, Postprocessing, save_bundle
from autoseg.progress import ProgressFactory, task
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)

BEST_FILE = "best.json"
_TOLERANCE = 1e-9  # float noise is not an improvement


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
    return Workdir.at(workdir).root / "runs" / folder_name(dataset_name, "dataset") / BEST_FILE


def find_best(dataset_name: str, workdir: str | Path | None = None, dataset_dir: str | Path | None = None,
              configs: Sequence[str] | None = None, progress: ProgressFactory | None = None) -> ModelBundle:
    """Rank configurations and pairs by out-of-fold Dice, choose post-processing, write best.json.

    dataset_dir: the dataset folder whose labelsTr are the references (default: "dataset_dir" in
    crossval.json). configs: only these configurations; each must be complete (default: every
    configuration with crossval.json; incomplete ones are skipped with a warning).
    """
    runs_dir = best_bundle_path(workdir, dataset_name).parent
    docs = crossval_documents(runs_dir, configs)
    dataset = load_dataset(resolve_dataset_dir(dataset_dir, docs))
    if dataset.name != dataset_name:
        log.warning("dataset folder %s is named %s, the runs belong to %s", dataset.root, dataset.name, dataset_name)
    results = complete_results(docs, validation_splits(dataset, Workdir.at(workdir), dataset_name),
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


# ---------------------------------------------------------------- the candidates
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
