"""Clinical task profiles: data plus named steps, registered by name; generic code calls the steps.

A plan that names a task (`autoseg plan --task NAME`, or "task" in dataset.json) records it in
every configuration (`ConfigPlan.task`: the name and its options, fully expanded), so checkpoints
and exported models carry it and `autoseg predict` needs nothing else. The pipeline then runs:

- `case_steps` inside `preprocess_case`, so training and prediction apply them identically
  (image (C, *spatial) as read, geometry, options, case id -> image); a step may append input
  channels after the dataset's (a bone prior), which `extra_channels` names, and may keep a
  by-product on the image's grid with `keep_case_output` (a body mask), which training
  preprocessing writes beside the case as <case_id>_<name>.nii.gz;
- `extra_channels` (options -> names): the channels the case steps append; planning counts them
  in every configuration's network.in_channels with a "none" normalization entry each, and the
  predictor still expects only the dataset's channels as files;
- `plan_options` (options, the planner's per-channel normalization -> options): options the
  dataset decides, filled in when planning and recorded in plan.json (a HU clip window);
  `normalization` (options, the planner's -> the task's normalization of the dataset's channels);
- `foreground_slice_share` (options -> share): a 2D configuration of 3D cases draws this share of
  its randomly placed samples from slices that hold foreground (autoseg/data/sampling.py);
- `raw_augmentations` in the training loader only, on raw intensities before the loader
  normalizes (options -> a batch transform); a profile with one sets normalize_at "loader";
- `case_weights` ((raw dataset folder, training case ids, options) -> {case id: weight}): the
  training loader draws each sample's case with probability proportional to its weight instead
  of uniformly (e.g. positions balanced from the dataset's metadata); cases left out weigh 1;
- `post_steps` on each predicted label map, then `report`, written per case as JSON and
  summarized as CSV by the predictor ((PredictedCase, options) -> labels / a flat dict); a report
  also sees `raw_labels`, the network's labels before the post steps;
- `folder_report` once a folder is predicted ((images folder, predictions folder, label values,
  options) -> files written): a report over the folder in the task's own format, with the
  inputs' folder at hand (e.g. `autoseg qc`'s qc.json, qc.csv and overlays);
- `evaluation` in `autoseg evaluate`, for the task's own metrics beyond per-class overlap
  ((case id, prediction, reference, geometry) per case, labels, options -> a JSON-able dict that
  summary.json holds under "task_metrics");
- `raw_input`: an input kind the task reads itself for prediction and reduces to its network
  channels (a 4D DWI with gradient files beside it -> the b=0 image): it recognizes a case's files
  from their headers, checks them before anything is written, reads them (keeping `extras`, e.g.
  diffusion maps, for the report as `PredictedCase.extras`) and may rename the case; other inputs
  are read as usual;
- `model_layout`: "single" (one model) or "localize-crop-segment" (a coarse model finds the region,
  a full-resolution one segments its crop: autoseg/localized_training.py, inference/localized.py).

Generic code never names a task: it looks the profile up here. Options are a frozen dataclass
per task whose defaults are the task's defaults; plan.json stores them expanded and they are
checked against it (unknown keys, types, ranges) wherever the task is used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from autoseg import schema
from autoseg.config import ConfigPlan, NormalizationPlan, NormalizeAt, Plan, TaskPlan
from autoseg.errors import ConfigError
from autoseg.io import Geometry
from autoseg.registry import Registry

log = logging.getLogger(__name__)

LAYOUTS = ("single", "localize-crop-segment")


@dataclass(frozen=True)
class PredictedCase:
    """One predicted case as post steps and reports see it."""

    case_id: str
    image: np.ndarray  # (C, *spatial), as read
    geometry: Geometry
    labels: np.ndarray  # (*spatial) label values on the image's grid
    label_values: dict[str, int]  # name -> value, background included
    raw_labels: np.ndarray | None = None  # the network's labels before the post steps (set by finish_prediction)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the task's raw_input kept for its report


CaseStep = Callable[[np.ndarray, Geometry, Any, str], np.ndarray]
RawAugmentation = Callable[[Any], Callable[..., dict]]
PostStep = Callable[[PredictedCase, Any], np.ndarray]
Report = Callable[[PredictedCase, Any], dict[str, Any]]
FolderReport = Callable[[Path, Path, dict[str, int], Any], Sequence[Path]]
Evaluation = Callable[[Sequence[tuple[str, np.ndarray, np.ndarray, Geometry]], dict[str, int], Any], dict[str, Any]]


@dataclass(frozen=True)
class RawCase:
    """A case as the task's raw_input read it: the network's channels, their grid, what the report needs."""

    image: np.ndarray  # (C, *spatial)
    geometry: Geometry
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class RawInput:
    """An input kind the task reads itself for prediction (see the module docstring)."""

    kind: str  # in words, e.g. "4D DWI with FSL .bval/.bvec beside it"
    recognizes: Callable[[tuple[Path, ...]], bool]  # from headers: these files are of this kind
    check: Callable[[tuple[Path, ...], Any], tuple[int, ...]]  # (files, options) -> spatial shape; typed errors
    read: Callable[[tuple[Path, ...], Any], RawCase]  # (files, options) -> the network's input
    case_id: Callable[[str], str] | None = None  # renames a case found in a folder (e.g. drops "_dwi")


@dataclass(frozen=True)
class TaskProfile:
    name: str  # registered name, e.g. "cervical-lowdose"
    summary: str  # one line for `autoseg tasks`
    phantom: str  # the phantom (`autoseg example`) its contract test runs on
    options: type  # frozen dataclass of the task's options; its defaults are the task's defaults
    configurations: tuple[str, ...] = ()  # planned by default (empty: the planner's choice)
    normalize_at: NormalizeAt = "preprocessing"
    case_steps: tuple[CaseStep, ...] = ()
    raw_augmentations: tuple[RawAugmentation, ...] = ()
    model_layout: Literal["single", "localize-crop-segment"] = "single"
    post_steps: tuple[PostStep, ...] = ()
    report: Report | None = None
    folder_report: FolderReport | None = None
    evaluation: Evaluation | None = None
    raw_input: RawInput | None = None
    extra_channels: Callable[[Any], tuple[str, ...]] | None = None
    plan_options: Callable[[Any, tuple[NormalizationPlan, ...]], Any] | None = None
    normalization: Callable[[Any, tuple[NormalizationPlan, ...]], tuple[NormalizationPlan, ...]] | None = None
    foreground_slice_share: Callable[[Any], float] | None = None
    case_weights: Callable[[Path, Sequence[str], Any], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.raw_augmentations and self.normalize_at != "loader":
            raise ConfigError(f"task '{self.name}': raw-intensity augmentations need normalize_at='loader', "
                              f"found '{self.normalize_at}'")
        if self.model_layout not in LAYOUTS:
            raise ConfigError(f"task '{self.name}': model layout '{self.model_layout}' is not supported; known: {LAYOUTS}")
        if not dataclasses.is_dataclass(self.options):
            raise ConfigError(f"task '{self.name}': options must be a dataclass type, found {self.options!r}")

    @property
    def finishes_predictions(self) -> bool:
        return bool(self.post_steps) or self.report is not None


TASKS: Registry = Registry("task")


def register(profile: TaskProfile) -> TaskProfile:
    return TASKS.register(profile.name)(profile)


# ---------------------------------------------------------------- choosing a task
def task_plan(name: str, options: dict[str, Any] | None = None, where: str = "task options") -> TaskPlan:
    """The task as a plan records it: its name and every option (defaults filled in), checked."""
    profile = TASKS.get(name)
    return TaskPlan(name, schema.to_dict(parse_options(profile, options or {}, where)))


def parse_options(profile: TaskProfile, data: Any, where: str) -> Any:
    try:
        return schema.from_dict(profile.options, data, where=where, error=ConfigError)
    except TypeError as exc:  # a value the options' __post_init__ could not handle
        raise ConfigError(f"{where}: {exc}") from None


def resolve(task: TaskPlan) -> tuple[TaskProfile, Any]:
    """The registered profile of a recorded task and its options, checked."""
    profile = TASKS.get(task.name)
    return profile, parse_options(profile, task.options, f"task '{task.name}' options")


def apply_task(plan: Plan, task: TaskPlan | None) -> Plan:
    """`plan` (planned without a task) with every configuration carrying out `task` (None: unchanged)."""
    if task is None:
        return plan
    profile, options = resolve(task)
    planned = next(iter(plan.configurations.values())).normalization if plan.configurations else ()
    if profile.plan_options is not None and planned:
        options = profile.plan_options(options, planned)
        task = TaskPlan(task.name, schema.to_dict(options))
    configurations = {name: _task_inputs(dataclasses.replace(config, task=task, normalize_at=profile.normalize_at),
                                         profile, options)
                      for name, config in plan.configurations.items()}
    return dataclasses.replace(plan, configurations=configurations)


def _task_inputs(config: ConfigPlan, profile: TaskProfile, options: Any) -> ConfigPlan:
    """The task's normalization of the dataset's channels, and its appended channels counted."""
    normalization = profile.normalization(options, config.normalization) if profile.normalization else config.normalization
    extra = profile.extra_channels(options) if profile.extra_channels else ()
    network = dataclasses.replace(config.network, in_channels=config.network.in_channels + len(extra))
    return dataclasses.replace(config, network=network,
                               normalization=(*normalization, *(NormalizationPlan("none") for _ in extra)))


def extra_channel_count(task: TaskPlan | None) -> int:
    """Input channels the task's case steps append to the dataset's (not read from files)."""
    if task is None:
        return 0
    profile, options = resolve(task)
    return len(profile.extra_channels(options)) if profile.extra_channels else 0


def foreground_slice_share(task: TaskPlan | None) -> float:
    """Share of randomly placed 2D samples the task draws from slices holding foreground (0: none)."""
    if task is None:
        return 0.0
    profile, options = resolve(task)
    return float(profile.foreground_slice_share(options)) if profile.foreground_slice_share else 0.0


def case_weights(task: TaskPlan | None, dataset_root: Path, case_ids: Sequence[str]) -> list[float] | None:
    """The task's sampling weight of each training case, in `case_ids` order (None: uniform)."""
    if task is None:
        return None
    profile, options = resolve(task)
    if profile.case_weights is None:
        return None
    weights = profile.case_weights(Path(dataset_root), list(case_ids), options)
    return [float(weights.get(case_id, 1.0)) for case_id in case_ids]


