"""Cross-validation folds trained at once, each in its own process (`train ... all --parallel N`).

Every fold is an ordinary single-process run (its run folder, lock and checkpoints; resumable as
always) in a spawned process that gets its share of the CPU threads or a device of its own. Its
progress events and log records come back through one queue, so the parent shows one live line
per fold and logs each record with its fold's name. Fold processes run in sessions of their own:
a terminal's Ctrl-C reaches the parent, which passes each stop signal on once; a fold whose
parent dies stops itself the same way. A failed fold starts no new ones; the folds already
running finish, and every failure is reported together at the end.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from autoseg import errors
from autoseg.data.loader import children_ignore_sigint
from autoseg.trainers.distributed import usable_cores

log = logging.getLogger(__name__)

_POLL_S = 0.2
EventCallback = Callable[[str, dict], None]


@dataclass(frozen=True)
class FoldJob:
    fold: str
    resume: bool  # continue from the fold's checkpoint (it was interrupted or killed)
    device: str
    threads: int  # torch CPU threads for this fold


def plan_jobs(folds: list[tuple[str, bool]], parallel: int, device: str, devices: list[str]) -> list[FoldJob]:
    """(fold, resume) pairs -> jobs: devices taken in turn (else `device`), the CPU cores split
    between the folds that run at once."""
    at_once = max(1, min(parallel, len(folds)))
    threads = max(1, usable_cores() // at_once)
    return [FoldJob(fold, resume, devices[i % len(devices)] if devices else device, threads)
            for i, (fold, resume) in enumerate(folds)]


def train_folds(train: Callable[..., Any], jobs: list[FoldJob], parallel: int, train_options: dict[str, Any],
                on_event: EventCallback | None) -> None:
    """Train `jobs`, at most `parallel` at once, each by `train` (autoseg.api.train, handed in: a
    module-level function, so a spawned process can import it); `train_options` are its keywords but
    fold, resume, on_event and device. Raises KeyboardInterrupt when stopped, else an error naming
    every failed fold."""
    context = mp.get_context("spawn")
    messages = context.Queue()
    pending, running, outcomes = list(jobs), {}, {}
    with _PassOnStopSignals(lambda: list(running.values())) as stop:
        while pending or running:
            while pending and len(running) < parallel and not stop.requested and not _failed(outcomes):
                job = pending.pop(0)
                running[job.fold] = _start(context, train, job, train_options, messages)
            _receive(messages, on_event, outcomes, wait_s=_POLL_S)
            for fold, process in list(running.items()):
                if not process.is_alive():
                    process.join()
                    del running[fold]
                    _receive(messages, on_event, outcomes, wait_s=_POLL_S)  # its last words may still be queued
                    outcomes.setdefault(fold, ("failed", f"its process ended with exit code {process.exitcode} without "
                                                         "reporting (killed, or out of memory?)"))
    messages.close()
    _raise_for(outcomes, stopped=stop.requested)


def _failed(outcomes: dict) -> bool:
    return any(kind == "failed" for kind, _ in outcomes.values())


def _start(context, train: Callable[..., Any], job: FoldJob, train_options: dict, messages) -> mp.Process:
    process = context.Process(target=_fold_main, args=(train, job, train_options, messages), name=f"autoseg-fold-{job.fold}")
    with children_ignore_sigint():  # the fold ignores Ctrl-C until it has left the terminal's process group
        process.start()
    log.info("fold %s: started (process %d, %s, %d CPU threads)%s", job.fold, process.pid, job.device, job.threads,
             ", resuming" if job.resume else "")
    return process


def _receive(messages, on_event: EventCallback | None, outcomes: dict, wait_s: float) -> None:
    """Handle what the folds sent: log records, progress events and outcomes."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            message = messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return
        if isinstance(message, logging.LogRecord):
            logging.getLogger(message.name).handle(message)
        elif message[0] == "event":
            _, kind, info = message
            if on_event is not None:
                on_event(kind, info)
        else:
            kind, fold, detail = message
            outcomes[fold] = (kind, detail)


def _raise_for(outcomes: dict, stopped: bool) -> None:
    failures = {fold: detail for fold, (kind, detail) in outcomes.items() if kind == "failed"}
    if failures:
        lines = "".join(f"\n  - fold {fold}: {detail}" for fold, detail in sorted(failures.items()))
        raise errors.AutosegError(f"{len(failures)} fold(s) failed (the others are kept; re-run the same command to "
                                  f"continue):{lines}")
    if stopped or any(kind == "interrupted" for kind, _ in outcomes.values()):
        raise KeyboardInterrupt


# ---------------------------------------------------------------- the fold's process
def _fold_main(train: Callable[..., Any], job: FoldJob, train_options: dict, messages) -> None:
    """One fold's training, reporting to the parent through `messages`."""
    os.setsid()  # off the terminal's process group: stop signals come from the parent, once
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch

    from autoseg.trainers.distributed import managed_by_parent

    torch.set_num_threads(job.threads)
    _send_logs(messages, job.fold)
    _stop_when_orphaned()

    def on_event(kind: str, info: dict) -> None:
        messages.put(("event", kind, {**info, "fold": job.fold}))

    try:
        with managed_by_parent():
            train(fold=job.fold, resume=job.resume, on_event=on_event, **{**train_options, "device": job.device})
        messages.put(("finished", job.fold, None))
    except KeyboardInterrupt:
        messages.put(("interrupted", job.fold, None))
    except BaseException as exc:  # reported by the parent, with the other folds' outcomes
        messages.put(("failed", job.fold, f"{type(exc).__name__}: {exc}"))


def _send_logs(messages, fold: str) -> None:
    handler = logging.handlers.QueueHandler(messages)
    handler.setFormatter(logging.Formatter(f"fold {fold}: %(message)s"))
    logger = logging.getLogger("autoseg")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _stop_when_orphaned() -> None:
    """A fold whose parent died stops as if asked (saving its checkpoint) instead of training on alone."""
    parent = mp.parent_process()

    def watch() -> None:
        while parent is not None and parent.is_alive():
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="autoseg-parent-watch", daemon=True).start()


# ---------------------------------------------------------------- signals in the parent
class _PassOnStopSignals:
    """Ctrl-C or SIGTERM in the parent: start no more folds and pass the signal on to each running
    fold (a second one passes on too: the folds then abort without saving)."""

    def __init__(self, running: Callable[[], list[mp.Process]]):
        self.running, self.requested, self._previous = running, False, {}

    def __enter__(self) -> "_PassOnStopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame) -> None:
        if not self.requested:
            log.warning("%s received: stopping every fold after its current step (each saves a checkpoint)",
                        signal.Signals(signum).name)
        self.requested = True
        for process in self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)
