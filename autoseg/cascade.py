"""The cascade's extra input channels: the first stage's prediction, one-hot, on the second stage's grid.

A configuration with `previous_stage` (3d_cascade_fullres after 3d_lowres, planners/cascade.py)
takes, after the image's channels, one channel per foreground class: 1 where the first stage
predicted that class. The prediction (a label map on the case's original grid) goes through the
same crop and resampling as the case's labels (nearest-like per-class resampling), so it lands on
exactly the preprocessed grid.

Training (`add_previous_stage`, called after preprocessing): each case gets the first stage's
out-of-fold prediction from its cross-validation (<workdir>/runs/<dataset>/<previous>/crossval/
predictions/), as nnU-Net does: the prediction of the fold that did not train on the case, so the
second stage learns from the first stage's real mistakes. Every case needs one; when some are
missing, training is refused with the cases named and the fix (cross-validate the first stage),
never silently trained without (the network would learn to ignore channels it needs at prediction).
The channels are stored in the case's .npy, so the loader and its augmentations treat them like
image channels (spatial transforms keep them aligned; intensity augmentations perturb them a
little, much as nnU-Net's random changes to the one-hot maps do).

Prediction (autoseg/inference/cascade.py): the first stage's models predict the case, then the
same function makes the channels.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg import io, schema
from autoseg.atomic import atomic_write
from autoseg.config import ConfigPlan, Plan
from autoseg.cropping import crop
from autoseg.errors import ConfigError
from autoseg.resampling import resample_label

log = logging.getLogger(__name__)

RECORD = "previous_stage.json"
_PASS_THROUGH = {"low": None, "high": None, "mean": 0.0, "std": 1.0, "masked": False, "minimum": 0.0, "maximum": 1.0}


def foreground_values(plan_labels: dict[str, int]) -> list[int]:
    return sorted(v for v in plan_labels.values() if v > 0)


def previous_stage_channel_count(config: ConfigPlan) -> int:
    """Input channels a cascade's second stage adds to the image's (0 for other configurations)."""
    return config.network.num_classes - 1 if config.previous_stage else 0


def previous_stage_channels(labels: np.ndarray, properties: dict[str, Any], config: ConfigPlan,
                            values: Sequence[int]) -> np.ndarray:
    """First-stage labels on the original grid -> (len(values), *resampled) float32 one-hot on the
    preprocessed grid of `properties` (crop box, spacings, shape from preprocess_case)."""
    if list(labels.shape) != list(properties["original_shape"]):
        raise ConfigError(f"case '{properties['case_id']}': the first stage's prediction has shape {labels.shape}, "
                          f"the image {tuple(properties['original_shape'])}; predict the first stage on the same images")
    cropped = crop(labels, properties["crop_bbox"])
    resampled = resample_label(cropped, properties["spacing_before"], properties["spacing_after"], config.resampling,
                               out_shape=properties["resampled_shape"])
    return np.stack([resampled == v for v in values]).astype(np.float32)


def out_of_fold_folder(workdir_root: Path, dataset: str, previous: str) -> Path:
    return Path(workdir_root) / "runs" / dataset / previous / "crossval" / "predictions"


def _signature(path: Path) -> list[float]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime]


def out_of_fold_predictions(dataset, plan: Plan, config_name: str, workdir_root: Path) -> dict[str, Path]:
    """Case id -> the first stage's out-of-fold prediction; ConfigError naming the missing cases."""
    config = plan.config(config_name)
    source = out_of_fold_folder(workdir_root, dataset.name, config.previous_stage)
    predictions = {c.case_id: source / f"{c.case_id}{dataset.file_ending}" for c in dataset.cases}
    missing = sorted(case for case, path in predictions.items() if not path.is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{config_name} needs the out-of-fold predictions of {config.previous_stage} for every "
                          f"training case, but {source} lacks {len(missing)} ({shown}); cross-validate the first "
                          f"stage first: `autoseg train {dataset.root} {config.previous_stage} all`")
    return predictions


def add_previous_stage(folder: Path, dataset, plan: Plan, config_name: str, workdir_root: Path) -> None:
    """Append the first stage's out-of-fold one-hot channels to every preprocessed case of `folder`
    (redone for a case whose prediction file changed since)."""
    config = plan.config(config_name)
    predictions = out_of_fold_predictions(dataset, plan, config_name, workdir_root)
    source = out_of_fold_folder(workdir_root, dataset.name, config.previous_stage)
    record_path = folder / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    values = foreground_values(plan.labels)
    image_channels = config.network.in_channels - len(values)
    for case_id, path in predictions.items():
        if record.get(case_id) == _signature(path) and _channels(folder, case_id) == config.network.in_channels:
            continue
        _append_channels(folder, case_id, path, config, values, image_channels)
        record[case_id] = _signature(path)
    schema.write_json_atomic(record_path, {**record, "source": str(source)})
    log.info("%s: first-stage (%s) channels from %s", folder, config.previous_stage, source)


def _channels(folder: Path, case_id: str) -> int:
    return int(np.load(folder / f"{case_id}.npy", mmap_mode="r").shape[0])


def _append_channels(folder: Path, case_id: str, prediction: Path, config: ConfigPlan, values: Sequence[int],
                     image_channels: int) -> None:
    properties = json.loads((folder / f"{case_id}.json").read_text())
    data = np.load(folder / f"{case_id}.npy")[:image_channels]  # a rebuilt case keeps only its image
    labels, _ = io.read_label(prediction)
    extra = previous_stage_channels(labels, properties, config, values)
    with atomic_write(folder / f"{case_id}.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate([data, extra]).astype(np.float32))
    if "normalization" in properties:  # the loader normalizes: the one-hot channels pass through
        properties["normalization"] = properties["normalization"][:image_channels] + [_PASS_THROUGH] * len(values)
        schema.write_json_atomic(folder / f"{case_id}.json", properties)
