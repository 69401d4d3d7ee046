"""Dice + CE loss with deep supervision, the poly schedule, durations and the time-budgeted run."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from autoseg import api
from autoseg.config import TrainConfig
from autoseg.errors import ConfigError
from autoseg.trainers.loss import DeepSupervisionLoss, deep_supervision_weights, dice_ce_loss, soft_dice_loss
from autoseg.trainers.schedule import WARMUP_START, parse_duration, poly_lr, scheduled_lr


def labels_2d(batch: int = 2, size: int = 8, classes: int = 3, seed: int = 0) -> torch.Tensor:
    """(B, 1, size, size) integer labels with every class present."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (batch, 1, size, size), generator=generator)
    target[:, 0, 0, :classes] = torch.arange(classes)
    return target


def logits_for(target: torch.Tensor, classes: int, confidence: float = 30.0) -> torch.Tensor:
    """(B, K, *S) logits that put `confidence` on the given labels."""
    return confidence * F.one_hot(target[:, 0], classes).movedim(-1, 1).float()


# ---------------------------------------------------------------- loss
def test_dice_ce_is_near_zero_for_perfect_logits_and_large_for_wrong_ones():
    target = labels_2d()
    perfect = dice_ce_loss(logits_for(target, 3), target)
    shifted = (target + 1) % 3  # every voxel confidently assigned another class
    wrong = dice_ce_loss(logits_for(shifted, 3), target)
    uniform = dice_ce_loss(torch.zeros(2, 3, 8, 8), target)

    assert 0.0 <= float(perfect) < 1e-3
    assert float(uniform) > 1.0  # CE alone is log(3) ~ 1.1
    assert float(wrong) > float(uniform)


def test_soft_dice_ignores_background_and_scores_partial_overlap():
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1  # half the image is class 1
    half_right = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    half_right[0, 0, :1] = 1  # predicts a quarter of the image, all inside the object

    assert float(soft_dice_loss(logits_for(target, 2), target)) == pytest.approx(0.0, abs=1e-4)
    # Dice = 2 * 4 / (4 + 8) = 2/3 for the foreground class alone
    assert float(soft_dice_loss(logits_for(half_right, 2), target)) == pytest.approx(1 / 3, abs=1e-3)


def test_dice_ce_gradients_point_towards_the_target():
    target = labels_2d(seed=1)
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    dice_ce_loss(logits, target).backward()
    onehot = F.one_hot(target[:, 0], 3).movedim(-1, 1).bool()
    # descending the gradient raises the true class's logit and lowers the others
    assert (logits.grad[onehot] < 0).all() and (logits.grad[~onehot] > 0).all()


def test_deep_supervision_weights_halve_and_sum_to_one():
    weights = deep_supervision_weights(4)
    assert weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_ratio_sets_how_fast_the_weights_fall():
    assert deep_supervision_weights(4, ratio=1.0) == pytest.approx([0.25] * 4)
    full, half = labels_2d(size=8), labels_2d(size=4, seed=3)
    outputs = [logits_for(full, 3), logits_for((half + 1) % 3, 3)]
    equal = DeepSupervisionLoss(ratio=1.0)(outputs, [full, half])
    expected = 0.5 * dice_ce_loss(outputs[0], full) + 0.5 * dice_ce_loss(outputs[1], half)
    assert float(equal) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("ratio", [0.0, 1.5, float("nan")])
def test_a_deep_supervision_ratio_outside_0_to_1_is_refused(ratio):
    with pytest.raises(ConfigError, match="--deep-supervision-ratio"):
        TrainConfig(dataset_name="D", config="2d", fold="0", deep_supervision_ratio=ratio)


def test_deep_supervision_loss_weights_each_scale():
    full, half = labels_2d(size=8), labels_2d(size=4, seed=3)
    good_full = logits_for(full, 3)
    bad_half = logits_for((half + 1) % 3, 3)
    loss = DeepSupervisionLoss()

    combined = loss([good_full, bad_half], [full, half])

    expected = 2 / 3 * dice_ce_loss(good_full, full) + 1 / 3 * dice_ce_loss(bad_half, half)
    assert float(combined) == pytest.approx(float(expected), rel=1e-6)
    assert float(loss(good_full, [full])) == pytest.approx(float(dice_ce_loss(good_full, full)))  # a single output


