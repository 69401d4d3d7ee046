"""Predict with a model bundle (best.json from find-best, or an imported model's model.json).

A bundle's members are configurations, each a fold ensemble with its own preprocessing, so a 2D
and a 3D configuration can be members together. Per case, every member runs the Predictor stages
on its own: `infer` (preprocess, sliding window, softmax averaged over its folds), then its
probabilities are restored to the original grid. There the members' probabilities are averaged,
turned into label values by argmax, and the bundle's post-processing is applied (largest
foreground component, then per listed class its largest component).

BundlePredictor is a Predictor whose two stages (`infer`, `finish`) are replaced; everything else
(input discovery, checks before the first write, skip-existing, overlapped writing, the
probabilities files, the in-memory `predict`) is Predictor's, unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autoseg import io
from autoseg.ensembling import apply_postprocessing, labels_from_probabilities
from autoseg.errors import CheckpointError
from autoseg.inference.bundle import ModelBundle, load_bundle, member_checkpoints
from autoseg.devices import resolve_device
from autoseg.inference.ensemble import load_models
from autoseg.inference.predictor import Inferred, Predictor
from autoseg.preprocessing import restore_original

log = logging.getLogger(__name__)


@dataclass
class BundleInferred:
    """Each member's ensemble probabilities on its own preprocessed grid, in member order."""

    members: list[Inferred]

    @property
    def image(self) -> np.ndarray | None:  # members share the input and the task (Predictor._finish_case)
        return self.members[0].image

    @property
    def properties(self) -> dict:
        return self.members[0].properties


class BundlePredictor(Predictor):
    """Averages a bundle's members on the original image grid, then applies the bundle's post-processing."""

    def __init__(self, bundle_path: str | Path, device: str | torch.device = "auto", precision: str = "auto",
                 tta: bool = True, step_fraction: float = 0.5, tile_batch_size: int | None = None,
                 slicewise: bool = False):
        self.bundle, base = load_bundle(bundle_path)
        target = resolve_device(device)
        self.member_predictors = [
            Predictor(load_models(paths, target), target, precision, tta, step_fraction, tile_batch_size,
                      slicewise=slicewise)
            for paths in member_checkpoints(self.bundle, base)
        ]
        _check_members(self.bundle, self.member_predictors, base)
        # the first member answers Predictor's questions about channels, labels and dimensionality; all members agree
        super().__init__(self.member_predictors[0].ensemble, target, precision, tta, step_fraction, tile_batch_size,
                         slicewise=slicewise)
        log.info("bundle of %s: %d member(s), post-processing %s", self.bundle.dataset_name,
                 len(self.member_predictors), self.bundle.postprocessing)

    def infer(self, image: np.ndarray, geometry: io.Geometry, case_id: str = "case") -> BundleInferred:  # type: ignore[override]
        """The network part, member by member (each with its own preprocessing)."""
        return BundleInferred([member.infer(image, geometry, case_id) for member in self.member_predictors])

    def finish(self, inferred: BundleInferred) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        """Restore each member to the original grid, average, argmax, post-process."""
        restored = (restore_original(part.probabilities, part.properties, member.ensemble.config)
                    for member, part in zip(self.member_predictors, inferred.members))
        total = next(restored)  # a bundle has at least one member (load_bundle checks)
        for probabilities in restored:  # one member at a time: memory stays at two volumes
            total += probabilities
        total /= len(inferred.members)
        label = labels_from_probabilities(total, self.ensemble.label_values)
        return apply_postprocessing(label, self.bundle.postprocessing), total


def _check_members(bundle: ModelBundle, predictors: list[Predictor], base: Path) -> None:
    """Members must share labels, input channels and training image dimensionality, and match the
    labels the bundle declares."""
    first = predictors[0].ensemble
    if first.labels != bundle.labels:
        raise CheckpointError(f"model bundle in {base}: member '{bundle.members[0].config}' predicts labels "
                              f"{first.labels} but the bundle declares {bundle.labels}; re-run find-best or fix the bundle")
    for member, predictor in zip(bundle.members[1:], predictors[1:]):
        other = predictor.ensemble
        if (other.labels, other.in_channels, other.image_ndim) != (first.labels, first.in_channels, first.image_ndim):
            raise CheckpointError(
                f"model bundle in {base}: member '{member.config}' ({other.members[0].source}) has labels "
                f"{other.labels}, {other.in_channels} input channel(s) and {other.image_ndim}D training images, but member "
                f"'{bundle.members[0].config}' has {first.labels}, {first.in_channels} and {first.image_ndim}D; bundle "
                "members must be trained on the same dataset")
