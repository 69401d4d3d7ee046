"""Data-parallel training across processes: the thin layer the trainer calls for it.

`Single` is one process: every hook is the identity, so a run without torchrun takes exactly the
path it always took. `Group` is one rank of a torch.distributed group, joined when torchrun started
the process (RANK, WORLD_SIZE, LOCAL_RANK in the environment; `autoseg train --nproc N` starts
torchrun itself). It

- splits the plan's batch (the global batch) evenly over the ranks and wraps the network in
  DistributedDataParallel, which averages gradients; the loss sums its batch-Dice terms over all
  ranks first, so a step equals one process's step on the whole batch;
- gives each rank its own seeded sample stream; with --deterministic every rank instead draws the
  single-process batch and keeps its rows, so results do not depend on the number of ranks (each
  rank then prepares the whole batch: more loading work for reproducibility);
- decides on rank 0 what depends on a clock (time budget, learning rate), and stops every rank at
  the same step when any rank is asked to stop: one small all-reduce per step;
- leaves the run folder to rank 0: the others wait for its solo work (setup, the checkpoint to
  resume from) and receive its result, or its error.

Collectives time out after COLLECTIVE_TIMEOUT_S, so a hung rank ends the job instead of freezing
it; a rank that dies is noticed at once (closed connections), and torchrun then stops the others.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from autoseg.errors import ConfigError, DistributedError

log = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 30 * 60  # also bounds how long the other ranks wait for rank 0's preprocessing
REPEAT_SIGNAL_GRACE_S = 2.0  # a scheduler signals every process and torchrun forwards it: one request, not two
T = TypeVar("T")


class Single:
    """One process (or one fold process of `--parallel`): every hook is the identity."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, signal_grace_s: float = 0.0):
        self.signal_grace_s = signal_grace_s  # 0: a second stop signal aborts at once

    def device(self, name: str) -> str:
        return name

    def check_batch(self, batch_size: int, from_plan: bool) -> None:
        return None

    def loader_batch(self, batch_size: int, deterministic: bool) -> int:
        return batch_size

    def stream_key(self, deterministic: bool) -> tuple[int, ...]:
        return ()

    def workers(self, requested: int) -> int:
        return requested

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def batches(self, loader, deterministic: bool):
        return loader

    def global_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def agree(self, stop: bool, *leader: float) -> tuple:
        """(stop, *leader): the stop request and rank 0's values, the same on every rank."""
        return (stop, *leader)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def mean(self, value: float) -> float:
        return value

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        yield

    def main_only(self, context: contextlib.AbstractContextManager) -> contextlib.AbstractContextManager:
        return context

    def on_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def record(self) -> dict[str, Any]:
        return {"world_size": 1}


