"""How long one training step of a network takes on this machine: measured, then cached.

The budget-aware planner asks this for every candidate network. A measurement is a few real
forward/backward/SGD steps on random data (the first one untimed: it allocates and picks kernels),
so it includes what arithmetic alone cannot predict: the CPU's vector units, oneDNN's kernels,
bf16 support, memory bandwidth. Results are cached in a JSON file under a key naming the machine,
so re-planning on the same machine is instant and a plan made elsewhere is re-measured.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from autoseg.atomic import atomic_write
from autoseg.config import NetworkPlan
from autoseg.devices import PRECISIONS

log = logging.getLogger(__name__)

WARMUP_STEPS = 2
TIMED_STEPS = 3
MIN_TIMED_S = 1.0


@dataclass(frozen=True)
class StepCandidate:
    """One network, patch and batch to time."""

    network: NetworkPlan
    patch_size: tuple[int, ...]
    batch_size: int

    def key(self, device: str, precision: str) -> str:
        n = self.network
        return (f"{n.name}|f{'-'.join(map(str, n.features))}|k{n.kernel_sizes}|s{n.strides}|b{n.blocks_per_stage}"
                f"|c{n.in_channels}->{n.num_classes}|p{'x'.join(map(str, self.patch_size))}|B{self.batch_size}"
                f"|{device}|{precision}")


def machine_key(device: torch.device) -> str:
    """What makes a timing valid: processor, threads, torch build and accelerator."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return f"{name}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_step_seconds(candidate: StepCandidate, device: torch.device, precision: str) -> float:
    """Seconds per training step (forward, cross-entropy over every deep-supervision output,
    backward, SGD): the fastest of at least TIMED_STEPS steps (and MIN_TIMED_S seconds) after
    WARMUP_STEPS untimed ones. The fastest, because other work on the machine only ever adds time.
    On the CPU a step counts its threads' CPU time per thread when that is less than the wall time."""
    from autoseg.networks import build_network

    torch.manual_seed(0)
    model = build_network(candidate.network).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    data = torch.randn((candidate.batch_size, candidate.network.in_channels, *candidate.patch_size), device=device)
    dtype = PRECISIONS[precision]

    def step() -> float:
        _sync(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(data)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        target = [torch.zeros((o.shape[0], *o.shape[2:]), dtype=torch.long, device=device) for o in outputs]
        sum(F.cross_entropy(o.float(), t) for o, t in zip(outputs, target)).backward()
        optimizer.step()
        _sync(device)
        wall = time.perf_counter() - started
        if device.type != "cpu":
            return wall
        # On a busy CPU the wall time grows with the other programs' load; the compute threads'
        # CPU time per thread does not (they spin while waiting, so it equals the wall time of an idle machine).
        return min(wall, (time.process_time() - cpu_started) / max(torch.get_num_threads(), 1))

    for _ in range(WARMUP_STEPS):  # allocation and kernel choice happen here
        step()
    times = [step() for _ in range(TIMED_STEPS)]
    while sum(times) < MIN_TIMED_S and len(times) < 10 * TIMED_STEPS:
        times.append(step())
    return min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Measured step seconds per candidate, read from and written to a per-machine JSON cache."""

    def __init__(self, cache_file: Path | None, device: torch.device, precision: str):
        self.cache_file, self.device, self.precision = cache_file, device, precision
        self.machine = machine_key(device)
        self._cache = self._read()

    def __call__(self, candidate: StepCandidate) -> float:
        key = candidate.key(str(self.device), self.precision)
        mine = self._cache.setdefault(self.machine, {})
        if key not in mine:
            mine[key] = round(measure_step_seconds(candidate, self.device, self.precision), 4)
            log.info("measured %.3f s per step: patch %s, batch %d, features %s (%s)", mine[key],
                     "x".join(map(str, candidate.patch_size)), candidate.batch_size, candidate.network.features[0], self.precision)
            self._write()
        return mine[key]

    def _read(self) -> dict:
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable step-time cache; measuring again", self.cache_file)
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        if self.cache_file is None:
            return
        with atomic_write(self.cache_file) as tmp:
            tmp.write_text(json.dumps(self._cache, indent=1, sort_keys=True) + "\n")
