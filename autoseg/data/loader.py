"""Endless training batches, produced in-process or by persistent worker processes.

Each producer (the main process when num_workers == 0, else each worker) runs a `BatchPipeline`:
sampler then transforms, with its own seeds derived from (seed, producer index). Batches are taken
from the workers round-robin, so the stream depends only on (seed, num_workers) - and num_workers
0 and 1 give the same stream.

Workers live as long as the loader. `reseed(s)` restarts the stream: afterwards the loader yields
exactly what a fresh loader with seed s would, without the seconds a fresh worker takes to start
(spawn, imports). Each reseed starts a new generation: the main process sends (generation, seed)
down every worker's control queue, workers tag each batch with the generation it belongs to, and
the main process drops batches of older generations.

Failures never hang the trainer: a worker sends its exception, which the main process raises as a
PreprocessingError naming the cases; a worker that dies silently (killed by a signal, out of memory)
is noticed by a liveness check between short waits; a worker that stops producing is reported
after `stall_timeout_s`. A worker whose parent died exits by itself.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import random
import signal
import threading
import time
import traceback
from typing import Any, Callable, Iterator

import numpy as np

from autoseg.data.sampling import PatchSampler
from autoseg.errors import AutosegError, ConfigError, PreprocessingError

logger = logging.getLogger(__name__)

Transforms = Callable[..., dict]
Message = tuple[str, int, Any]  # (kind "batch" | "error", generation, batch | error text)
_POLL_S = 0.2  # how often a waiting process checks that the other side is still alive


class BatchPipeline:
    """Sampler + transforms with private global random states.

    batchgenerators draws from np.random's global state (and, for some parameters, from Python's
    `random`); swapping our own states in around each batch makes the augmentation reproducible
    without disturbing anyone else's use of those generators.
    """

    def __init__(self, sampler: PatchSampler, transforms: Transforms | None, seed: int, producer_index: int):
        sampler_seed, augmentation_seed = np.random.SeedSequence([seed, producer_index]).generate_state(2)
        self.sampler = sampler.reseeded(int(sampler_seed))
        self.transforms = transforms
        self.numpy_state = np.random.RandomState(int(augmentation_seed)).get_state()
        self.python_state = random.Random(int(augmentation_seed)).getstate()

    def next_batch(self) -> dict:
        batch = self.sampler.sample_batch()  # raises PreprocessingError naming the case
        if self.transforms is None:
            return {**batch, "target": [batch["target"]]}
        outside_numpy, outside_python = np.random.get_state(), random.getstate()
        np.random.set_state(self.numpy_state)
        random.setstate(self.python_state)
        try:
            return self.transforms(**batch)
        except Exception as e:
            raise PreprocessingError(
                f"augmenting a batch of cases {batch['case_ids']} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            self.numpy_state, self.python_state = np.random.get_state(), random.getstate()
            np.random.set_state(outside_numpy)
            random.setstate(outside_python)


# ---------------------------------------------------------------- worker process side
def _worker_main(sampler: PatchSampler, transforms: Transforms | None, seed: int, worker_index: int,
                 out: mp.Queue, control: mp.Queue) -> None:
    """Produce batches of the newest generation forever; after a failure, wait for a reseed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business; it closes us
    # No cancel_join_thread() on `out` while the parent lives: an error message must reach the pipe.
    order: tuple[int, int] | None = (0, seed)
    while True:
        if order is not None:
            generation, pipeline = order[0], BatchPipeline(sampler, transforms, order[1], worker_index)
        kind, payload = _produce(pipeline, worker_index)
        order = _send(out, control, (kind, generation, payload))
        if order is None:  # delivered; a failed pipeline would only fail again, so wait for a new seed
            order = _newest_order(control, wait=kind == "error", out=out)


def _produce(pipeline: BatchPipeline, worker_index: int) -> tuple[str, Any]:
    try:
        return "batch", pipeline.next_batch()
    except Exception as e:
        message = f"data loader worker {worker_index}: {e}"
        if not isinstance(e, AutosegError):  # an unexpected bug: the traceback is the useful part
            message += "\nworker traceback:\n" + traceback.format_exc()
        return "error", message


def _send(out: mp.Queue, control: mp.Queue, message: Message) -> tuple[int, int] | None:
    """Queue `message`; None once queued, or a newer (generation, seed) that arrived while the queue
    was full - the message is then outdated and dropped."""
    while True:
        order = _newest_order(control, wait=False, out=out)
        if order is not None:
            return order
        try:
            out.put(message, timeout=_POLL_S)
            return None
        except queue.Full:
            _exit_if_orphaned(out)


def _newest_order(control: mp.Queue, wait: bool, out: mp.Queue) -> tuple[int, int] | None:
    """The last (generation, seed) sent so far (earlier ones are superseded); with `wait`, block
    until one arrives."""
    newest = None
    while True:
        try:
            newest = control.get(timeout=_POLL_S) if wait and newest is None else control.get_nowait()
        except queue.Empty:
            if newest is not None or not wait:
                return newest
            _exit_if_orphaned(out)


def _exit_if_orphaned(out: mp.Queue) -> None:
    parent = mp.parent_process()
    if parent is not None and not parent.is_alive():
        out.cancel_join_thread()  # nobody reads the pipe any more; flushing it would block forever
        raise SystemExit(0)


# ---------------------------------------------------------------- main process side
def _to_torch(batch: dict) -> dict:
    import torch  # here, not at module level: spawned workers import this module and never need torch

    return {
        "data": torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)),
        "target": [torch.from_numpy(np.ascontiguousarray(t)) for t in batch["target"]],
        "case_ids": list(batch["case_ids"]),
    }


