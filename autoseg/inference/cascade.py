"""Prediction with a cascade's second stage: run the first stage, add its one-hot channels.

A model whose configuration has `previous_stage` (3d_cascade_fullres) finds its first stage next
to it in the workdir, as nnU-Net does: <runs>/<dataset>/<previous_stage>/fold_<k> for each fold
<k> of the second stage's members when all exist (in cross-validation each fold's validation cases
then get the first stage that never saw them), else every numbered fold of the first stage; when
neither exists the model is refused with the folders it looked in. An exported cascade carries its
first stage in the same layout (autoseg/sharing.py), so the same rule finds it after import.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from autoseg import io
from autoseg.cascade import foreground_values, previous_stage_channels
from autoseg.errors import ConfigError
from autoseg.inference.ensemble import Ensemble

log = logging.getLogger(__name__)


def first_stage_runs(ensemble: Ensemble) -> list[Path]:
    """The first stage's run folders beside the second stage's (see the module docstring)."""
    runs = [member.source.parent for member in ensemble.members]  # checkpoint -> its run folder
    return first_stage_runs_of(runs, ensemble.config.previous_stage)


def first_stage_runs_of(runs: list[Path], previous: str) -> list[Path]:
    """The same rule from the second stage's run folders (<root>/<config>/<fold>) and the first stage's name."""
    stage_dirs = {run.parent.parent / previous for run in runs}
    same_folds = [run.parent.parent / previous / run.name for run in runs]
    if all((run / "run.json").is_file() or any(run.glob("*.pt")) for run in same_folds):
        return same_folds
    numbered = sorted(r for d in stage_dirs for r in d.glob("fold_*") if r.name[5:].isdigit() and any(r.glob("*.pt")))
    if not numbered:
        raise ConfigError(f"{runs[0]} is the second stage of a cascade, but its first stage '{previous}' was not "
                          f"found in {', '.join(str(d) for d in sorted(stage_dirs))}; train it there "
                          f"(`autoseg train DATASET {previous} all`) or predict with another configuration")
    return numbered


class PreviousStage:
    """The first stage's predictor and the one-hot channels it gives a second-stage case."""

    def __init__(self, ensemble: Ensemble, predictor_for: Callable[[list[Path]], object]):
        runs = first_stage_runs(ensemble)
        log.info("cascade: first stage %s from %s", ensemble.config.previous_stage, ", ".join(map(str, runs)))
        self.predictor = predictor_for(runs)  # the first stage is an ordinary prediction
        self.config = ensemble.config
        self.values = foreground_values(ensemble.labels)

    def add_channels(self, data: np.ndarray, image: np.ndarray, geometry: io.Geometry, properties: dict) -> np.ndarray:
        """data (C, *resampled) -> (C + foreground classes, *resampled)."""
        labels, _ = self.predictor.predict_array(image, geometry, properties["case_id"])
        return np.concatenate([data, previous_stage_channels(labels, properties, self.config, self.values)])


def previous_stage_for(ensemble: Ensemble, predictor_for: Callable[[list[Path]], object]) -> PreviousStage | None:
    """The first stage of a cascade's second stage (its runs -> `predictor_for(runs)`, a predictor with
    the second stage's settings, handed in so this module needs no predictor); None for other models."""
    if getattr(ensemble.config, "previous_stage", None) is None:
        return None
    return PreviousStage(ensemble, predictor_for)
