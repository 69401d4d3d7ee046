"""Plans sized for a wall-clock training budget on the machine at hand (`autoseg plan --time-budget`).

The default plan is sized for an 8 GB GPU: on a CPU its batches take so long that a half-hour run
makes a hundred steps and predicts background. Under a budget, every configuration is re-decided
from measured step times (planners/step_time.py):

1. Candidates coarsen the default target spacing by SPACING_FACTORS (finest axes first), down to a
   resolution floor: the smallest labelled structure keeps at least MIN_STRUCTURE_VOXELS across.
   Each candidate's patch covers the median image where memory allows, as in the default plan, so
   no context is lost; the network's depth follows the patch. Where the labelled structures are
   a small share of a large image (a cord in a neck slice, a lumbar column in a trunk CT), the patch
   covers them with a margin instead (planners/structures.py), when that is at least COVER_GAIN
   times fewer voxels: many more, better balanced samples per second, the rest of the image seen
   through randomly placed patches.
2. Take the finest spacing at which training sees ENOUGH_SAMPLES patches in the budget; when none
   does, the candidate that sees the most (the coarsest allowed spacing, then half the width).
3. The batch doubles while that raises throughput by more than 10% and keeps MIN_ITERATIONS steps.
4. Precision: bf16 where the device computes it natively, else fp32 (fp16 on older GPUs).

Everything measured and decided is recorded in the configuration's `budget` (plan.json), so the
choice can be read and re-checked. The rule is deterministic given the step times.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from autoseg.config import BudgetCandidate, BudgetChoice, ConfigPlan, Fingerprint, Plan
from autoseg.planners.cascade import CASCADE, FIRST_STAGE, cascade_config
from autoseg.planners.default import BASE_FEATURES, PlanningContext
from autoseg.planners.step_time import StepCandidate
from autoseg.planners.structures import smallest_structure_mm, structure_cover_mm

log = logging.getLogger(__name__)

SPACING_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)
MIN_STRUCTURE_VOXELS = 12.0
ENOUGH_SAMPLES = {2: 30_000, 3: 3_000}  # patches per run that a U-Net needs to become useful
MIN_ITERATIONS = 500
MAX_BATCH = 32
TRAINING_SHARE = 0.9  # of the budget; validation and checkpoints take the rest
# A real iteration also waits for data: the loader's workers share the cores with the step (CPU).
LOADER_OVERHEAD = {"cpu": 1.25, "cuda": 1.05}
WIDTHS = (BASE_FEATURES, BASE_FEATURES // 2)
COVER_GAIN = 4.0  # a patch covering the labelled structures replaces the whole-image one when this many times smaller
MIN_COVER_VOXELS = {2: 64, 3: 32}  # ... and is never narrower than this per axis (the network's pooling needs it)

StepSeconds = Callable[[StepCandidate], float]


@dataclass(frozen=True)
class BudgetRequest:
    """What the plan is sized for: the budget, and the device that will train."""

    time_budget_s: float
    device: str  # "cpu" or "cuda"
    machine: str
    precision: str  # the training precision to measure and record
    memory_gb: float  # memory a training process may use (GPU memory, or a share of the RAM)


def fit_plan_to_budget(plan: Plan, fingerprint: Fingerprint, request: BudgetRequest, step_seconds: StepSeconds,
                       network: str = "unet") -> Plan:
    """The plan with each configuration re-decided for the budget. 3d_lowres is fitted from its own
    (coarser) spacing, so a localizer or a cascade's first stage stays coarser than 3d_fullres; the
    cascade's second stage is the fitted 3d_fullres with its extra channels, as without a budget."""
    smallest = smallest_structure_mm(fingerprint)
    fitted = {name: _BudgetFit(name, config, fingerprint, request, step_seconds, network, smallest).choose()
              for name, config in plan.configurations.items() if name != CASCADE}
    if CASCADE in plan.configurations and "3d_fullres" in fitted:
        fitted[CASCADE] = cascade_config(fitted["3d_fullres"])
    return replace(plan, planner=f"{plan.planner}+time_budget", configurations=fitted)


def coarsened(spacing, factor: float) -> tuple[float, ...]:
    """Axes finer than factor x the finest spacing are brought up to it; coarser axes stay."""
    spacing = np.asarray(spacing, dtype=float)
    return tuple(float(s) for s in np.maximum(spacing, factor * spacing.min()))