@contextlib.contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Processes started inside ignore SIGINT from birth (exec keeps an ignored signal ignored).

    A terminal's Ctrl-C reaches the whole process group; a worker still importing its modules
    would die of it with a traceback instead of being stopped by its parent. A Ctrl-C arriving
    during these few milliseconds is lost; pressing it again works.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


class BatchLoader:
    """Iterator of {"data": FloatTensor (B, C, *P), "target": [int16 Tensor (B, 1, *P_s)], "case_ids"}.

    Endless; `reseed` restarts the stream; use as a context manager (or call close()) to stop the workers.
    """

    def __init__(self, sampler: PatchSampler, transforms: Transforms | None, num_workers: int = 0, seed: int = 0,
                 num_cached: int = 2, start_method: str = "spawn", stall_timeout_s: float = 600.0):
        if num_workers < 0 or num_cached < 1:
            raise ConfigError(f"num_workers {num_workers} / num_cached {num_cached}: "
                              "expected num_workers >= 0 and num_cached >= 1")
        self.stall_timeout_s = stall_timeout_s
        self._sampler, self._transforms = sampler, transforms
        self._seed, self._at_stream_start = seed, True
        self._generation = 0  # of the stream being read; workers tag their batches with theirs
        self._failure: PreprocessingError | None = None
        self._closed = False
        self._next_worker = 0
        self._workers: list[mp.Process] = []
        self._queues: list[mp.Queue] = []  # batches, worker -> main
        self._controls: list[mp.Queue] = []  # (generation, seed) orders, main -> worker
        self._local = BatchPipeline(sampler, transforms, seed, 0) if num_workers == 0 else None
        if num_workers > 0:
            self._start_workers(mp.get_context(start_method), num_workers, num_cached)

    def _start_workers(self, context: Any, num_workers: int, num_cached: int) -> None:
        for index in range(num_workers):
            out, control = context.Queue(maxsize=num_cached), context.Queue()
            worker = context.Process(target=_worker_main, name=f"autoseg-data-{index}", daemon=True,
                                     args=(self._sampler, self._transforms, self._seed, index, out, control))
            with children_ignore_sigint():  # stopping the workers is this process's job
                worker.start()
            self._workers.append(worker)
            self._queues.append(out)
            self._controls.append(control)

    def reseed(self, seed: int) -> None:
        """Restart the stream: from now on the batches are those of a fresh loader with this seed.

        Workers keep running. Cheap when nothing was read since the loader was (re)seeded with
        `seed`: the stream already stands at its start and the prefetched batches are kept.
        """
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError("reseed() on a closed BatchLoader; open a new one with make_loader()")
        if seed == self._seed and self._at_stream_start:
            return
        self._seed, self._at_stream_start, self._next_worker = seed, True, 0
        if self._local is not None:
            self._local = BatchPipeline(self._sampler, self._transforms, seed, 0)
            return
        self._discard_queued()  # before the order, so nothing of the new generation can be among them
        self._generation += 1
        for control in self._controls:
            control.put((self._generation, seed))

    def _discard_queued(self) -> None:
        """Empty the batch queues, so workers can queue the new stream at once (stragglers of the
        old one still arriving are dropped by _receive)."""
        for source in self._queues:
            with contextlib.suppress(queue.Empty):
                while True:
                    source.get_nowait()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StopIteration
        self._at_stream_start = False
        if self._local is not None:
            return _to_torch(self._local.next_batch())
        index = self._next_worker
        self._next_worker = (index + 1) % len(self._workers)
        try:
            return _to_torch(self._receive(index))
        except PreprocessingError as e:
            self._failure = e
            self.close()
            raise

    def _receive(self, index: int) -> Any:
        """Worker `index`'s next batch of the current generation."""
        while True:
            kind, generation, payload = self._next_message(index)
            if generation == self._generation:
                break
        if kind == "error":
            raise PreprocessingError(payload)
        return payload

    def _next_message(self, index: int) -> Message:
        worker, source = self._workers[index], self._queues[index]
        waited_since = time.monotonic()
        while True:
            try:
                return source.get(timeout=_POLL_S)
            except queue.Empty:
                if not worker.is_alive():
                    return self._last_words(index)
                if time.monotonic() - waited_since > self.stall_timeout_s:
                    raise PreprocessingError(
                        f"data loader worker {index} produced no batch in {self.stall_timeout_s:.0f} s while still "
                        "running; check the disk and the preprocessed files") from None

    def _last_words(self, index: int) -> Message:
        """What a dead worker sent before exiting, or an error describing its death."""
        try:
            return self._queues[index].get(timeout=_POLL_S)
        except queue.Empty:
            code = self._workers[index].exitcode
            killed = code is not None and code < 0
            cause = f"was killed by signal {signal.Signals(-code).name}" if killed else f"exited with code {code}"
            return "error", self._generation, (f"data loader worker {index} {cause} without reporting an error "
                                               "(often: out of memory; try fewer workers or a smaller batch)")

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)
        for channel in (*self._queues, *self._controls):
            channel.close()
            channel.cancel_join_thread()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the modules close() needs may be gone already
            pass


def make_loader(sampler: PatchSampler, transforms: Transforms | None, num_workers: int = 0, seed: int = 0,
                num_cached: int = 2, start_method: str = "spawn", stall_timeout_s: float = 600.0) -> BatchLoader:
    """Batches from `sampler` through `transforms` (None: raw patches, target as a one-item list).

    num_workers == 0 runs in-process; > 0 starts that many daemon worker processes, each with its own
    reproducible seed and a queue of at most `num_cached` batches; they run until close(), and
    `reseed` restarts the stream without restarting them. 'spawn' is the default start method
    because forking a process that has initialised CUDA is unsafe.
    """
    return BatchLoader(sampler, transforms, num_workers, seed, num_cached, start_method, stall_timeout_s)
