"""The documents that flow between stages: facts (Fingerprint) apart from decisions (Plan).

All sizes, spacings and axes are in numpy order (z, y, x) / (y, x). A 2D configuration of 3D data
works on axial slices (axis 0 is the slice axis). Components are referred to by registered name.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable, Literal

from autoseg import schema
from autoseg.errors import ConfigError, PlanError

SCHEMA_VERSION = 1
ConfigName = Literal["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]


# ---------------------------------------------------------------- fingerprint (facts)
@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel over the whole dataset (from a bounded sample)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class ChannelFingerprint:
    name: str  # as in dataset.json channel_names, e.g. "CT"
    modality: str  # normalized: "CT", "MR", "xray" or "other"
    foreground: IntensityStats


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    cropped_shape: tuple[int, ...]  # after crop-to-nonzero
    label_fractions: dict[str, float]  # label value (as str) -> voxel fraction
    label_components: dict[str, int]  # label value (as str) -> connected components
    # label value (as str) -> centre of mass as a fraction of the image extent per axis (labels present only)
    label_centroids: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # bounding box of all foreground labels, in mm per axis (empty: no foreground, or an older fingerprint)
    foreground_extent_mm: tuple[float, ...] = field(default=(), metadata=schema.OMIT_DEFAULT)


@dataclass(frozen=True)
class Fingerprint:
    dataset_name: str
    ndim: int  # spatial dimensions of the images: 2 or 3
    file_ending: str
    labels: dict[str, int]  # name -> value, background included
    channels: tuple[ChannelFingerprint, ...]
    cases: tuple[CaseFingerprint, ...]
    schema_version: int = SCHEMA_VERSION

    @property
    def spacings(self) -> list[tuple[float, ...]]:
        return [c.spacing for c in self.cases]

    @property
    def median_spacing(self) -> tuple[float, ...]:
        return tuple(median(s[i] for s in self.spacings) for i in range(self.ndim))

    @property
    def median_cropped_shape(self) -> tuple[float, ...]:
        return tuple(median(c.cropped_shape[i] for c in self.cases) for i in range(self.ndim))

    @property
    def crop_shrinks_images(self) -> bool:
        """True when cropping to nonzero removes more than 25% of the median image (nnU-Net's rule)."""
        ratios = []
        for c in self.cases:
            full, cropped = 1, 1
            for a, b in zip(c.shape, c.cropped_shape):
                full, cropped = full * a, cropped * b
            ratios.append(cropped / full)
        return median(ratios) < 0.75


# ---------------------------------------------------------------- plan (decisions)
@dataclass(frozen=True)
class NetworkPlan:
    """Everything needed to build the network; a checkpoint stores this to rebuild it."""

    name: str  # registered network name, e.g. "unet" or "resenc_unet"
    ndim: int
    in_channels: int
    num_classes: int  # background included
    features: tuple[int, ...]  # per stage
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    strides: tuple[tuple[int, ...], ...]  # per stage; stage 0 has stride 1
    blocks_per_stage: int = 2
    deep_supervision: bool = True

    @property
    def num_stages(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class NormalizationPlan:
    """How one channel is normalized. scheme "ct": clip to [clip_low, clip_high], then (x-mean)/std
    with dataset-wide values; "zscore": per image, inside the nonzero mask when use_mask."""

    scheme: Literal["ct", "zscore", "none"]
    use_mask: bool = False
    clip_low: float = 0.0
    clip_high: float = 0.0
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class ResamplingPlan:
    image_order: int = 3
    label_order: int = 1  # applied per label (one-hot), so labels never blur into each other
    separate_out_of_plane: bool = False  # anisotropic data: in-plane with the orders above, ...
    out_of_plane_order: int = 0  # ... the coarse axis with this order
    out_of_plane_axis: int | None = None


@dataclass(frozen=True)
class BudgetCandidate:
    """One candidate the budget-aware planner timed: what it was and what it would have given."""

    spacing_factor: float  # target spacing = the default spacing coarsened by this factor (finest axes first)
    patch_size: tuple[int, ...]
    batch_size: int
    base_features: int
    step_time_s: float  # measured on the planning machine
    expected_iterations: int
    expected_samples: int
    verdict: str  # why it was taken or passed over


@dataclass(frozen=True)
class BudgetChoice:
    """Why a configuration looks the way it does under a time budget (`autoseg plan --time-budget`)."""

    time_budget_s: float
    device: str  # the device type measured on: "cpu" or "cuda"
    machine: str  # processor / GPU, threads and torch version of the measurement
    precision: str  # training precision the step times were measured with
    spacing_factor: float
    step_time_s: float
    expected_iterations: int
    expected_samples: int
    smallest_structure_voxels: float  # equivalent diameter of the smallest labelled structure at the chosen spacing
    reasons: tuple[str, ...]
    candidates: tuple[BudgetCandidate, ...]


@dataclass(frozen=True)
class TaskPlan:
    """The clinical task a configuration carries out (autoseg/tasks): its registered name and its
    options, fully expanded (the task's registry entry checks them against its typed options)."""

    name: str
    options: dict[str, Any]


NormalizeAt = Literal["preprocessing", "loader"]


@dataclass(frozen=True)
class ConfigPlan:
    name: ConfigName
    spacing: tuple[float, ...]  # target spacing of the network's input (numpy order)
    median_shape: tuple[int, ...]  # median cropped shape after resampling
    patch_size: tuple[int, ...]
    batch_size: int
    network: NetworkPlan
    normalization: tuple[NormalizationPlan, ...]  # per channel
    resampling: ResamplingPlan
    mirror_axes: tuple[int, ...]  # spatial axes of the patch that test-time mirroring may flip
    estimated_memory_gb: float = 0.0
    budget: BudgetChoice | None = None  # set by the budget-aware planner only
    # Both below are absent from plan.json unless set, so a plan without a task keeps its content and hash.
    task: TaskPlan | None = field(default=None, metadata=schema.OMIT_DEFAULT)
    # "loader": preprocessing stores resampled raw intensities and per-case normalization parameters,
    # and the training loader normalizes each patch, after augmentations that need raw intensities
    # (X-ray dose simulation works on detected photons); prediction normalizes after resampling.
    normalize_at: NormalizeAt = field(default="preprocessing", metadata=schema.OMIT_DEFAULT)
    # A cascade's second stage (3d_cascade_fullres): the configuration whose prediction, one-hot per
    # foreground class on this configuration's grid, joins the image as extra input channels (autoseg/cascade.py).
    previous_stage: str | None = field(default=None, metadata=schema.OMIT_DEFAULT)


@dataclass(frozen=True)
class Plan:
    dataset_name: str
    planner: str
    gpu_memory_gb: float
    labels: dict[str, int]
    channel_names: tuple[str, ...]
    file_ending: str
    image_ndim: int
    fingerprint_hash: str
    configurations: dict[str, ConfigPlan]
    schema_version: int = SCHEMA_VERSION

    def config(self, name: str) -> ConfigPlan:
        if name not in self.configurations:
            raise PlanError(f"configuration '{name}' is not in this plan; planned: {', '.join(self.configurations)}")
        return self.configurations[name]


# ---------------------------------------------------------------- training options
Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Recorded in run.json; `--resume` refuses a different one
    (apart from RESUMABLE_CHANGES, which do not change the result)."""

    dataset_name: str
    config: str
    fold: str  # "0".."k-1", or "full" (every case)
    trainer: str = "default"
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    time_budget_s: float | None = None  # when set, training ends on time and lr decays with elapsed time
    early_stop: int | None = None  # epochs without a new best EMA pseudo-Dice
    lr: float = 1e-2
    warmup: float = 0.0  # first fraction of the run over which lr rises linearly to `lr` (0: none)
    deep_supervision_ratio: float = 0.5  # loss weight of each coarser output relative to the next finer one
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    precision: Precision = "auto"
    device: str = "auto"
    deterministic: bool = False
    seed: int = 0
    batch_size: int | None = None  # None: the plan's
    oversample_foreground: float = 0.33
    checkpoint_every: int = 5  # epochs between "latest" checkpoints
    workers: int = 2

    def __post_init__(self) -> None:
        """Refuse every invalid option at once, before any work (an epochs=0 run would save an untrained model)."""
        problems = [f"{_option_name(name)}: expected {allowed}, found {getattr(self, name)!r}"
                    for name, (allowed, valid) in TRAIN_OPTION_RULES.items()
                    if not (name in _UNSET_ALLOWED and getattr(self, name) is None) and not valid(getattr(self, name))]
        if problems:
            raise ConfigError("invalid training option(s): " + "; ".join(problems)
                              + ". Pass values in the allowed ranges (`autoseg train --help`)")


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def _real(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and test(v)


def _name(pattern: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None


# TrainConfig field -> (allowed values in words, check); a test keeps this covering every field
TRAIN_OPTION_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "dataset_name": ("a dataset name", _name(r".+")),
    "config": ("a configuration name such as 2d or 3d_fullres", _name(r".+")),
    "fold": ("a fold number or 'full'", _name(r"\d+|full")),
    "trainer": ("a registered trainer name", _name(r".+")),
    "epochs": ("an integer >= 1", _integer(1)),
    "iters_per_epoch": ("an integer >= 1", _integer(1)),
    "val_iters": ("an integer >= 1", _integer(1)),
    "time_budget_s": ("a duration > 0 seconds", _real(lambda v: v > 0)),
    "early_stop": ("an integer >= 1 (epochs)", _integer(1)),
    "lr": ("a number > 0", _real(lambda v: v > 0)),
    "warmup": ("a fraction of the run >= 0 and < 0.5", _real(lambda v: 0 <= v < 0.5)),
    "deep_supervision_ratio": ("a number > 0 and <= 1", _real(lambda v: 0 < v <= 1)),
    "momentum": ("a number >= 0 and < 1", _real(lambda v: 0 <= v < 1)),
    "weight_decay": ("a number >= 0", _real(lambda v: v >= 0)),
    "grad_clip": ("a number > 0", _real(lambda v: v > 0)),
    "precision": ("auto, fp32, bf16 or fp16", _name(r"auto|fp32|bf16|fp16")),
    "device": ("auto, cpu, cuda, cuda:N or mps", _name(r"auto|cpu|cuda(:\d+)?|mps")),
    "deterministic": ("true or false", lambda v: isinstance(v, bool)),
    "seed": ("an integer >= 0", _integer(0)),
    "batch_size": ("an integer >= 1", _integer(1)),
    "oversample_foreground": ("a fraction >= 0 and <= 1", _real(lambda v: 0 <= v <= 1)),
    "checkpoint_every": ("an integer >= 1 (epochs)", _integer(1)),
    "workers": ("an integer >= 0 (0: in-process)", _integer(0)),
}
_UNSET_ALLOWED = frozenset({"time_budget_s", "early_stop", "batch_size"})  # None: not set
_CLI_NAMES = {"dataset_name": "DATASET", "config": "CONFIG", "fold": "FOLD", "time_budget_s": "--time-budget"}
_NOT_ON_CLI = frozenset({"trainer", "momentum", "weight_decay", "grad_clip", "oversample_foreground"})


def _option_name(field: str) -> str:
    """The name a user knows: the `autoseg train` option, or the API keyword where the CLI has none."""
    if field in _NOT_ON_CLI:
        return f"{field} (train option)"
    return _CLI_NAMES.get(field, "--" + field.replace("_", "-"))


RESUMABLE_CHANGES = frozenset({"workers", "device", "checkpoint_every"})


def _check_version(doc, path: Path):
    if doc.schema_version != SCHEMA_VERSION:
        raise PlanError(f"{path}: schema_version {doc.schema_version} is not supported (expected {SCHEMA_VERSION}); re-run `autoseg plan`")
    return doc


def load_plan(path: str | Path) -> Plan:
    return _check_version(schema.load_document(Plan, path), Path(path))


def load_fingerprint(path: str | Path) -> Fingerprint:
    return _check_version(schema.load_document(Fingerprint, path), Path(path))
