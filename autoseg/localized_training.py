"""The localize -> crop -> segment model layout: both stages trained by one call.

    <workdir>/runs/<dataset>/localize-crop-segment/fold_<k>/layout.json   the two stages and the margin
    <workdir>/derived/<dataset>_crops/                                   the segmenter's training set

1. The localizer: a coarse configuration of the dataset (default 3d_lowres) trained on the full
   images and every label, as `autoseg train` would.
2. The crops: each training case cut to its reference labels' bounding box plus `margin_mm` on every
   side at full resolution, with its exact geometry (autoseg/crop_box.py), written as a dataset of
   its own (same case ids, same folds via splits_final.json, the task kept); crop_boxes.json lists
   each box. Reference boxes, not the localizer's, so the segmenter never learns the localizer's misses.
3. The segmenter: 3d_fullres of the crop dataset.

Prediction (autoseg/inference/localized.py) reads layout.json: localizer -> box -> segmenter on
the crop -> pasted back into the input's grid -> the task's post steps and report.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autoseg import io, schema
from autoseg.crop_box import box_around, box_document, crop_image
from autoseg.dataset import Dataset, load_dataset
from autoseg.errors import ConfigError
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)

LAYOUT = "localize-crop-segment"
LAYOUT_FILE = "layout.json"
CROP_BOXES = "crop_boxes.json"
SEGMENTER_CONFIG = "3d_fullres"
DEFAULT_LOCALIZER = "3d_lowres"
DEFAULT_MARGIN_MM = 20.0


def layout_folder(wd: Workdir, dataset: str, fold: str) -> Path:
    return wd.root / "runs" / dataset / LAYOUT / f"fold_{fold}"


def crops_folder(wd: Workdir, dataset: str) -> Path:
    return wd.root / "derived" / f"{dataset}_crops"


def layout_options(task, localizer: str | None, margin_mm: float | None) -> tuple[str, float]:
    """The localizer configuration and margin: given ones, else the task's options, else the defaults."""
    options = {}
    if task is not None:
        from autoseg.tasks import resolve

        options = schema.to_dict(resolve(task)[1])
    localizer = localizer or options.get("localizer_config", DEFAULT_LOCALIZER)
    margin = float(margin_mm if margin_mm is not None else options.get("margin_mm", DEFAULT_MARGIN_MM))
    if margin < 0:
        raise ConfigError(f"--margin {margin:g} mm: expected a distance >= 0")
    return localizer, margin


# ---------------------------------------------------------------- the crop dataset
def _crop_case(case, out: Path, margin_mm: float, ending: str) -> dict[str, Any]:
    """Cut one training case to its labels' box plus the margin; returns the box as written."""
    label, label_geometry = io.read_label(case.label)
    box = box_around(label > 0, label_geometry.spacing_zyx, margin_mm)
    if box is None:  # nothing labelled: the whole image is the region
        box = [(0, s) for s in label.shape]
    for channel, path in enumerate(case.images):
        image, geometry = io.read_image(path)
        cropped, cut = crop_image(image[0], geometry, box)
        io.write_image(out / "imagesTr" / f"{case.case_id}_{channel:04d}{ending}", cropped, cut)
    cropped, cut = crop_image(label, label_geometry, box)
    io.write_image(out / "labelsTr" / f"{case.case_id}{ending}", cropped, cut)
    return box_document(box, label_geometry, margin_mm)


def write_crop_dataset(dataset: Dataset, out: Path, margin_mm: float, splits: list | None) -> Path:
    """The segmenter's training set (see the module docstring); redone only when its cases or margin changed."""
    recorded = out / CROP_BOXES
    wanted = {"margin_mm": margin_mm, "cases": sorted(c.case_id for c in dataset.cases)}
    if recorded.is_file() and {k: json.loads(recorded.read_text()).get(k) for k in wanted} == wanted:
        log.info("%s is up to date", out)
        return out
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    meta = json.loads((dataset.root / "dataset.json").read_text())
    ending = meta.get("file_ending", ".nii.gz")
    boxes = {case.case_id: _crop_case(case, out, margin_mm, ending) for case in dataset.cases}
    meta["numTraining"] = len(boxes)
    schema.write_json_atomic(out / "dataset.json", meta)
    if splits:
        schema.write_json_atomic(out / "splits_final.json", splits)
    schema.write_json_atomic(recorded, {**wanted, "boxes": boxes})  # last: marks the dataset complete
    return out