class Group(Single):
    """One rank of a data-parallel group (see the module docstring)."""

    def __init__(self, device_type: str):
        super().__init__(REPEAT_SIGNAL_GRACE_S)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world_size)))
        self.backend = dist.get_backend()
        self._device = torch.device("cuda", self.local_rank) if device_type == "cuda" else torch.device("cpu")

    def device(self, name: str) -> str:
        """Each rank trains on the GPU of its local rank ('auto' and 'cuda' alike)."""
        return str(self._device) if self._device.type == "cuda" else name

    def check_batch(self, batch_size: int, from_plan: bool) -> None:
        check_batch_divides(batch_size, self.world_size, from_plan)

    def loader_batch(self, batch_size: int, deterministic: bool) -> int:
        return batch_size if deterministic else batch_size // self.world_size

    def stream_key(self, deterministic: bool) -> tuple[int, ...]:
        return () if deterministic else (self.world_size, self.rank)

    def workers(self, requested: int) -> int:
        """Loader workers per rank, bounded so the ranks of this machine and their workers fit its cores."""
        bound = max(1, usable_cores() // self.local_world_size)
        if requested > bound:
            log.info("%d data loader workers per rank (of %d asked): %d ranks share %d cores here",
                     bound, requested, self.local_world_size, usable_cores())
        return min(requested, bound)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self._device.index] if self._device.type == "cuda" else None)

    def batches(self, loader, deterministic: bool):
        return RankShare(loader, self.rank, self.world_size) if deterministic else loader

    def global_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(tensor, self)

    def agree(self, stop: bool, *leader: float) -> tuple:
        """Any rank's stop request and rank 0's values, for every rank: one all-reduce (max)."""
        mine = [float(stop), *(leader if self.is_main else [-math.inf] * len(leader))]
        values = self.all_reduce(torch.tensor(mine, dtype=torch.float64), dist.ReduceOp.MAX, "agreeing on the next step")
        return (bool(values[0]), *values[1:].tolist())

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce(tensor.clone(), dist.ReduceOp.SUM, "summing validation results")

    def mean(self, value: float) -> float:
        total = self.all_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.SUM, "averaging over ranks")
        return float(total[0]) / self.world_size

    def all_reduce(self, tensor: torch.Tensor, op, doing: str) -> torch.Tensor:
        """`tensor` reduced over the ranks (on the backend's device), returned where it came from."""
        moved = tensor.to(self._device)
        with self._contact(doing):
            dist.all_reduce(moved, op=op)
        return moved.to(tensor.device)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may write what all read: splits, plan, preprocessed data);
        the others run it once rank 0 is through, or stop with rank 0's error."""
        if not self.is_main:
            self._outcome(self._broadcast(None, "waiting for rank 0's setup"))
            yield
            return
        try:
            yield
        except BaseException as exc:
            self._report_failure(exc)
            raise
        self._broadcast(("ok", None), "ending the setup")

    def main_only(self, context: contextlib.AbstractContextManager) -> contextlib.AbstractContextManager:
        return context if self.is_main else contextlib.nullcontext()

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() computed by rank 0 alone while the others wait; every rank gets its result (or its error)."""
        if not self.is_main:
            return self._outcome(self._broadcast(None, "waiting for rank 0"))
        try:
            result = fn()
        except BaseException as exc:
            self._report_failure(exc)
            raise
        return self._broadcast(("ok", result), "sending rank 0's result")[1]

    def record(self) -> dict[str, Any]:
        nodes = max(1, self.world_size // max(1, self.local_world_size))
        return {"world_size": self.world_size, "nodes": nodes, "backend": self.backend}

    def _broadcast(self, value: Any, doing: str) -> Any:
        box = [value]
        with self._contact(doing):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def _report_failure(self, exc: BaseException) -> None:
        with contextlib.suppress(DistributedError):  # the others may be gone already; rank 0's own error matters
            self._broadcast(("error", f"{type(exc).__name__}: {exc}"), "reporting rank 0's error")

    def _outcome(self, outcome: tuple[str, Any]) -> Any:
        kind, value = outcome
        if kind == "error":
            raise DistributedError(f"rank 0 failed ({value}); every rank stops with it")
        return value

    @contextlib.contextmanager
    def _contact(self, doing: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:  # gloo's closed connections and timeouts, NCCL's DistBackendError
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DistributedError(
                f"lost contact with the other ranks while {doing} ({first_line}). Another rank "
                f"probably failed or was stopped: its error is in the job's output. A rank that stops answering is "
                f"given up after {COLLECTIVE_TIMEOUT_S / 60:g} minutes") from exc


class RankShare:
    """This rank's rows of every batch of `loader` (which yields the global batch)."""

    def __init__(self, loader, rank: int, world_size: int):
        self.loader, self.rank, self.world_size = loader, rank, world_size

    def reseed(self, seed: int) -> None:
        self.loader.reseed(seed)

    def __iter__(self) -> "RankShare":
        return self

    def __next__(self) -> dict:
        batch = next(self.loader)
        share = batch["data"].shape[0] // self.world_size
        rows = slice(self.rank * share, (self.rank + 1) * share)
        return {"data": batch["data"][rows], "target": [t[rows] for t in batch["target"]], "case_ids": batch["case_ids"][rows]}


