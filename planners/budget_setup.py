"""The machine side of a budget-aware plan: which device and precision will train, how much memory
it may use, and the step-time measurements (cached) that planners/time_budget.py decides from."""
from __future__ import annotations

import os
from pathlib import Path

from autoseg.config import Fingerprint, Plan
from autoseg.devices import cpu_has_native_bf16, resolve_device, resolve_precision
from autoseg.errors import PlanError
from autoseg.planners.step_time import StepTimer
from autoseg.planners.time_budget import BudgetRequest, fit_plan_to_budget

CPU_MEMORY_SHARE = 0.5  # of the machine's RAM for one training process (its loader workers need the rest)


def plan_for_budget(plan: Plan, fingerprint: Fingerprint, time_budget_s: float, device_name: str,
                    gpu_memory_gb: float, cache_file: Path | None, network: str = "unet") -> Plan:
    """`plan` re-decided for `time_budget_s` seconds of training on `device_name`."""
    if not time_budget_s or time_budget_s <= 0:
        raise PlanError(f"--time-budget must be a positive duration, got {time_budget_s!r}; e.g. 30m")
    device = resolve_device(device_name)
    precision = training_precision(device)
    memory_gb = gpu_memory_gb if device.type == "cuda" else cpu_memory_gb()
    timer = StepTimer(cache_file, device, precision)
    request = BudgetRequest(float(time_budget_s), device.type, timer.machine, precision, memory_gb)
    return fit_plan_to_budget(plan, fingerprint, request, timer, network)


def training_precision(device) -> str:
    """bf16 where the device computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else fp32
    (fp16 on CUDA GPUs without bf16): on such CPUs a bf16 training step takes about 60% of fp32's."""
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return resolve_precision("auto", device)


def cpu_memory_gb() -> float:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = 8 * 1024**3
    return round(CPU_MEMORY_SHARE * total / 1024**3, 1)
