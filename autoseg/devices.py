"""Device and precision choice, shared by training and prediction.

Precision is a name: "fp32", "bf16" or "fp16" (PRECISIONS maps it to the autocast dtype).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from autoseg.errors import ConfigError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = ("auto", *PRECISIONS)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto: the CUDA GPU when there is one, else the CPU; otherwise check that `name` exists."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}': only {torch.cuda.device_count()} CUDA device(s) present; use cuda:0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' was asked for but MPS is not available; use --device cpu")
    return device


def resolve_precision(precision: str, device: torch.device, inference: bool = False) -> str:
    """auto: bf16 on CUDA GPUs that support it (fp16 on older ones), fp32 elsewhere; for
    inference also bf16 on CPUs that compute it natively (about twice as fast there)."""
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISION_NAMES)}")
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if inference and cpu_has_native_bf16() else "fp32"
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 is not supported on CPU; use fp32 or bf16")
    return precision


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX) for oneDNN to use.

    Elsewhere bf16 is emulated and slower than fp32. Read from /proc/cpuinfo (Linux); False
    where that is not available.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
