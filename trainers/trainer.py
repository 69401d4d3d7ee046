"""The training loop. One class; epochs of SGD steps, a short patch validation after each, and
checkpoints that let any run be killed and resumed.

Shapes: data (B, C, *patch); targets, one per deep-supervision output, (B, 1, *patch * scale_i).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from autoseg import schema
from autoseg.checkpoint import capture_rng, model_payload, restore_rng, save_checkpoint
from autoseg.config import ConfigPlan, Plan, TrainConfig
from autoseg.data import BatchLoader
from autoseg.errors import ConfigError, DistributedError, PreprocessingError
from autoseg.malloc import reuse_freed_memory
from autoseg.networks import build_network
from autoseg.registry import TRAINERS
from autoseg.trainers.curves import write_progress_png
from autoseg.trainers.data_setup import check_cases, training_source, validation_source
from autoseg.trainers.distributed import Single
from autoseg.trainers.interrupt import StopRequest
from autoseg.trainers.loss import DeepSupervisionLoss
from autoseg.trainers.precision import resolve_precision
from autoseg.trainers.run_folder import (
    CHECKPOINTS,
    check_resumable,
    checkpoint_path,
    newest_resumable_checkpoint,
    write_run_json,
)
from autoseg.trainers.schedule import scheduled_lr
from autoseg.trainers.validation import pseudo_dice

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]
EMA_MOMENTUM = 0.9
EPOCHS_PER_BUDGET = 10  # a time-budgeted run validates at least this often


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # iterations done in the current epoch
    elapsed_s: float = 0.0  # time spent training, summed over resumes
    ema_dice: float | None = None
    best_ema: float = -1.0
    epochs_since_best: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # this epoch's so far: a resumed epoch reports the same mean
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr")})
    # training time at each epoch's end, for pseudo-Dice against wall time (kept apart from the
    # history: a resumed run learns exactly what an uninterrupted one does, but not in the same time)
    epoch_end_s: list[float] = field(default_factory=list)


@TRAINERS.register("default")
class Trainer:
    def __init__(self, plan: Plan, config: ConfigPlan, options: TrainConfig, preprocessed: Path, run_dir: Path,
                 train_ids: list[str], val_ids: list[str], on_event: EventCallback | None = None,
                 dist: Single | None = None, case_weights: Sequence[float] | None = None):
        self.plan, self.config, self.options = plan, config, options
        self.case_weights = case_weights  # the task's per-case sampling weights, in train_ids order (None: uniform)
        self.preprocessed, self.run_dir = Path(preprocessed), Path(run_dir)
        self.train_ids, self.val_ids = train_ids, val_ids
        self.on_event = on_event or (lambda kind, info: None)
        self.plan_hash = schema.content_hash(config)
        self.dist = dist or Single()  # data-parallel hooks (trainers/distributed.py); identities in one process
        reuse_freed_memory()  # a third faster steps on CPU: no page faults for every activation
        self.precision = resolve_precision(_planned_precision(options, config), self.dist.device(options.device))
        self.batch_size = options.batch_size or config.batch_size  # global: split over the ranks
        self.dist.check_batch(self.batch_size, from_plan=options.batch_size is None)
        if options.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not options.deterministic  # fixed patch size: the autotuned kernels pay off
        torch.manual_seed(options.seed)
        self.model = build_network(config.network).to(self.precision.device)
        self.train_model = self.dist.wrap(self.model)  # DistributedDataParallel across ranks; saved: self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=options.lr, momentum=options.momentum,
                                         weight_decay=options.weight_decay, nesterov=True)
        self.scaler = self.precision.scaler()
        # batch Dice over the global batch
        self.loss = DeepSupervisionLoss(self.dist.global_sum, options.deep_supervision_ratio)
        self.state = TrainState()
        self._epoch_end_cost_s = 0.0  # last validation + checkpoint time, kept free at the end of a budget
        self._fraction = 0.0  # of the run done; only grows

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> TrainState:
        """Train to the end (epochs, time budget or early stop) and save checkpoint_final.pt.

        A stop signal ends the run after the current step with checkpoint_latest.pt saved and run.json
        status "interrupted", then raises KeyboardInterrupt; `fit(resume=True)` continues from there.
        """
        if resume:
            self._restore()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_run_json("running")
        self._clock_start, self._elapsed_at_start = time.monotonic(), self.state.elapsed_s
        try:
            with StopRequest(self.dist.signal_grace_s) as stop:
                self._run_epochs(stop)
        except BaseException as exc:  # run.json must not claim "running" for a run that has ended
            status = "aborted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._write_run_json(status, error=f"{type(exc).__name__}: {exc}")
            raise
        if stop.requested:
            self._save("latest")
            self._write_run_json("interrupted")
            log.info("interrupted: saved %s; continue with --resume", checkpoint_path(self.run_dir, "latest"))
            raise KeyboardInterrupt
        self._save("final")
        self._write_run_json("finished")
        return self.state

    def _run_epochs(self, stop: StopRequest) -> None:
        folder, oversample = self.preprocessed, self.options.oversample_foreground
        check_cases(folder, sorted(set(self.train_ids) | set(self.val_ids)))
        batch = self.dist.loader_batch(self.batch_size, self.options.deterministic)
        self.train_source = training_source(self.config, folder, self.train_ids, batch, oversample, self.case_weights)
        self.val_source = validation_source(self.config, folder, self.val_ids, batch, 0.33)
        with self._open_loaders() as (train_batches, val_batches):
            while not self._finished(stop):
                try:
                    self._seed_epoch_streams(train_batches, val_batches)
                    self._train_epoch(train_batches, stop)
                    if not self._agree_on_stop(stop):  # a partial epoch is neither validated nor counted
                        # the workers prepare the next epoch's batches while validation runs
                        train_batches.reseed(self._stream_seeds(self.state.epoch + 1, 0)[0])
                        self._end_epoch(val_batches)
                except (PreprocessingError, DistributedError):
                    # A scheduler's SIGTERM to the whole process group also ends the loader workers (and
                    # other ranks). The failure came before any state changed: the stop still ends consistently.
                    if not stop.requested:
                        raise
                    log.debug("a data loader worker or another rank ended with the stop signal", exc_info=True)

    def _train_epoch(self, batches: Iterator[dict], stop: StopRequest) -> None:
        self.model.train()
        s, started, done_before = self.state, time.monotonic(), self.state.iteration
        while s.iteration < self.options.iters_per_epoch:
            batch = self._next_batch(batches, stop)  # first: a rank whose loader ended still joins the decision
            if self._agree_on_stop(stop, started):
                break
            self._set_lr()
            s.epoch_losses.append(self._train_step(batch["data"], batch["target"]))
            s.iteration += 1
            self._update_elapsed()
            self.on_event("iteration", self._progress_info(s.iteration - done_before, started))

    def _next_batch(self, batches: Iterator[dict], stop: StopRequest) -> dict | None:
        """The next batch; None when the stop signal also ended the loader workers."""
        try:
            return next(batches)
        except PreprocessingError:
            if not stop.requested:
                raise
            log.debug("a data loader worker ended with the stop signal", exc_info=True)
            return None

    def _agree_on_stop(self, stop: StopRequest, started: float | None = None) -> bool:
        """Whether to stop now: a stop request on any rank, or (within an epoch begun at `started`) rank
        0's clock; every rank takes the same decision and rank 0's schedule, so all step together."""
        fraction = self._fraction_done()
        time_up = started is not None and (self._out_of_time() or self._epoch_time_up(started))
        requested, self._fraction, time_up = self.dist.agree(stop.requested, fraction, float(time_up))
        stop.requested = stop.requested or requested
        return stop.requested or bool(time_up)

    def _train_step(self, data: torch.Tensor, targets: list[torch.Tensor]) -> float:
        device = self.precision.device
        data, targets = data.to(device, non_blocking=True), [t.to(device, non_blocking=True) for t in targets]
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss = self.loss(self.train_model(data), targets)
        # With fp32/bf16 the scaler is disabled and these calls reduce to backward() and step().
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def _end_epoch(self, val_batches: Iterator[dict]) -> None:
        started, s = time.monotonic(), self.state
        val_loss, dice = pseudo_dice(self.model, val_batches, self._validation_batches(), self.loss, self.precision,
                                     len(self.plan.labels), self.dist)
        mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
        s.ema_dice = mean_dice if s.ema_dice is None else EMA_MOMENTUM * s.ema_dice + (1 - EMA_MOMENTUM) * mean_dice
        train_loss = self.dist.mean(float(np.mean(s.epoch_losses))) if s.epoch_losses else float("nan")
        self._update_elapsed()
        for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("pseudo_dice", mean_dice),
                           ("ema_dice", s.ema_dice), ("lr", self.optimizer.param_groups[0]["lr"])):
            s.history[key].append(float(value))
        s.epoch_end_s.append(round(s.elapsed_s, 2))
        s.epoch, s.iteration, s.epoch_losses = s.epoch + 1, 0, []
        if s.ema_dice > s.best_ema:
            s.best_ema, s.epochs_since_best = s.ema_dice, 0
            self._save("best")
        else:
            s.epochs_since_best += 1
        if s.epoch % self.options.checkpoint_every == 0:
            self._save("latest")
        if self.dist.is_main:
            write_progress_png(self.run_dir / "progress.png", s.history, [t / 60 for t in s.epoch_end_s])
        log.info("epoch %d: train loss %.4f, val loss %.4f, pseudo-Dice %s (EMA %.4f)", s.epoch,
                 train_loss, val_loss, np.round(dice, 4).tolist(), s.ema_dice)
        self.on_event("epoch", {"epoch": s.epoch, "pseudo_dice": dice.tolist(), "ema_dice": s.ema_dice, "val_loss": val_loss})
        self._update_elapsed()
        self._epoch_end_cost_s = time.monotonic() - started

    # ------------------------------------------------------------------ time and schedule
    def _update_elapsed(self) -> None:
        self.state.elapsed_s = self._elapsed_at_start + time.monotonic() - self._clock_start

    def _fraction_done(self) -> float:
        """Iterations done over all iterations or, with a budget, elapsed time (plus the time the
        last validation and checkpoint took, kept free so the run ends on time) over the budget."""
        o, s = self.options, self.state
        by_iterations = (s.epoch * o.iters_per_epoch + s.iteration) / (o.epochs * o.iters_per_epoch)
        by_time = (s.elapsed_s + self._epoch_end_cost_s) / o.time_budget_s if o.time_budget_s else 0.0
        # the reserve for the end of an epoch varies, so never let the schedule step back
        self._fraction = min(max(by_iterations, by_time, self._fraction), 1.0)
        return self._fraction

    def _set_lr(self) -> None:
        """From the fraction done as _agree_on_stop last decided it (rank 0's clock, for all ranks)."""
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_lr(self.options.lr, self._fraction, self.options.warmup)

    def _epoch_time_up(self, started: float) -> bool:
        """With a time budget an epoch also ends after a tenth of the budget, so that even a short
        run validates, saves a best checkpoint and draws its curves several times. An epoch takes at
        least one step: a slow first batch (loader start-up on a busy machine) must not leave an
        epoch that validates without having trained."""
        budget = self.options.time_budget_s
        return bool(budget) and bool(self.state.epoch_losses) and time.monotonic() - started >= budget / EPOCHS_PER_BUDGET

    def _validation_batches(self) -> int:
        """With a time budget validation stays near 10% of the epoch's time (a forward pass costs
        about a third of a training step); otherwise `val_iters`."""
        if not self.options.time_budget_s:
            return self.options.val_iters
        return max(1, min(self.options.val_iters, math.ceil(0.3 * len(self.state.epoch_losses))))

    def _out_of_time(self) -> bool:
        return bool(self.options.time_budget_s) and self._fraction_done() >= 1.0

    def _finished(self, stop: StopRequest) -> bool:
        """Stop requested, or the run's end reached by rank 0's account (the decision of every rank)."""
        o, s = self.options, self.state
        early = o.early_stop is not None and s.epochs_since_best >= o.early_stop
        requested, done = self.dist.agree(stop.requested, float(s.epoch >= o.epochs or self._out_of_time() or early))
        stop.requested = stop.requested or requested
        if early and done and not stop.requested:
            log.info("early stop: no better EMA pseudo-Dice for %d epochs", s.epochs_since_best)
        return stop.requested or bool(done)

    def _progress_info(self, iterations_this_session: int, started: float) -> dict:
        o, s = self.options, self.state
        rate = iterations_this_session / max(time.monotonic() - started, 1e-9)
        done = self._fraction_done()
        remaining = o.time_budget_s - s.elapsed_s if o.time_budget_s else ((o.epochs - s.epoch) * o.iters_per_epoch - s.iteration) / max(rate, 1e-9)
        return {"epoch": s.epoch, "iteration": s.iteration, "iters_per_epoch": o.iters_per_epoch, "loss": s.epoch_losses[-1],
                "it_per_s": rate, "eta_s": max(remaining, 0.0), "fraction_done": done, "ema_dice": s.ema_dice}

    # ------------------------------------------------------------------ data
    def _stream_seeds(self, epoch: int, iteration: int) -> tuple[int, int]:
        """(training, validation) loader seeds for an epoch entered at `iteration`: a resumed run sees
        the batches an uninterrupted one would. Resuming mid-epoch replays the batches already used
        in --deterministic mode, else starts a stream seeded by the iteration too (cheaper, same
        distribution)."""
        train_iteration = 0 if self.options.deterministic else iteration
        rank = self.dist.stream_key(self.options.deterministic)  # (): every rank draws the single-process stream
        return tuple(int(np.random.SeedSequence([self.options.seed, epoch, stream, i, *rank]).generate_state(1)[0] % 2**31)
                     for stream, i in ((0, train_iteration), (1, 0)))

    @contextlib.contextmanager
    def _open_loaders(self) -> Iterator[tuple[BatchLoader, BatchLoader]]:
        """The run's training and validation loaders; their workers live until the run ends (starting
        them costs seconds). Opened at the first epoch's seeds, so its reseeds cost nothing, and
        both at once, so the validation worker starts up while training runs."""
        o, s = self.options, self.state
        train_seed, val_seed = self._stream_seeds(s.epoch, s.iteration)
        workers = self.dist.workers(o.workers)
        with (self.train_source.loader(workers, train_seed) as train,
              self.val_source.loader(min(1, workers), val_seed) as val):
            yield self.dist.batches(train, o.deterministic), self.dist.batches(val, o.deterministic)

    def _seed_epoch_streams(self, train: BatchLoader, val: BatchLoader) -> None:
        """Restart both streams at this epoch's seeds (free for a stream already there), then replay
        the batches a --deterministic run used before it was interrupted mid-epoch."""
        s = self.state
        train_seed, val_seed = self._stream_seeds(s.epoch, s.iteration)
        train.reseed(train_seed)
        val.reseed(val_seed)
        for _ in range(s.iteration if self.options.deterministic else 0):
            next(train)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, kind: str) -> None:
        if not self.dist.is_main:  # the run folder is rank 0's
            return
        payload = model_payload(self.model, self.config, self.plan.labels, self.plan.channel_names, self.plan.dataset_name,
                                image_ndim=self.plan.image_ndim)
        payload["training"] = {  # tensors and plain values only: the checkpoint loads with weights_only
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": capture_rng(),
            "train_config": schema.to_dict(self.options),
            "plan_hash": self.plan_hash,
        }
        save_checkpoint(checkpoint_path(self.run_dir, kind), payload)

    def _restore(self) -> None:
        path, payload = self.dist.on_main(self._resumable_checkpoint)  # the other ranks receive rank 0's
        training = payload["training"]
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scaler.load_state_dict(training["scaler"])
        self.state = TrainState(**training["state"])
        restore_rng(training["rng"])
        log.info("resumed from %s at epoch %d, iteration %d", path, self.state.epoch, self.state.iteration)

    def _resumable_checkpoint(self) -> tuple[Path, dict]:
        if checkpoint_path(self.run_dir, "final").is_file():  # a "latest" may remain beside it; it is older
            raise ConfigError(f"{self.run_dir}: this run already finished ({CHECKPOINTS['final']} exists); nothing to resume. "
                              "Train without --resume to start over, or pass another --run-dir")
        path, payload = newest_resumable_checkpoint(self.run_dir)
        training = payload["training"]
        check_resumable(training["train_config"], self.options, training["plan_hash"], self.plan_hash, path)
        return path, payload

    def _write_run_json(self, status: str, **extra) -> None:
        if not self.dist.is_main:
            return
        write_run_json(self.run_dir, self.options, self.plan_hash, self.train_ids, self.val_ids, status,
                       **self._summary(), **extra)

    def _summary(self) -> dict:
        s = self.state
        return {"epochs_done": s.epoch, "elapsed_s": round(s.elapsed_s, 1), "best_ema_pseudo_dice": s.best_ema,
                "last_pseudo_dice": s.history["pseudo_dice"][-1] if s.history["pseudo_dice"] else None,
                "time_to_dice": time_to_dice(s.epoch_end_s, s.history), **self.dist.record()}


def _planned_precision(options: TrainConfig, config: ConfigPlan) -> str:
    """`auto` trains in the precision a budget-aware plan was measured with (bf16 on CPUs that
    compute it natively); otherwise as resolve_precision decides."""
    if options.precision == "auto" and config.budget is not None and options.device in ("auto", config.budget.device):
        return config.budget.precision
    return options.precision


def time_to_dice(epoch_end_s: list[float], history: dict[str, list[float]]) -> list[dict[str, float]]:
    """Per epoch: training minutes so far, pseudo-Dice and its EMA (run.json's time-to-Dice curve)."""
    rows = zip(epoch_end_s, history["pseudo_dice"], history["ema_dice"])
    return [{"minutes": round(t / 60, 2), "pseudo_dice": round(d, 4), "ema_dice": round(e, 4)} for t, d, e in rows]
