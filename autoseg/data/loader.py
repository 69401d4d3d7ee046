"""Endless training batches, produced in-process or by worker processes.

Each producer (the main process when num_workers == 0, else each worker) runs a `BatchPipeline`:
sampler then transforms, with its own seeds derived from (seed, producer index). Batches are taken
from the workers round-robin, so the stream depends only on (seed, num_workers) - and num_workers
0 and 1 give the same stream.

Failures never hang the trainer: a worker sends its exception, which the main process raises as a
PreprocessingError naming the cases; a worker that dies silently (killed by a signal, out of memory)
is noticed by a liveness check between short waits; a worker that stops producing is reported
after `stall_timeout_s`.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import random
import signal
import time
import traceback
from typing import Any, Callable, Iterator

import numpy as np

from autoseg.data.sampling import PatchSampler
from autoseg.errors import AutosegError, ConfigError, PreprocessingError

logger = logging.getLogger(__name__)

Transforms = Callable[..., dict]
_POLL_S = 0.2  # how often a waiting main process checks that the worker is still alive


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


def _worker_main(pipeline: BatchPipeline, out: mp.Queue, worker_index: int) -> None:
    """Produce batches forever; on failure send the message and stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business; it closes us
    # No cancel_join_thread(): returning after an error must flush that message to the pipe. The
    # batch loop never returns; close() ends it with SIGTERM, which skips the flush.
    while True:
        try:
            batch = pipeline.next_batch()
        except Exception as e:
            message = f"data loader worker {worker_index}: {e}"
            if not isinstance(e, AutosegError):  # an unexpected bug: the traceback is the useful part
                message += "\nworker traceback:\n" + traceback.format_exc()
            out.put(("error", message))
            return
        out.put(("batch", batch))


def _to_torch(batch: dict) -> dict:
    import torch  # here, not at module level: spawned workers import this module and never need torch

    return {
        "data": torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32)),
        "target": [torch.from_numpy(np.ascontiguousarray(t)) for t in batch["target"]],
        "case_ids": list(batch["case_ids"]),
    }


class BatchLoader:
    """Iterator of {"data": FloatTensor (B, C, *P), "target": [int16 Tensor (B, 1, *P_s)], "case_ids"}.

    Endless; use as a context manager (or call close()) to stop the workers.
    """

    def __init__(self, sampler: PatchSampler, transforms: Transforms | None, num_workers: int = 0, seed: int = 0,
                 num_cached: int = 2, start_method: str = "spawn", stall_timeout_s: float = 600.0):
        if num_workers < 0 or num_cached < 1:
            raise ConfigError(f"num_workers {num_workers} / num_cached {num_cached}: "
                              "expected num_workers >= 0 and num_cached >= 1")
        self.stall_timeout_s = stall_timeout_s
        self._failure: PreprocessingError | None = None
        self._closed = False
        self._next_worker = 0
        self._workers: list[mp.Process] = []
        self._queues: list[mp.Queue] = []
        if num_workers == 0:
            self._local = BatchPipeline(sampler, transforms, seed, 0)
            return
        self._local = None
        context = mp.get_context(start_method)
        for index in range(num_workers):
            out = context.Queue(maxsize=num_cached)
            pipeline = BatchPipeline(sampler, transforms, seed, index)
            worker = context.Process(target=_worker_main, args=(pipeline, out, index),
                                     name=f"autoseg-data-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
            self._queues.append(out)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise StopIteration
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
        worker, source = self._workers[index], self._queues[index]
        waited_since = time.monotonic()
        while True:
            try:
                kind, payload = source.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not worker.is_alive():
                    kind, payload = self._last_words(index)
                    break
                if time.monotonic() - waited_since > self.stall_timeout_s:
                    raise PreprocessingError(
                        f"data loader worker {index} produced no batch in {self.stall_timeout_s:.0f} s while still "
                        "running; check the disk and the preprocessed files") from None
        if kind == "error":
            raise PreprocessingError(payload)
        return payload

    def _last_words(self, index: int) -> tuple[str, Any]:
        """What a dead worker sent before exiting, or an error describing its death."""
        try:
            return self._queues[index].get(timeout=_POLL_S)
        except queue.Empty:
            code = self._workers[index].exitcode
            killed = code is not None and code < 0
            cause = f"was killed by signal {signal.Signals(-code).name}" if killed else f"exited with code {code}"
            return "error", (f"data loader worker {index} {cause} without reporting an error "
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
        for source in self._queues:
            source.close()
            source.cancel_join_thread()

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
    reproducible seed and a queue of at most `num_cached` batches. 'spawn' is the default start
    method because forking a process that has initialised CUDA is unsafe.
    """
    return BatchLoader(sampler, transforms, num_workers, seed, num_cached, start_method, stall_timeout_s)
