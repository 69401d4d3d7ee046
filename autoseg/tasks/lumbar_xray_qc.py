"""`lumbar-xray-qc`: lumbar spine radiographs in AP, lateral and oblique positions with one model,
and an image-quality-control verdict per image derived from its segmentation.

The design of the lumbar QC study: segment vertebral bodies, pedicles and spinous processes, then
measure textbook positioning criteria on the label map (autoseg/tasks/qc_criteria.py) against
per-position thresholds (qc_rules.json, `--qc-rules FILE`), giving qualified / not qualified
with the failed criteria, their values and a reason each (README "lumbar-xray-qc").

- Configurations: 2d (radiographs).
- Positions (AP, LAT, OBL) from dataset.json "positions", cases.json, DICOM View Position or,
  failing those, inferred from the labels (autoseg/tasks/xray_positions.py).
- Training draws cases so that each position is drawn equally often (case_weights: 1 / the
  position's count among the training cases), so a rare position is not starved.
- After `autoseg predict`, `autoseg qc` runs over the predicted folder: qc.json, qc.csv, an
  overlay per failed image and <case>.report.json, with the positions the images' dataset gives
  (else inferred from the prediction): every criterion's value and pass/fail, verdict, reasons.
- Evaluation (`autoseg evaluate`): Dice per class and per position, the position of each case
  inferred from its reference labels.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg.errors import ConfigError
from autoseg.io import Geometry
from autoseg.schema import write_json_atomic
from autoseg.tasks.profile import TaskProfile, register
from autoseg.tasks.qc_criteria import infer_position
from autoseg.tasks.qc_report import radiograph_from, run_qc
from autoseg.tasks.reports import REPORT_SUFFIX
from autoseg.tasks.qc_rules import load_rules
from autoseg.tasks.xray_positions import dataset_positions

log = logging.getLogger(__name__)

NAME = "lumbar-xray-qc"


@dataclass(frozen=True)
class LumbarXrayQcOptions:
    """Where the QC thresholds come from, and whether training balances the positions."""

    qc_rules: str | None = None  # a rules JSON file; None: the shipped autoseg/tasks/qc_rules.json
    balance_positions: bool = True
    pixel_spacing_mm: float | None = None  # for inputs stored without spacing (PNG); None: as read

    def __post_init__(self) -> None:
        if self.pixel_spacing_mm is not None and not self.pixel_spacing_mm > 0:
            raise ConfigError(f"task '{NAME}' options: pixel_spacing_mm {self.pixel_spacing_mm}: expected > 0")
        if self.qc_rules is not None:
            load_rules(self.qc_rules)  # a bad rules file is refused when the task is chosen


# ---------------------------------------------------------------- training: positions balanced
def position_weights(dataset_root: Path, case_ids: Sequence[str], options: LumbarXrayQcOptions) -> dict[str, float]:
    """1 / (training cases of the same position), so each position is drawn equally often; cases
    without a recorded position form one group of their own."""
    if not options.balance_positions:
        return {}
    positions = dataset_positions(dataset_root)
    groups = {case_id: positions.get(case_id, "unknown") for case_id in case_ids}
    counts = Counter(groups.values())
    log.info("position-balanced sampling over %s", dict(counts))
    return {case_id: 1.0 / counts[group] for case_id, group in groups.items()}


# ---------------------------------------------------------------- report after prediction
def qc_folder(images_dir: Path, predictions_dir: Path, label_values: dict[str, int],
              options: LumbarXrayQcOptions) -> list[Path]:
    """`autoseg qc` over the predicted folder, positions given by the images' dataset where it has
    them: qc.json, qc.csv, an overlay per failed image, and <case>.report.json per case (naming the
    task, so `autoseg evaluate` finds it)."""
    run = run_qc(images_dir, predictions_dir, predictions_dir, rules_file=options.qc_rules,
                 label_values=label_values, pixel_spacing_mm=options.pixel_spacing_mm)
    written = [run.qc_json, run.qc_csv, *run.overlays]
    for result in run.results:
        row = result.flat()
        row["reasons"] = " ".join(result.criteria[name].reason + "." for name in result.failed)
        report = {"case_id": row.pop("case_id"), "task": NAME, **row}
        written.append(write_json_atomic(predictions_dir / f"{result.case_id}{REPORT_SUFFIX}", report))
    return written


# ---------------------------------------------------------------- evaluation: Dice per position
def dice_per_position(cases: Sequence[tuple[str, np.ndarray, np.ndarray, Geometry]], labels: dict[str, int],
                      options: LumbarXrayQcOptions) -> dict[str, Any]:
    """Mean Dice per class within each position (the position inferred from the reference labels)."""
    scores: dict[str, dict[str, list[float]]] = {}
    for case_id, prediction, reference, geometry in cases:
        radiograph = radiograph_from(np.squeeze(reference), geometry, labels, None)
        position = infer_position(radiograph) or "unknown"
        for name, value in labels.items():
            if value == 0:
                continue
            p, r = prediction == value, reference == value
            total = int(p.sum() + r.sum())
            if total:
                scores.setdefault(position, {}).setdefault(name, []).append(2.0 * float((p & r).sum()) / total)
    return {"dice_per_position": {position: {name: round(float(np.mean(v)), 4) for name, v in classes.items()}
                                  for position, classes in sorted(scores.items())},
            "cases_per_position": {p: max(len(v) for v in c.values()) for p, c in sorted(scores.items())}}


PROFILE = register(TaskProfile(
    name=NAME,
    summary="lumbar spine X-ray AP/LAT/OBL with one model and a quality-control verdict per image: "
            "position-balanced training; qc, qc-evaluate",
    phantom="lumbar-xray",
    options=LumbarXrayQcOptions,
    configurations=("2d",),
    folder_report=qc_folder,
    evaluation=dice_per_position,
    case_weights=position_weights,
))