# ---------------------------------------------------------------- schedule
def test_poly_lr_starts_at_the_initial_rate_and_ends_at_zero():
    assert poly_lr(0.01, 0.0) == pytest.approx(0.01)
    assert poly_lr(0.01, 1.0) == 0.0
    assert poly_lr(0.01, 0.5) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, -0.5) == pytest.approx(0.01) and poly_lr(0.01, 1.5) == 0.0  # clamped
    rates = [poly_lr(0.01, f / 10) for f in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_a_warm_up_rises_linearly_to_the_rate_then_decays_over_the_rest_of_the_run():
    assert scheduled_lr(0.01, 0.3) == poly_lr(0.01, 0.3)  # no warm-up: plain poly
    assert scheduled_lr(0.01, 0.0, warmup=0.1) == pytest.approx(0.01 * WARMUP_START)  # never a zero step
    assert scheduled_lr(0.01, 0.05, warmup=0.1) == pytest.approx(0.005)
    assert scheduled_lr(0.01, 0.1, warmup=0.1) == pytest.approx(0.01)  # the peak, where poly takes over
    assert scheduled_lr(0.01, 0.55, warmup=0.1) == pytest.approx(poly_lr(0.01, 0.5))
    assert scheduled_lr(0.01, 1.0, warmup=0.1) == 0.0
    rising = [scheduled_lr(0.01, f / 100, warmup=0.1) for f in range(1, 11)]
    assert all(a < b for a, b in zip(rising, rising[1:]))


@pytest.mark.parametrize("warmup", [-0.1, 0.5, float("nan")])
def test_a_warm_up_outside_the_first_half_of_the_run_is_refused(warmup):
    with pytest.raises(ConfigError, match="--warmup"):
        TrainConfig(dataset_name="D", config="2d", fold="0", warmup=warmup)


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400),
                                           (" 2H ", 7200), ("1h 5s", 3605)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "30x", "1h30", "ten minutes", "-5m", "5m garbage"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(ConfigError, match="not a duration.*30m"):
        parse_duration(text)


# ---------------------------------------------------------------- time budget
def test_every_budgeted_epoch_trains_at_least_one_step(make_dataset, tmp_path, monkeypatch):
    """An epoch's share of the budget shorter than the first batch's wait still trains a step."""
    from autoseg.trainers import trainer

    dataset = make_dataset(num_cases=3, shape=(8, 16, 16), num_labels=2)
    monkeypatch.setattr(trainer, "EPOCHS_PER_BUDGET", 1e9)  # each epoch's time share ~0 s
    run = api.train(dataset, "2d", "full", tmp_path / "work", epochs=3, iters_per_epoch=10, val_iters=1,
                    workers=0, time_budget_s=600.0)

    history = torch.load(run / "checkpoint_final.pt", weights_only=False)["training"]["state"]["history"]
    assert len(history["train_loss"]) == 3
    assert all(math.isfinite(loss) for loss in history["train_loss"])


def test_time_budget_ends_the_run_on_time_fully_decayed(make_dataset, tmp_path):
    dataset = make_dataset(num_cases=3, shape=(8, 16, 16), num_labels=2)
    workdir = tmp_path / "work"
    api.preprocess(dataset, "2d", workdir, workers=1)  # outside the budget, like a real run's setup
    budget = 8.0

    started = time.monotonic()
    run = api.train(dataset, "2d", "full", workdir, epochs=1000, iters_per_epoch=10, val_iters=1, workers=0,
                    time_budget_s=budget)
    wall = time.monotonic() - started

    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished"
    assert 0 < record["epochs_done"] < 1000  # the budget, not the epoch count, ended it
    # margins: the last step may start just before the budget runs out, on a busy machine slowly
    assert budget * 0.75 <= record["elapsed_s"] <= budget + 4.0
    assert wall <= budget + 10.0  # plus setup: imports, model, manifest check, final checkpoint
    checkpoint = torch.load(run / "checkpoint_final.pt", weights_only=False)
    lrs = checkpoint["training"]["state"]["history"]["lr"]
    # the lr of the last step: ~0 when steps are short next to the budget (typically < 1% of 1e-2
    # here); an epoch-count schedule would have stayed near 1e-2 after so few of its 1000 epochs
    assert lrs[-1] < 0.2 * 1e-2 and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert not math.isnan(checkpoint["training"]["state"]["history"]["train_loss"][-1])
