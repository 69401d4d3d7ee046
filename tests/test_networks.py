"""Contract tests over every registered network, in 2D and 3D, plus the memory accounting."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from autoseg.config import NetworkPlan
from autoseg.errors import PlanError, RegistryError
from autoseg.networks import (
    CUDA_OVERHEAD_BYTES,
    build_network,
    count_parameters,
    deep_supervision_scales,
    estimate_training_memory_bytes,
)
from autoseg.registry import NETWORKS

PLAN_2D = NetworkPlan(
    name="unet", ndim=2, in_channels=2, num_classes=3, features=(4, 8, 16, 16),
    kernel_sizes=((3, 3),) * 4, strides=((1, 1), (2, 2), (2, 2), (2, 2)),
)
# anisotropic: the first downsampling keeps z, as for thick-slice CT
PLAN_3D = NetworkPlan(
    name="unet", ndim=3, in_channels=1, num_classes=2, features=(4, 8, 16, 16),
    kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
)
PATCHES = {2: (16, 16), 3: (8, 16, 16)}
CASES = [(name, plan) for name in NETWORKS.names() for plan in (PLAN_2D, PLAN_3D)]
CASE_IDS = [f"{name}-{plan.ndim}d" for name, plan in CASES]


def _plan(name: str, base: NetworkPlan, **changes) -> NetworkPlan:
    return dataclasses.replace(base, name=name, **changes)


def _input(plan: NetworkPlan, batch: int = 2, patch: tuple[int, ...] | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, plan.in_channels, *(patch or PATCHES[plan.ndim]))


def _loss(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy against a fixed label, summed over the deep-supervision outputs."""
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return sum(F.cross_entropy(o, torch.ones(o.shape[:1] + o.shape[2:], dtype=torch.long)) for o in outputs)


def test_both_networks_are_registered():
    assert {"unet", "resenc_unet"} <= set(NETWORKS.names())


@pytest.mark.parametrize("name,base", CASES, ids=CASE_IDS)
def test_deep_supervision_outputs_and_gradients(name, base):
    plan = _plan(name, base)
    model = build_network(plan)
    x = _input(plan)
    outputs = model(x)
    scales = deep_supervision_scales(plan)
    assert isinstance(outputs, list) and len(outputs) == len(scales) == plan.num_stages - 2
    for output, scale in zip(outputs, scales):
        expected = tuple(round(n * s) for n, s in zip(x.shape[2:], scale))
        assert tuple(output.shape) == (2, plan.num_classes, *expected)
    _loss(outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,base", CASES, ids=CASE_IDS)
def test_single_output_without_deep_supervision(name, base):
    model = build_network(_plan(name, base))
    model.set_deep_supervision(False)
    x = _input(base, batch=1)
    logits = model(x)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (1, base.num_classes, *x.shape[2:])
    assert torch.isfinite(logits).all()
    model.set_deep_supervision(True)
    assert isinstance(model(x), list)


def test_plan_deep_supervision_flag_sets_the_default_and_keeps_the_weights():
    with_ds = build_network(PLAN_2D)
    without_ds = build_network(dataclasses.replace(PLAN_2D, deep_supervision=False))
    assert isinstance(without_ds(_input(PLAN_2D)), torch.Tensor)
    # a checkpoint trained with deep supervision loads into an inference network
    assert with_ds.state_dict().keys() == without_ds.state_dict().keys()


def test_anisotropic_strides_keep_the_z_resolution():
    assert deep_supervision_scales(PLAN_3D) == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5)]
    outputs = build_network(PLAN_3D)(_input(PLAN_3D, batch=1))
    assert outputs[1].shape[2:] == (8, 8, 8)


@pytest.mark.parametrize("name", NETWORKS.names())
def test_count_parameters_matches_the_module(name):
    plan = _plan(name, PLAN_3D, blocks_per_stage=3)
    assert count_parameters(plan) == sum(p.numel() for p in build_network(plan).parameters())


def test_convolutions_use_kaiming_init_with_zero_bias():
    model = build_network(_plan("unet", PLAN_3D, features=(4, 8, 16, 32)))
    conv = model.encoder[3][1].conv  # 32 -> 32 channels, 3x3x3: fan_in 864, ~27k weights
    expected_std = math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(conv.weight[0].numel())
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            assert torch.count_nonzero(module.bias) == 0