def task_of(plan: Plan) -> TaskPlan | None:
    """The task a plan carries out (its configurations agree; the first one answers)."""
    return next(iter(plan.configurations.values())).task if plan.configurations else None


# ---------------------------------------------------------------- steps, as generic code calls them
_KEPT: ContextVar[dict[str, np.ndarray] | None] = ContextVar("kept_case_outputs", default=None)


def keep_case_output(name: str, array: np.ndarray) -> None:
    """Called by a case step: keep `array` (on the image's grid) for whoever collects outputs
    (training preprocessing saves it beside the case; prediction hands it to the post steps and
    report as `PredictedCase.extras`); a no-op where nobody collects."""
    kept = _KEPT.get()
    if kept is not None:
        kept[name] = array


@contextlib.contextmanager
def collecting_case_outputs():
    """Within this block, what case steps keep lands in the yielded dict (name -> array)."""
    kept: dict[str, np.ndarray] = {}
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)


def run_case_steps(task: TaskPlan | None, image: np.ndarray, geometry: Geometry, case_id: str) -> np.ndarray:
    if task is None:
        return image
    profile, options = resolve(task)
    for step in profile.case_steps:
        image = step(image, geometry, options, case_id)
    return image


def raw_augmentations(task: TaskPlan | None) -> list[Callable[..., dict]]:
    """The task's training-only batch transforms on raw intensities (before the loader normalizes)."""
    if task is None:
        return []
    profile, options = resolve(task)
    return [make(options) for make in profile.raw_augmentations]


