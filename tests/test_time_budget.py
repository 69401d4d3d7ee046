"""Budget-aware planning: deterministic given step times (injected here, measured in real use),
within memory, above the resolution floor, recorded in plan.json; the time-to-Dice record."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autoseg import schema
from autoseg.config import CaseFingerprint, ChannelFingerprint, Fingerprint, IntensityStats, Plan, load_plan
from autoseg.planners import plan_dataset
from autoseg.planners.step_time import StepCandidate, StepTimer, measure_step_seconds
from autoseg.planners.structures import smallest_structure_mm
from autoseg.planners.time_budget import (
    ENOUGH_SAMPLES, MIN_STRUCTURE_VOXELS, BudgetRequest, coarsened, fit_plan_to_budget,
)
from autoseg.trainers.trainer import time_to_dice

STATS = IntensityStats(mean=140.0, std=45.0, median=150.0, min=0.0, max=255.0, percentile_00_5=16.0, percentile_99_5=238.0)


def xray_fingerprint(n: int = 40, shape=(512, 192), structure_fraction: float = 0.012) -> Fingerprint:
    """Like the AP spine X-rays: 512x192 px at 1 mm, one large label and five single-component ones."""
    fractions = {"0": 0.85, "1": 0.08, **{str(v): structure_fraction for v in range(2, 7)}}
    components = {"0": 0, "1": 12, **{str(v): 1 for v in range(2, 7)}}
    cases = tuple(CaseFingerprint(f"c{i:03d}", (1.0, 1.0), shape, shape, fractions, components) for i in range(n))
    labels = {"background": 0, "thoracic": 1, **{f"L{v - 1}": v for v in range(2, 7)}}
    return Fingerprint("Dataset998_Xray", 2, ".png", labels, (ChannelFingerprint("xray", "xray", STATS),), cases)


def fake_step_seconds(candidate: StepCandidate) -> float:
    """A CPU-like cost: linear in voxels and batch, quadratic-ish in width, a fixed overhead per step."""
    width = candidate.network.features[0] / 32
    return 0.02 + 2.5e-6 * math.prod(candidate.patch_size) * candidate.batch_size * width**1.6


def request(budget_s: float, memory_gb: float = 12.0) -> BudgetRequest:
    return BudgetRequest(budget_s, "cpu", "test-cpu", "bf16", memory_gb)


def budget_plan(budget_s: float, fingerprint: Fingerprint | None = None, step=fake_step_seconds, memory_gb: float = 12.0) -> Plan:
    fingerprint = fingerprint or xray_fingerprint()
    return fit_plan_to_budget(plan_dataset(fingerprint), fingerprint, request(budget_s, memory_gb), step)


def test_smallest_structure_is_the_equivalent_diameter_of_the_smallest_label():
    # 0.012 * 512 * 192 px in one component: a disc of ~34.3 px across; thoracic: 0.08 * 98304 / 12 -> ~29.5
    assert smallest_structure_mm(xray_fingerprint()) == pytest.approx(2 * math.sqrt(0.08 * 512 * 192 / 12 / math.pi))


def test_same_step_times_give_the_same_plan():
    assert schema.to_dict(budget_plan(1800)) == schema.to_dict(budget_plan(1800))


def test_a_short_budget_coarsens_and_a_long_one_keeps_the_default_spacing():
    short, long = budget_plan(300).config("2d"), budget_plan(20 * 3600).config("2d")
    default = plan_dataset(xray_fingerprint()).config("2d")
    assert long.spacing == default.spacing and long.network.features[0] == 32
    assert short.spacing[0] > default.spacing[0]
    assert short.budget.expected_samples > 0 and long.budget.expected_samples >= ENOUGH_SAMPLES[2]


def test_spacing_never_coarsens_past_the_resolution_floor():
    tiny = xray_fingerprint(structure_fraction=0.0015)  # ~15 px structures: at most 1x coarsening is allowed
    for budget in (60, 600, 3600):
        config = budget_plan(budget, tiny).config("2d")
        structure = smallest_structure_mm(tiny) / min(config.spacing)
        assert config.spacing == (1.0, 1.0) or structure >= MIN_STRUCTURE_VOXELS
        assert all(c.spacing_factor == 1.0 for c in config.budget.candidates)


def test_budget_plan_fits_the_memory_budget():
    for budget in (300, 3600):
        config = budget_plan(budget, memory_gb=3.0).config("2d")
        assert config.estimated_memory_gb <= 3.0


def test_batch_grows_only_while_throughput_rises():
    many = xray_fingerprint(n=400)  # the default rule caps a batch at 5% of the dataset's voxels
    flat = budget_plan(3600, many, step=lambda c: 1e-6 * math.prod(c.patch_size) * c.batch_size).config("2d")
    assert flat.batch_size == 2  # a cost linear in batch: no throughput gained
    overhead = budget_plan(3600, many, step=lambda c: 0.2 + 1e-7 * math.prod(c.patch_size) * c.batch_size).config("2d")
    assert overhead.batch_size > 2  # a fixed cost per step: bigger batches pay


def test_the_choice_and_its_reasons_are_recorded_and_round_trip(tmp_path):
    plan = budget_plan(1800)
    config = plan.config("2d")
    assert plan.planner == "default+time_budget"
    assert config.budget.time_budget_s == 1800 and config.budget.precision == "bf16"
    chosen = [c for c in config.budget.candidates if c.verdict == "chosen"]
    assert len(chosen) == 1 and chosen[0].batch_size == config.batch_size and chosen[0].patch_size == config.patch_size
    assert any("chosen" in r for r in config.budget.reasons)
    path = schema.write_json_atomic(tmp_path / "plan.json", plan)
    assert load_plan(path) == plan


def test_without_a_budget_the_plan_is_the_default_one():
    plan = plan_dataset(xray_fingerprint())
    assert all(c.budget is None for c in plan.configurations.values()) and plan.planner == "default"


def test_coarsening_brings_fine_axes_up_and_leaves_coarse_ones():
    assert coarsened((3.0, 0.5, 0.5), 2.0) == (3.0, 1.0, 1.0)
    assert coarsened((3.0, 0.5, 0.5), 8.0) == (4.0, 4.0, 4.0)


def test_step_times_are_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    from autoseg.planners import step_time

    calls = []
    monkeypatch.setattr(step_time, "measure_step_seconds", lambda c, d, p: calls.append(c) or 0.5)
    candidate = StepCandidate(budget_plan(600).config("2d").network, (64, 64), 2)
    cache = tmp_path / "cache" / "step_times.json"
    assert StepTimer(cache, torch.device("cpu"), "fp32")(candidate) == 0.5
    assert StepTimer(cache, torch.device("cpu"), "fp32")(candidate) == 0.5  # a new timer reads the cache
    assert len(calls) == 1
    assert StepTimer(cache, torch.device("cpu"), "bf16")(candidate) == 0.5 and len(calls) == 2  # another precision


def test_a_real_measurement_is_a_positive_duration():
    network = plan_dataset(xray_fingerprint(shape=(64, 32))).config("2d").network
    seconds = measure_step_seconds(StepCandidate(network, (64, 32), 2), torch.device("cpu"), "fp32")
    assert 0 < seconds < 30


def test_time_to_dice_pairs_minutes_with_pseudo_dice():
    history = {"pseudo_dice": [0.1, np.float64(0.5)], "ema_dice": [0.1, 0.14]}
    assert time_to_dice([60.0, 150.0], history) == [{"minutes": 1.0, "pseudo_dice": 0.1, "ema_dice": 0.1},
                                                    {"minutes": 2.5, "pseudo_dice": 0.5, "ema_dice": 0.14}]


# ---------------------------------------------------------------- end to end
def test_a_budget_plan_trains_for_its_budget_within_5_percent_and_records_time_to_dice(make_dataset, tmp_path):
    from autoseg import api

    dataset = make_dataset(num_cases=4, shape=(8, 32, 32), num_labels=2)
    workdir = tmp_path / "work"
    budget = 20.0
    plan, _ = api.plan(dataset, workdir, configs=["2d"], time_budget_s=budget, device="cpu", workers=1)
    assert plan.config("2d").budget.time_budget_s == budget
    api.preprocess(dataset, "2d", workdir, workers=1)  # outside the budget, like a real run's setup
    run = api.train(dataset, "2d", "full", workdir, iters_per_epoch=10, val_iters=1, workers=0)  # no --time-budget

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["train_config"]["time_budget_s"] == budget
    assert abs(record["elapsed_s"] - budget) <= 0.05 * budget
    minutes = [point["minutes"] for point in record["time_to_dice"]]
    assert len(minutes) == record["epochs_done"] and minutes == sorted(minutes) and minutes[-1] <= budget / 60 * 1.05
    assert (run / "progress.png").is_file()


def cord_fingerprint(extent_mm=(10.0, 18.0)) -> Fingerprint:
    """Like the cord MRI slices: 384x320 px at 0.5 mm, two labels inside a ~1 x 2 cm box."""
    fractions, components = {"0": 0.997, "1": 0.002, "2": 0.001}, {"0": 0, "1": 1, "2": 2}
    cases = tuple(CaseFingerprint(f"c{i:03d}", (0.5, 0.5), (384, 320), (384, 320), fractions, components,
                                  foreground_extent_mm=extent_mm) for i in range(8))
    labels = {"background": 0, "white_matter": 1, "gray_matter": 2}
    return Fingerprint("Dataset997_Cord", 2, ".nii.gz", labels, (ChannelFingerprint("T2star", "mr", STATS),), cases)


def test_small_structures_in_large_images_get_patches_that_cover_them_not_the_whole_image():
    cord = cord_fingerprint()
    config = budget_plan(1800, cord).config("2d")
    whole = plan_dataset(cord).config("2d")
    assert whole.patch_size == (384, 320)  # without a budget: nnU-Net's whole-image patch, unchanged
    assert math.prod(config.patch_size) * 4 <= math.prod(whole.patch_size)
    # covers the structures (10 x 18 mm) plus a 5 mm margin (half the smaller extent), never under 64 px
    assert all(p * s >= e + 5.0 and p >= 64 for p, s, e in zip(config.patch_size, config.spacing, (10.0, 18.0)))
    assert any("instead of the whole image" in r for r in config.budget.reasons)
    assert config.median_shape == whole.median_shape


def test_structures_that_fill_the_image_keep_the_whole_image_patch():
    spread = budget_plan(1800, cord_fingerprint(extent_mm=(150.0, 120.0))).config("2d")
    unknown = budget_plan(1800, cord_fingerprint(extent_mm=())).config("2d")  # a fingerprint from before the extents
    assert spread.patch_size == unknown.patch_size
    assert not any("instead of the whole image" in r for r in spread.budget.reasons)


def test_a_2d_configuration_of_3d_cases_covers_the_structures_in_plane_only():
    """The cord's length along the slices (51 mm) must not widen the in-plane patch of 2d patches."""
    fractions, components = {"0": 0.997, "1": 0.002, "2": 0.001}, {"0": 0, "1": 1, "2": 2}
    cases = tuple(CaseFingerprint(f"c{i:03d}", (3.0, 0.5, 0.5), (17, 384, 320), (17, 384, 320), fractions, components,
                                  foreground_extent_mm=(51.0, 10.0, 18.0)) for i in range(8))
    cord = Fingerprint("Dataset996_Cord3D", 3, ".nii.gz", {"background": 0, "white_matter": 1, "gray_matter": 2},
                       (ChannelFingerprint("T2star", "mr", STATS),), cases)
    plan = fit_plan_to_budget(plan_dataset(cord, configs=["2d"]), cord, request(1800), fake_step_seconds)
    config = plan.config("2d")
    assert all(64 <= p <= 96 for p in config.patch_size), config.patch_size  # (10 or 18) + 5 mm at 0.5 mm, >= 64 px


