"""Device and mixed-precision resolution: one autocast + scaler code path, switched by flags."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from autoseg.devices import PRECISIONS, resolve_device
from autoseg.devices import resolve_precision as resolve_precision_name


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


def resolve_precision(precision: str, device_name: str) -> Precision:
    """auto: bf16 on CUDA GPUs that support it, else fp16 on CUDA, fp32 elsewhere."""
    device = resolve_device(device_name)
    return Precision(device, PRECISIONS[resolve_precision_name(precision, device)])
