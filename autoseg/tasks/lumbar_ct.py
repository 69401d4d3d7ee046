"""`lumbar-ct`: L1-L5 (and the sacrum) in abdominal or whole-body CT, localized then segmented.

The design of the lumbar CT study: a coarse network finds the lumbar region in the large volume,
its bounding box plus a margin (`margin_mm`) is cropped at full resolution, a full-resolution
network segments each vertebra inside the crop, and the result is pasted back into the image's
grid (model layout "localize-crop-segment": `autoseg train-localized`, `autoseg predict-localized`;
the cascade 3d_lowres -> 3d_cascade_fullres and a plain 3d_fullres are the alternatives).

- Configurations: 3d_fullres and 3d_lowres (the localizer; large fields of view get it, and with
  it the cascade 3d_cascade_fullres).
- Post step: level consistency (autoseg/tasks/levels.py): each of L1..L5 one component, in
  head-to-foot order, none twice; repaired where unambiguous, flagged otherwise; then each level
  and the sacrum (one bone with S1) keeps its largest component, so every output has one per level.
- Report per case: the check's status, problems and repairs, and each level's volume (mm^3) and
  world centroid (mm).
- Evaluation (`autoseg evaluate`): besides per-vertebra Dice and HD95, the identification rate
  (predicted centroid closest to the reference one and within 20 mm) and the mean centroid distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from autoseg.errors import ConfigError
from autoseg.io import Geometry
from autoseg.postprocessing import keep_largest_component
from autoseg.tasks.levels import check_levels, level_measurements
from autoseg.tasks.profile import PredictedCase, TaskProfile, register
from autoseg.tasks.vertebra_metrics import case_identification, summarize_identification

NAME = "lumbar-ct"
LEVEL_NAMES = ("L1", "L2", "L3", "L4", "L5")  # head to foot; their label values come from the dataset's labels


@dataclass(frozen=True)
class LumbarCtOptions:
    """The localizer, the crop margin and the level check."""

    localizer_config: str = "3d_lowres"  # configuration that finds the lumbar region
    margin_mm: float = 20.0  # added on every side of the localized box before cropping
    repair_levels: bool = True  # False: check and report only
    fragment_fraction: float = 0.2  # components smaller than this share of a vertebra are fragments

    def __post_init__(self) -> None:
        problems = []
        if not self.margin_mm >= 0:
            problems.append(f"margin_mm {self.margin_mm}: expected a distance >= 0 mm")
        if not 0.0 < self.fragment_fraction < 1.0:
            problems.append(f"fragment_fraction {self.fragment_fraction}: expected a share in (0, 1)")
        if problems:
            raise ConfigError(f"task '{NAME}' options: " + "; ".join(problems))


def level_values(label_values: dict[str, int]) -> tuple[list[int], dict[int, str]]:
    """The values of L1..L5 present in the dataset's labels, head to foot, and value -> name."""
    values = [label_values[name] for name in LEVEL_NAMES if name in label_values]
    return values, {v: k for k, v in label_values.items()}


# ---------------------------------------------------------------- post step and report
def consistent_levels(case: PredictedCase, options: LumbarCtOptions) -> np.ndarray:
    """The label map with the level check's unambiguous repairs, then every level and the sacrum as
    one component, its largest (unchanged with repair_levels off)."""
    if not options.repair_levels or case.geometry.ndim != 3:
        return case.labels
    values, names = level_values(case.label_values)
    labels = check_levels(case.labels, case.geometry, values, names, options.fragment_fraction).labels
    # a flagged case may still hold a level in several pieces: each level (and the sacrum) keeps its largest
    bones = values + ([case.label_values["sacrum"]] if "sacrum" in case.label_values else [])
    return keep_largest_component(labels, bones)


def level_report(case: PredictedCase, options: LumbarCtOptions) -> dict[str, Any]:
    """The level check of the network's labels (what was wrong, what was repaired), and each level's
    volume and centroid in the final labels."""
    values, names = level_values(case.label_values)
    if case.geometry.ndim != 3:
        return {"level_status": "not checked (2D)"}
    raw = case.labels if case.raw_labels is None else case.raw_labels
    check = check_levels(raw, case.geometry, values, names, options.fragment_fraction)
    status = check.status if options.repair_levels or check.status == "consistent" else "flagged"
    measured = level_measurements(case.labels, case.geometry, [*values, case.label_values.get("sacrum", -1)], names)
    return {"level_status": status,
            "level_problems": list(check.problems),
            "level_repairs": list(check.repairs) if options.repair_levels else [],
            "levels_found": [n for n in LEVEL_NAMES if n in measured],
            **{f"volume_mm3_{name}": m["volume_mm3"] for name, m in measured.items()},
            **{f"centroid_mm_{name}": m["centroid_mm"] for name, m in measured.items()}}


# ---------------------------------------------------------------- evaluation
def identification_metrics(cases: Sequence[tuple[str, np.ndarray, np.ndarray, Geometry]], labels: dict[str, int],
                           options: LumbarCtOptions) -> dict[str, Any]:
    """Identification rate and centroid distances, per case and pooled."""
    values, names = level_values(labels)
    per_case = {case_id: case_identification(pred, ref, geometry, values, names)
                for case_id, pred, ref, geometry in cases}
    return {**summarize_identification(per_case), "per_case": per_case}


PROFILE = register(TaskProfile(
    name=NAME,
    summary="L1-L5 and sacrum in abdominal/whole-body CT: localize -> crop -> segment, level consistency, "
            "identification rate",
    phantom="lumbar-ct",
    options=LumbarCtOptions,
    configurations=("3d_fullres", "3d_lowres"),
    model_layout="localize-crop-segment",
    post_steps=(consistent_levels,),
    report=level_report,
    evaluation=identification_metrics,
))