def trunk_ct_fingerprint(extent_mm=()) -> Fingerprint:
    """Large CT volumes whose fullres patch covers a small part: the default plan has 3d_lowres and the cascade."""
    fractions, components = {"0": 0.98, **{str(v): 0.004 for v in range(1, 6)}}, {"0": 0, **{str(v): 1 for v in range(1, 6)}}
    cases = tuple(CaseFingerprint(f"c{i:03d}", (1.5, 0.8, 0.8), (300, 512, 512), (300, 512, 512), fractions, components,
                                  foreground_extent_mm=extent_mm) for i in range(10))
    labels = {"background": 0, **{f"L{v}": v for v in range(1, 6)}}
    return Fingerprint("Dataset995_Trunk", 3, ".nii.gz", labels, (ChannelFingerprint("CT", "ct", STATS),), cases)


def test_a_budget_plan_keeps_the_cascade_with_a_first_stage_coarser_than_fullres():
    trunk = trunk_ct_fingerprint()
    default = plan_dataset(trunk)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(default.configurations)
    plan = fit_plan_to_budget(default, trunk, request(1800), fake_step_seconds)
    lowres, fullres, cascade = (plan.config(n) for n in ("3d_lowres", "3d_fullres", "3d_cascade_fullres"))
    assert lowres.budget is not None and fullres.budget is not None
    assert all(lo >= full for lo, full in zip(lowres.spacing, fullres.spacing))
    assert min(lowres.spacing) >= min(default.config("3d_lowres").spacing)  # coarsened from its own spacing
    # the second stage is the fitted 3d_fullres plus one input channel per foreground class
    assert cascade.patch_size == fullres.patch_size and cascade.spacing == fullres.spacing
    assert cascade.batch_size == fullres.batch_size and cascade.previous_stage == "3d_lowres"
    assert cascade.network.in_channels == fullres.network.in_channels + 5


