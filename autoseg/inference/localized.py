"""Prediction with a localize -> crop -> segment model (layout.json, see autoseg/localized_training.py).

Per case: the localizer predicts the whole image -> the bounding box of everything it labelled,
grown by the layout's margin in mm and clipped to the image -> the segmenter predicts that crop
at its exact geometry -> the crop's labels are pasted back at the same voxels of an empty map on
the input's grid -> the task's post steps and report. Written per case: the label map (the
input's spacing, origin and direction), <case>.crop_box.json and, with a task report,
<case>.report.json (plus task_report.csv for the folder). A localizer that finds nothing gives
an empty label map and a warning, never an error.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg import io, schema
from autoseg.crop_box import box_around, box_document, crop_image, paste_back
from autoseg.inference.ensemble import load_models
from autoseg.inference.inputs import discover_cases
from autoseg.inference.predictor import OUTPUT_FOLDER, Predictor
from autoseg.progress import ProgressFactory, task
from autoseg.tasks import PredictedCase, finish_prediction
from autoseg.tasks import reports as task_reports
from autoseg.workdir import make_folder

log = logging.getLogger(__name__)

CROP_BOX_SUFFIX = ".crop_box.json"


class LocalizedPredictor:
    """The two stages of a layout, each a Predictor with the same options."""

    def __init__(self, layout: dict[str, Any], device: str = "auto", precision: str = "auto", tta: bool = True,
                 step_fraction: float = 0.5):
        self.margin_mm = float(layout["margin_mm"])
        self.localizer = Predictor(load_models(layout["localizer"], device), device, precision, tta, step_fraction)
        self.segmenter = Predictor(load_models(layout["segmenter"], device), device, precision, tta, step_fraction)
        self.task = self.segmenter.task
        self.labels = dict(self.segmenter.ensemble.labels)

    def locate(self, image: np.ndarray, geometry: io.Geometry, case_id: str):
        """The crop box of the lumbar (or any) region the localizer finds; None when it finds nothing."""
        coarse, _ = self.localizer.finish(self.localizer.infer(image, geometry, case_id))
        return box_around(coarse > 0, geometry.spacing_zyx, self.margin_mm)

    def predict_case(self, image: np.ndarray, geometry: io.Geometry, case_id: str = "case"):
        """image (C, *spatial) -> (labels on the input's grid, the task's report or None, the crop box document)."""
        box = self.locate(image, geometry, case_id)
        if box is None:
            log.warning("case '%s': the localizer found no region; its prediction is empty", case_id)
            labels = np.zeros(image.shape[1:], dtype=np.uint8)
        else:
            crop, crop_geometry = crop_image(image, geometry, box)
            cropped, _ = self.segmenter.finish(self.segmenter.infer(crop, crop_geometry, case_id))
            labels = paste_back(cropped, box, image.shape[1:])
        document = box_document(box, geometry, self.margin_mm)
        labels, report = finish_prediction(self.task, PredictedCase(case_id, image, geometry, labels, self.labels))
        if report is not None:
            report["crop_box_zyx"] = document["box_zyx"]
        return labels, report, document

    def predict_folder(self, inputs: str | Path | Sequence[str | Path], output_dir: str | Path,
                       skip_existing: bool = False, progress: ProgressFactory | None = None) -> list[Path]:
        """Every case of a folder or file list; every case checked before the first output is written."""
        output_dir = make_folder(output_dir, OUTPUT_FOLDER)
        cases = discover_cases(inputs)
        targets = {c.case_id: output_dir / c.output_name() for c in cases}
        todo = [c for c in cases if not (skip_existing and targets[c.case_id].is_file())]
        for case in todo:
            self.segmenter._check_case(case, targets[case.case_id])
        advance = task(progress, "Predicting (localize, crop, segment)", len(cases))
        advance(len(cases) - len(todo))
        written = []
        for case in todo:
            image, geometry = self.segmenter._read_case(case)
            labels, report, document = self.predict_case(image, geometry, case.case_id)
            target = targets[case.case_id]
            stem = target.name[: len(target.name) - len(io.file_ending(target))]
            schema.write_json_atomic(target.with_name(stem + CROP_BOX_SUFFIX), {"case_id": case.case_id, **document})
            if report is not None:
                task_reports.write_case_report(target, report)
            written.append(io.write_image(target, labels, geometry))
            advance(1)
        if self.task is not None:
            task_reports.write_summary(output_dir, list(targets.values()))
        return written