# ---------------------------------------------------------------- both stages
@dataclass(frozen=True)
class Stages:
    """The pipeline steps both stages use, handed in by autoseg.api (which this module must not import)."""

    train: Callable[..., Path]  # api.train
    plan: Callable[..., Any]  # api.plan
    load_or_make_plan: Callable[..., Any]  # api.load_or_make_plan


def train_localized(stages: Stages, dataset_dir: str | Path, fold: str | int = 0, workdir: str | Path | None = None,
                    localizer: str | None = None, margin_mm: float | None = None, progress=None, on_event=None,
                    **options) -> Path:
    """Train the localizer, write the crop dataset, train the segmenter; returns the layout folder
    holding layout.json. `options` are training options (TrainConfig fields) for both stages."""
    from autoseg.config import load_plan
    from autoseg.tasks import task_of
    from autoseg.trainers.splits import FULL, splits_for

    wd, dataset = Workdir.at(workdir), load_dataset(dataset_dir)
    fold = str(fold)
    localizer_run = stages.train(dataset.root, localizer or _planned_localizer(stages, dataset, wd), fold, wd.root,
                              progress=progress, on_event=on_event, **options)
    localizer_plan = load_plan(wd.plan_path(dataset.name))
    task = task_of(localizer_plan)
    localizer, margin = layout_options(task, localizer, margin_mm)
    splits = None if fold == FULL else splits_for(dataset, wd.splits_path(dataset.name))
    crops = write_crop_dataset(dataset, crops_folder(wd, dataset.name), margin, splits)
    crop_set = load_dataset(crops)
    if not wd.plan_path(crop_set.name).is_file():
        stages.plan(crops, wd.root, configs=[SEGMENTER_CONFIG], workers=max(1, options.get("workers", 1)),
                 task=task.name if task else None, task_options=task.options if task else None,
                 **budget_of(localizer_plan))
    segmenter_run = stages.train(crops, SEGMENTER_CONFIG, fold, wd.root, progress=progress, on_event=on_event, **options)
    folder = layout_folder(wd, dataset.name, fold)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"layout": LAYOUT, "dataset": dataset.name, "fold": fold, "margin_mm": margin,
                "localizer": [str(Path(localizer_run).resolve())], "segmenter": [str(Path(segmenter_run).resolve())]}
    schema.write_json_atomic(folder / LAYOUT_FILE, document)
    log.info("localize-crop-segment model of %s fold %s: %s", dataset.name, fold, folder)
    return folder


def budget_of(plan) -> dict[str, Any]:
    """The time budget a plan was sized for, as plan options (none for a default plan): the crop
    dataset is planned for the same budget, so the segmenter is sized like the localizer."""
    chosen = next((c.budget for c in plan.configurations.values() if c.budget is not None), None)
    return {} if chosen is None else {"time_budget_s": chosen.time_budget_s, "device": chosen.device}


def _planned_localizer(stages: Stages, dataset: Dataset, wd: Workdir) -> str:
    """The task's localizer configuration (planning first when there is no plan yet)."""
    from autoseg.tasks import task_of

    plan = stages.load_or_make_plan(dataset, wd, workers=1, progress=None)
    return layout_options(task_of(plan), None, None)[0]


def read_layout(path: str | Path) -> dict[str, Any]:
    """layout.json of a localize-crop-segment model (its folder or the file), checked."""
    path = Path(path)
    file = path / LAYOUT_FILE if path.is_dir() else path
    document = schema.read_json(file, ConfigError)
    missing = [k for k in ("layout", "localizer", "segmenter", "margin_mm") if not isinstance(document, dict) or k not in document]
    if missing or document.get("layout") != LAYOUT:
        raise ConfigError(f"{file}: not a {LAYOUT} model (missing {missing or 'layout'}); "
                          "pass the folder `autoseg train-localized` wrote")
    return document
