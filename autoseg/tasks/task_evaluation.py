"""Which task a folder of predictions belongs to, and its own metrics for `autoseg evaluate`.

The task comes from `task` when given, else from the predictions' task reports (<case>.report.json
names it), else from the reference dataset's dataset.json ("task"); options as recorded there, or
the task's defaults.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from autoseg import io
from autoseg.config import TaskPlan
from autoseg.tasks.profile import TASKS, evaluate_task, task_plan
from autoseg.tasks.reports import REPORT_SUFFIX

log = logging.getLogger(__name__)


def task_of_predictions(pred_dir: Path, ref_dir: Path, task: str | None = None) -> TaskPlan | None:
    if task is not None:
        return task_plan(task, None, "--task")
    for report in sorted(Path(pred_dir).glob(f"*{REPORT_SUFFIX}")):
        try:
            name = json.loads(report.read_text()).get("task")
        except (OSError, ValueError, AttributeError):
            continue
        if name in TASKS:
            return task_plan(name)
    dataset_json = Path(ref_dir).parent / "dataset.json"
    try:
        named = json.loads(dataset_json.read_text()).get("task") if dataset_json.is_file() else None
    except (OSError, ValueError, AttributeError):
        named = None
    if isinstance(named, dict) and named.get("name") in TASKS:
        return task_plan(named["name"], named.get("options"), f"{dataset_json}: task options")
    return task_plan(named) if isinstance(named, str) and named in TASKS else None


def task_metrics(task: TaskPlan | None, pairs: Mapping[str, tuple[Path, Path]], labels: dict[str, int]) -> dict[str, Any] | None:
    """The task's evaluation over every (prediction, reference) pair; None when it has none."""
    if task is None or TASKS.get(task.name).evaluation is None:
        return None
    cases = []
    for case_id, (pred_path, ref_path) in pairs.items():
        pred, _ = io.read_label(pred_path)
        ref, geometry = io.read_label(ref_path)
        cases.append((case_id, pred, ref, geometry))
    log.info("task metrics of %s over %d cases", task.name, len(cases))
    return evaluate_task(task, cases, labels)