class _BudgetFit:
    """The candidates of one configuration and the choice among them."""

    def __init__(self, name: str, config: ConfigPlan, fingerprint: Fingerprint, request: BudgetRequest,
                 step_seconds: StepSeconds, network: str, smallest_mm: float | None):
        self.name, self.config, self.request, self.step_seconds = name, config, request, step_seconds
        self.fingerprint = fingerprint
        self.contexts = {w: PlanningContext(fingerprint, request.memory_gb, network, w) for w in WIDTHS}
        # 3d_lowres coarsens from its own spacing; every other configuration from the full resolution
        self.base_spacing = (np.asarray(config.spacing, dtype=float) if name == FIRST_STAGE
                             else self.contexts[BASE_FEATURES].fullres_spacing)
        self.slice_axis_dropped = name == "2d" and fingerprint.ndim == 3
        self.smallest_mm = smallest_mm
        self.ndim = len(config.patch_size)
        self.usable_s = request.time_budget_s * TRAINING_SHARE / LOADER_OVERHEAD.get(request.device, 1.0)
        self.timed: list[BudgetCandidate] = []
        self.plans: dict[tuple[float, int, int], ConfigPlan] = {}
        self.reasons: list[str] = []

    # ------------------------------------------------------------------ decision
    def choose(self) -> ConfigPlan:
        factors = self._allowed_factors()
        enough = ENOUGH_SAMPLES[self.ndim]
        chosen = None
        for width in WIDTHS:
            chosen = self._finest_with_enough(factors, width, enough)
            if chosen is not None:
                break
        if chosen is None:
            chosen = max(self.timed, key=lambda c: (c.expected_samples, -c.spacing_factor))
            self.reasons.append(f"no candidate sees {enough} patches in the budget: taking the one that sees the most "
                                f"({chosen.expected_samples}); expect an under-trained model, or give more time")
        chosen = self._grow_batch(chosen)
        return self._record(chosen)

    def _allowed_factors(self) -> list[float]:
        if self.smallest_mm is None:
            self.reasons.append("no labelled voxels in the fingerprint: spacing kept")
            return [1.0]
        allowed = [f for f in SPACING_FACTORS if f == 1.0 or self._structure_voxels(f) >= MIN_STRUCTURE_VOXELS]
        self.reasons.append(f"smallest structure {self.smallest_mm:.1f} mm across ({self._structure_voxels(1.0):.0f} voxels "
                            f"at the default spacing): spacing may coarsen up to {allowed[-1]:g}x "
                            f"(floor {MIN_STRUCTURE_VOXELS:g} voxels across)")
        return allowed

    def _finest_with_enough(self, factors: list[float], width: int, enough: int) -> BudgetCandidate | None:
        """Measure the finest factor first, then jump to the finest one predicted (step time ~ voxels)
        to be enough; walk coarser from there until one is."""
        finest = self._timed(factors[0], width, 2)
        if finest.expected_samples >= enough:
            return finest
        voxels = {f: self._voxels(f, width) for f in factors}
        predicted = [f for f in factors[1:] if finest.expected_samples * voxels[factors[0]] / voxels[f] >= enough]
        start = factors.index(predicted[0]) if predicted else len(factors) - 1
        for index in range(start, len(factors)):
            candidate = self._timed(factors[index], width, 2)
            if candidate.expected_samples >= enough:
                if index > 1 and index == start:  # check that the next finer one is really short
                    finer = self._timed(factors[index - 1], width, 2)
                    if finer.expected_samples >= enough:
                        return finer
                return candidate
        return None

    def _grow_batch(self, chosen: BudgetCandidate) -> BudgetCandidate:
        plan = self.plans[(chosen.spacing_factor, chosen.base_features, 2)]
        limit = min(MAX_BATCH, max(2, plan.batch_size))  # the default rule's memory and coverage cap
        while chosen.batch_size * 2 <= limit:
            bigger = self._timed(chosen.spacing_factor, chosen.base_features, chosen.batch_size * 2)
            gain = (bigger.batch_size / bigger.step_time_s) / (chosen.batch_size / chosen.step_time_s)
            if gain < 1.1 or bigger.expected_iterations < MIN_ITERATIONS:
                self.reasons.append(f"batch {bigger.batch_size}: throughput x{gain:.2f}, {bigger.expected_iterations} "
                                    f"iterations; batch {chosen.batch_size} kept")
                break
            chosen = bigger
        return chosen

    # ------------------------------------------------------------------ candidates
    def _plan_at(self, factor: float, width: int) -> ConfigPlan:
        key = (factor, width, 2)
        if key not in self.plans:
            spacing = np.array(coarsened(self.base_spacing, factor))
            self.plans[key] = self._covering(self.contexts[width].configure(self.name, spacing), spacing, width)
        return self.plans[key]

    def _covering(self, whole: ConfigPlan, spacing: np.ndarray, width: int) -> ConfigPlan:
        """The plan whose patch covers the labelled structures with a margin instead of the whole
        median image, where that is at least COVER_GAIN times fewer voxels (small structures in large
        images: a cord in a neck slice, a lumbar column in a trunk CT); else the whole-image plan."""
        axes = range(1, 3) if self.slice_axis_dropped else None  # a 2d configuration of 3D cases: in-plane only
        patch_spacing = spacing[1:] if self.slice_axis_dropped else spacing
        cover = structure_cover_mm(self.fingerprint, MIN_COVER_VOXELS[len(patch_spacing)], patch_spacing, axes)
        if cover is None:
            return whole
        covering = self.contexts[width].configure(self.name, spacing, cover)
        gain = float(np.prod(whole.patch_size)) / float(np.prod(covering.patch_size))
        if gain < COVER_GAIN:
            return whole
        note = (f"labelled structures span at most {' x '.join(f'{c:.0f}' for c in cover)} mm with a margin: "
                f"patches cover that instead of the whole image ({gain:.0f}x fewer voxels per patch)")
        if note not in self.reasons:
            self.reasons.append(note)
        return covering

    def _timed(self, factor: float, width: int, batch: int) -> BudgetCandidate:
        for done in self.timed:
            if (done.spacing_factor, done.base_features, done.batch_size) == (factor, width, batch):
                return done
        plan = self._plan_at(factor, width)
        self.plans[(factor, width, batch)] = plan
        seconds = float(self.step_seconds(StepCandidate(plan.network, plan.patch_size, batch)))
        iterations = int(self.usable_s / max(seconds, 1e-6))
        candidate = BudgetCandidate(factor, plan.patch_size, batch, width, round(seconds, 4), iterations,
                                    iterations * batch, "")
        self.timed.append(candidate)
        return candidate

    def _voxels(self, factor: float, width: int) -> float:
        return float(np.prod(self._plan_at(factor, width).patch_size))

    def _structure_voxels(self, factor: float) -> float:
        spacing = coarsened(self.base_spacing, factor)
        in_plane = spacing[1:] if self.slice_axis_dropped else spacing
        return self.smallest_mm / min(in_plane)

    # ------------------------------------------------------------------ record
    def _record(self, chosen: BudgetCandidate) -> ConfigPlan:
        plan = self.plans[(chosen.spacing_factor, chosen.base_features, chosen.batch_size)]
        request, enough = self.request, ENOUGH_SAMPLES[self.ndim]
        timed = tuple(replace(c, verdict=_verdict(c, chosen, enough)) for c in self.timed)
        reasons = (f"budget {request.time_budget_s / 60:g} min on {request.machine} ({request.device}, {request.precision}); "
                   f"{TRAINING_SHARE:.0%} of it for training steps, each assumed "
                   f"{LOADER_OVERHEAD.get(request.device, 1.0):g}x the measured step (data loading)",
                   *self.reasons,
                   f"chosen: spacing x{chosen.spacing_factor:g}, patch {'x'.join(map(str, chosen.patch_size))}, batch "
                   f"{chosen.batch_size}, {chosen.base_features} base features: {chosen.step_time_s:.3f} s/step, "
                   f"~{chosen.expected_iterations} iterations, ~{chosen.expected_samples} patches (wanted {enough})")
        budget = BudgetChoice(request.time_budget_s, request.device, request.machine, request.precision,
                              chosen.spacing_factor, chosen.step_time_s, chosen.expected_iterations, chosen.expected_samples,
                              round(self._structure_voxels(chosen.spacing_factor), 1) if self.smallest_mm else 0.0,
                              reasons, timed)
        return replace(plan, batch_size=chosen.batch_size, budget=budget)


def _verdict(candidate: BudgetCandidate, chosen: BudgetCandidate, enough: int) -> str:
    if candidate == chosen:
        return "chosen"
    if candidate.expected_samples < enough:
        return f"too few patches in the budget ({candidate.expected_samples} < {enough})"
    if candidate.batch_size != chosen.batch_size and candidate.spacing_factor == chosen.spacing_factor:
        return "batch not worth its fewer iterations"
    return "a finer spacing also sees enough" if candidate.spacing_factor > chosen.spacing_factor else "enough, but coarser than needed"