def _saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward, parameters excluded."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model(x))
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("name,base", CASES, ids=CASE_IDS)
def test_memory_estimate_matches_saved_tensors(name, base, monkeypatch):
    """The estimate models the textbook chain GPUs run; CPU training's fused norm keeps less."""
    from autoseg.networks import blocks

    plan = _plan(name, base)
    patch = PATCHES[plan.ndim]
    estimate = estimate_training_memory_bytes(plan, patch, batch_size=2, bytes_per_element=4)
    activations = estimate - CUDA_OVERHEAD_BYTES - 12 * count_parameters(plan)
    fused = _saved_activation_bytes(build_network(plan), _input(plan, batch=2, patch=patch))
    monkeypatch.setattr(blocks, "FUSED_NORM_ACT_ON_CPU", False)
    textbook = _saved_activation_bytes(build_network(plan), _input(plan, batch=2, patch=patch))
    assert 0.8 < activations / textbook < 1.25  # the accounting is within ~1% on CPU
    assert fused < 0.85 * textbook


@pytest.mark.parametrize("name,base", CASES, ids=CASE_IDS)
def test_memory_estimate_grows_with_patch_and_batch(name, base):
    plan = _plan(name, base)
    patch = PATCHES[plan.ndim]
    bigger = tuple(2 * n for n in patch)
    small = estimate_training_memory_bytes(plan, patch, batch_size=1)
    assert small > CUDA_OVERHEAD_BYTES
    assert estimate_training_memory_bytes(plan, bigger, batch_size=1) > small
    assert estimate_training_memory_bytes(plan, patch, batch_size=2) > small
    fp32 = estimate_training_memory_bytes(plan, patch, batch_size=1, bytes_per_element=4)
    assert fp32 > small


def test_unknown_network_name_suggests_the_closest():
    with pytest.raises(RegistryError, match="Did you mean 'unet'"):
        build_network(_plan("unte", PLAN_2D))


def test_invalid_plan_names_the_field():
    with pytest.raises(PlanError, match=r"strides\[0\]"):
        build_network(_plan("unet", PLAN_2D, strides=((2, 2), (2, 2), (2, 2), (2, 2))))
    with pytest.raises(PlanError, match="kernel_sizes"):
        build_network(_plan("unet", PLAN_2D, kernel_sizes=((3, 3, 3),) * 4))
    with pytest.raises(PlanError, match="one entry per stage"):
        build_network(_plan("unet", PLAN_2D, features=(4, 8)))


def test_patch_size_not_divisible_is_a_plan_error():
    with pytest.raises(PlanError, match=r"multiples of its total downsampling \(4, 8, 8\)"):
        estimate_training_memory_bytes(PLAN_3D, (8, 12, 16), batch_size=1)
    model = build_network(PLAN_3D)
    with pytest.raises(PlanError, match="network input"):
        model(torch.zeros(1, 1, 8, 12, 16))
    with pytest.raises(PlanError, match="in_channels"):
        model(torch.zeros(1, 3, 8, 16, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NETWORKS.names())
def test_estimate_brackets_the_measured_gpu_peak(name):
    """fp16 autocast training step: allocator peak within 2x of the estimate (without the fixed overhead)."""
    # large enough (~2 GB) that cuDNN workspaces do not dominate the allocator peak
    plan = _plan(name, PLAN_3D, features=(32, 64, 128, 256))
    patch, batch = (64, 128, 128), 2
    model = build_network(plan).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99)
    x = _input(plan, batch=batch, patch=patch).cuda()
    for _ in range(2):  # the second step includes the momentum buffers
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.float16):
            outputs = model(x)
            loss = sum(F.cross_entropy(o.float(), torch.ones_like(o[:, 0], dtype=torch.long)) for o in outputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() - x.numel() * 4
    estimate = estimate_training_memory_bytes(plan, patch, batch) - CUDA_OVERHEAD_BYTES
    assert 0.5 < estimate / peak < 2.0


@pytest.mark.parametrize("name,base", CASES, ids=CASE_IDS)
def test_channels_last_cpu_inference_matches_the_plain_forward(name, base):
    """CPU inference (channels-last, in-place norm) computes what the textbook forward computes."""
    from autoseg.networks.layout import is_channels_last, model_to_channels_last

    torch.manual_seed(0)
    plan = _plan(name, base, deep_supervision=False)
    net = build_network(plan).eval()
    x = _input(plan, batch=2, patch=PATCHES[plan.ndim])
    expected = net(x).detach()  # autograd on: the plain modules
    model_to_channels_last(net, plan.ndim)
    layout = torch.channels_last_3d if plan.ndim == 3 else torch.channels_last
    with torch.inference_mode():
        got = net(x.contiguous(memory_format=layout))
    assert is_channels_last(got)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