class _SumOverRanks(torch.autograd.Function):
    """Forward: `local` summed over the ranks. Backward: the gradient times the number of ranks.

    Every rank computes the same loss from the same sums, so the gradient reaching the sums is the
    same on all; DistributedDataParallel then averages parameter gradients over the ranks, and the
    factor turns that average back into the full batch's gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.world_size = group.world_size
        total = local.detach().clone()
        with group._contact("summing the loss's Dice terms"):
            dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.world_size, None


# ---------------------------------------------------------------- joining and leaving
_active: Single | None = None  # the group (or managed process) this process trains in


@contextlib.contextmanager
def joined(device: str = "auto") -> Iterator[Single]:
    """The group this process trains in: under torchrun (WORLD_SIZE > 1) joined here and left at the
    end, or the one an outer `joined` holds (cross-validation trains its folds in one group), else Single."""
    global _active
    if _active is not None:
        yield _active
        return
    if launched_ranks() <= 1:
        yield Single()
        return
    _active = _join(device)
    try:
        yield _active
    finally:
        _leave()


def launched_ranks() -> int:
    """WORLD_SIZE as torchrun (or another launcher of torch.distributed) set it; 1 when not launched so."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} in the environment: expected a number of ranks, as "
                          "torchrun sets it; unset it to train in one process") from None


@contextlib.contextmanager
def managed_by_parent() -> Iterator[None]:
    """Inside, training takes a repeated stop signal within REPEAT_SIGNAL_GRACE_S as the same request:
    a fold process of `--parallel` gets it from its parent and, under a scheduler, directly too."""
    global _active
    _active = Single(REPEAT_SIGNAL_GRACE_S)
    try:
        yield
    finally:
        _active = None


def _join(device_name: str) -> Group:
    from autoseg.devices import resolve_device

    device, ranks = resolve_device(device_name), launched_ranks()
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device_name}: data-parallel training runs on CPUs (gloo) or CUDA GPUs (NCCL), "
                          f"not on {device.type}; pass --device cpu or cuda")
    if device.type == "cuda" and device.index is not None:
        raise ConfigError(f"--device {device_name} with {ranks} ranks: each rank trains on the GPU of its local rank; "
                          "pass --device cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start at most that many ranks per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
                                device_id=torch.device("cuda", local_rank) if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"could not join the process group ({backend}, rank {os.environ.get('RANK')} of {ranks}): "
                               f"{exc}. Start ranks with torchrun, which sets RANK, WORLD_SIZE, MASTER_ADDR and "
                               "MASTER_PORT") from exc
    group = Group(device.type)
    if not group.is_main:
        logging.getLogger("autoseg").setLevel(logging.WARNING)  # rank 0 reports progress; the others only warn
    return group


def _leave() -> None:
    global _active
    _active = None
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- checks shared with the launcher
def check_batch_divides(batch_size: int, ranks: int, from_plan: bool = False) -> None:
    """The plan's batch is the global batch: every rank trains on an equal share of it."""
    if batch_size % ranks == 0:
        return
    lower, upper = batch_size // ranks * ranks, (batch_size // ranks + 1) * ranks
    found = f"the plan's batch size {batch_size}" if from_plan else f"--batch-size {batch_size}"
    sizes = f"{lower} or {upper}" if lower else str(upper)
    raise ConfigError(f"{found} does not divide over {ranks} ranks (the batch is global; each rank trains on an "
                      f"equal share). Pass --batch-size {sizes} (a multiple of {ranks}), or a number of ranks that "
                      f"divides {batch_size}")


def usable_cores() -> int:
    """The cores this process may run on (a scheduler's CPU set, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
