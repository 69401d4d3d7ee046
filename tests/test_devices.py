"""Precision `auto`: what it resolves to per device and purpose."""
import pytest
import torch

from autoseg import devices
from autoseg.errors import ConfigError


def test_auto_is_fp32_for_cpu_training_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_for_cpu_inference_uses_bf16_only_where_the_cpu_computes_it(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.resolve_precision("auto", torch.device("cpu"), inference=True) == expected


def test_explicit_precision_wins_and_unknown_or_unsupported_ones_are_clear_errors():
    assert devices.resolve_precision("fp32", torch.device("cpu"), inference=True) == "fp32"
    with pytest.raises(ConfigError, match="unknown"):
        devices.resolve_precision("fp8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU"):
        devices.resolve_precision("fp16", torch.device("cpu"))


def test_cpu_bf16_detection_agrees_with_proc_cpuinfo():
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    expected = ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()
    assert devices.cpu_has_native_bf16() == expected