def test_a_long_structure_thin_in_a_large_volume_gets_patches_around_its_thickness():
    """A lumbar column (240 mm long, 90 x 120 mm across) in a 450 x 410 x 410 mm trunk CT: the margin follows
    its thickness, not its length, so the patch covers the column and leaves most of the trunk out."""
    column = (240.0, 90.0, 120.0)
    trunk = trunk_ct_fingerprint(extent_mm=column)
    whole = fit_plan_to_budget(plan_dataset(trunk_ct_fingerprint()), trunk_ct_fingerprint(), request(1800), fake_step_seconds)
    plan = fit_plan_to_budget(plan_dataset(trunk), trunk, request(1800), fake_step_seconds)
    for name in ("3d_lowres", "3d_fullres"):
        config = plan.config(name)
        assert any("instead of the whole image" in r for r in config.budget.reasons), name
        assert math.prod(config.patch_size) * 4 <= math.prod(whole.config(name).patch_size)
        assert config.budget.expected_iterations > whole.config(name).budget.expected_iterations
        mm = [p * s for p, s in zip(config.patch_size, config.spacing)]
        assert all(m >= e + 45.0 for m, e in zip(mm, column)), (name, mm)  # a margin of half the 90 mm thickness
        assert all(p >= 32 for p in config.patch_size), (name, config.patch_size)
