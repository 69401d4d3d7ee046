"""The U-Net skeleton shared by every registered network, the plain `unet`, and `build_network`.

A network is an encoder (one module per stage, stage 0 at full resolution) plus a decoder of
`UpStage`s and 1x1 segmentation heads. With deep supervision the forward pass returns logits at
every decoder resolution except the lowest, highest resolution first; otherwise full-res logits.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from autoseg.config import NetworkPlan
from autoseg.errors import PlanError
from autoseg.networks.blocks import Spatial, UpStage, SegmentationHead, conv_stack, init_weights, numel
from autoseg.registry import NETWORKS


class UNet(nn.Module):
    """Encoder stages + decoder; `forward` returns a tensor, or a list of tensors with deep supervision."""

    def __init__(self, plan: NetworkPlan, encoder: nn.ModuleList, decoder_convs: int):
        super().__init__()
        self.in_channels = plan.in_channels
        self.downsampling = total_downsampling(plan)
        self.deep_supervision = plan.deep_supervision
        self.encoder = encoder
        # decoder[i] brings stage i+1 up to stage i; ordered highest resolution first, like the heads
        self.decoder = nn.ModuleList(
            UpStage(plan.ndim, plan.features[s + 1], plan.features[s], plan.kernel_sizes[s], plan.strides[s + 1], decoder_convs)
            for s in range(plan.num_stages - 1)
        )
        self.heads = nn.ModuleList(
            SegmentationHead(plan.ndim, plan.features[s], plan.num_classes) for s in range(num_outputs(plan))
        )
        self.apply(init_weights)

    def set_deep_supervision(self, enabled: bool) -> None:
        """Training uses every head; inference turns this off to get full-resolution logits only."""
        self.deep_supervision = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()  # the bottleneck
        logits = []  # lowest resolution first while decoding
        for s in reversed(range(len(self.decoder))):
            x = self.decoder[s](x, skips[s])
            if s < len(self.heads) and (self.deep_supervision or s == 0):
                logits.append(self.heads[s](x))
        return logits[::-1] if self.deep_supervision else logits[0]

    def activation_elements(self, input_spatial: Spatial) -> int:
        """Elements per sample kept for backward by a training forward pass (see blocks.py)."""
        total = numel(self.in_channels, input_spatial)  # the input, kept by the first conv
        spatials = []
        spatial = tuple(input_spatial)
        for stage in self.encoder:
            elements, spatial = stage.activation_elements(spatial)
            total += elements
            spatials.append(spatial)
        for s in reversed(range(len(self.decoder))):
            total += self.decoder[s].activation_elements(spatials[s + 1])[0]
        active_heads = self.heads if self.deep_supervision else self.heads[:1]
        total += sum(head.activation_elements(spatials[s])[0] for s, head in enumerate(active_heads))
        return total

    def _check_input(self, x: torch.Tensor) -> None:
        spatial = tuple(x.shape[2:])
        if x.ndim != len(self.downsampling) + 2 or x.shape[1] != self.in_channels:
            raise PlanError(
                f"network input has shape {tuple(x.shape)}; expected (batch, {self.in_channels}, "
                f"{len(self.downsampling)} spatial sizes). Check the plan's in_channels and ndim."
            )
        check_divisible(spatial, self.downsampling, "network input")


def num_outputs(plan: NetworkPlan) -> int:
    """Number of segmentation heads: one per decoder stage except the lowest (at least one)."""
    return max(1, plan.num_stages - 2)


def total_downsampling(plan: NetworkPlan) -> Spatial:
    """Product of all strides per axis; input sizes must be multiples of it."""
    return tuple(math.prod(stride[axis] for stride in plan.strides) for axis in range(plan.ndim))


def deep_supervision_scales(plan: NetworkPlan) -> list[tuple[float, ...]]:
    """Size of each deep-supervision output relative to the input, per axis (highest resolution first)."""
    scales, cumulative = [], [1] * plan.ndim
    for stride in plan.strides[: num_outputs(plan)]:
        cumulative = [c * s for c, s in zip(cumulative, stride)]
        scales.append(tuple(1.0 / c for c in cumulative))
    return scales


def check_divisible(spatial: Spatial, downsampling: Spatial, what: str) -> None:
    if len(spatial) != len(downsampling) or any(n % d for n, d in zip(spatial, downsampling)):
        raise PlanError(
            f"{what} has spatial size {tuple(spatial)}; the network needs {len(downsampling)} sizes that are "
            f"multiples of its total downsampling {tuple(downsampling)}. Pad the input or choose such a patch size."
        )


def validate_network_plan(plan: NetworkPlan) -> None:
    """Raise PlanError naming the first inconsistent NetworkPlan field."""
    problems = _plan_problems(plan)
    if problems:
        raise PlanError(f"network plan '{plan.name}' is invalid: " + "; ".join(problems) + ". Re-run `autoseg plan` or fix plan.json.")


def _plan_problems(plan: NetworkPlan) -> list[str]:
    problems = []
    if plan.ndim not in (2, 3):
        problems.append(f"ndim must be 2 or 3, found {plan.ndim}")
    if plan.in_channels < 1 or plan.num_classes < 1 or plan.blocks_per_stage < 1:
        problems.append("in_channels, num_classes and blocks_per_stage must be >= 1, found "
                        f"{plan.in_channels}, {plan.num_classes}, {plan.blocks_per_stage}")
    if plan.num_stages < 2 or not (len(plan.kernel_sizes) == len(plan.strides) == plan.num_stages):
        problems.append(f"features, kernel_sizes and strides need one entry per stage (>= 2 stages), found "
                        f"{plan.num_stages}, {len(plan.kernel_sizes)}, {len(plan.strides)}")
    if any(f < 1 for f in plan.features):
        problems.append(f"features must be positive, found {plan.features}")
    for key, per_stage in (("kernel_sizes", plan.kernel_sizes), ("strides", plan.strides)):
        if any(len(entry) != plan.ndim or min(entry) < 1 for entry in per_stage):
            problems.append(f"every {key} entry needs {plan.ndim} positive sizes, found {per_stage}")
    if any(k % 2 == 0 for entry in plan.kernel_sizes for k in entry):
        problems.append(f"kernel_sizes must be odd (padding k//2 keeps the size), found {plan.kernel_sizes}")
    if plan.strides and any(s != 1 for s in plan.strides[0]):
        problems.append(f"strides[0] must be all 1 (stage 0 works at full resolution), found {plan.strides[0]}")
    return problems


def build_network(plan: NetworkPlan) -> nn.Module:
    """Validate the plan and build the network registered under `plan.name` (RegistryError if unknown)."""
    builder: Callable[[NetworkPlan], nn.Module] = NETWORKS.get(plan.name)
    validate_network_plan(plan)
    return builder(plan)


@NETWORKS.register("unet")
def build_plain_unet(plan: NetworkPlan) -> UNet:
    """nnU-Net-style plain U-Net: stacks of conv-norm-act, strided conv downsampling."""
    encoder = nn.ModuleList(
        conv_stack(
            plan.ndim,
            plan.in_channels if s == 0 else plan.features[s - 1],
            plan.features[s],
            plan.kernel_sizes[s],
            plan.strides[s],
            plan.blocks_per_stage,
        )
        for s in range(plan.num_stages)
    )
    return UNet(plan, encoder, decoder_convs=plan.blocks_per_stage)
