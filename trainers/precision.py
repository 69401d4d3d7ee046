"""Device and mixed-precision resolution: one autocast + scaler code path, switched by flags."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from autoseg.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def autocast_enabled(self) -> bool:
        return self.autocast_dtype is not None

    @property
    def scaler_enabled(self) -> bool:
        """Only fp16 needs loss scaling; bf16 has fp32's exponent range."""
        return self.autocast_dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.scaler_enabled)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device '{name}' is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu")
    return device


def resolve_precision(precision: str, device_name: str) -> Precision:
    """auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA, fp32 elsewhere."""
    device = resolve_device(device_name)
    if precision == "auto":
        if device.type != "cuda":
            return Precision(device, None)
        return Precision(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ConfigError(f"--precision '{precision}' is unknown; use auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is not supported on CPU; use fp32 or bf16")
    return Precision(device, dtypes[precision])