def finishes_predictions(task: TaskPlan | None) -> bool:
    return task is not None and resolve(task)[0].finishes_predictions


def finish_prediction(task: TaskPlan | None, case: PredictedCase) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Post steps, then the report: the final label map and the case's report (None without one)."""
    if task is None:
        return case.labels, None
    profile, options = resolve(task)
    case = dataclasses.replace(case, raw_labels=case.labels)
    for step in profile.post_steps:
        case = dataclasses.replace(case, labels=step(case, options))
    report = profile.report(case, options) if profile.report else None
    return case.labels, ({"case_id": case.case_id, "task": task.name, **report} if report is not None else None)


def finish_folder(task: TaskPlan | None, images_dir: Path | None, predictions_dir: Path,
                  label_values: dict[str, int]) -> list[Path]:
    """The task's folder report over a predicted folder (nothing without a task, a folder report or
    an images folder: a file list from several folders)."""
    if task is None:
        return []
    profile, options = resolve(task)
    if profile.folder_report is None:
        return []
    if images_dir is None:
        log.warning("task %s: no folder report (%s needs the images in one folder)", task.name, profile.name)
        return []
    return list(profile.folder_report(Path(images_dir), Path(predictions_dir), label_values, options))


def evaluate_task(task: TaskPlan | None, cases: Sequence[tuple[str, np.ndarray, np.ndarray, Geometry]],
                  labels: dict[str, int]) -> dict[str, Any] | None:
    """The task's own evaluation metrics over (case id, prediction, reference, geometry) cases;
    None without a task or for a task without an evaluation."""
    if task is None:
        return None
    profile, options = resolve(task)
    return {"task": task.name, **profile.evaluation(cases, labels, options)} if profile.evaluation else None


def raw_input(task: TaskPlan | None) -> tuple[RawInput, Any] | None:
    """The task's own input kind and its options (None: every input is read as usual)."""
    if task is None:
        return None
    profile, options = resolve(task)
    return (profile.raw_input, options) if profile.raw_input is not None else None
