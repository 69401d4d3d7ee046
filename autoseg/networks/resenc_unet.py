"""Residual-encoder U-Net (`resenc_unet`): residual basic blocks in the encoder, plain decoder.

Stage 0 starts with a conv-norm-act stem that maps the input channels to features[0]; every stage
then has `blocks_per_stage` residual blocks, the first of which strides. The decoder has one conv
per stage, as in nnU-Net's residual encoder presets: the encoder carries the capacity, and a light
decoder keeps the high-resolution activation memory down.
"""
from __future__ import annotations

from torch import nn

from autoseg.config import NetworkPlan
from autoseg.networks.blocks import Chain, ConvNormAct, residual_stack
from autoseg.networks.unet import UNet
from autoseg.registry import NETWORKS

DECODER_CONVS_PER_STAGE = 1


def _encoder_stage(plan: NetworkPlan, stage: int) -> Chain:
    blocks = residual_stack(
        plan.ndim,
        plan.features[max(stage - 1, 0)],
        plan.features[stage],
        plan.kernel_sizes[stage],
        plan.strides[stage],
        plan.blocks_per_stage,
    )
    if stage > 0:
        return blocks
    stem = ConvNormAct(plan.ndim, plan.in_channels, plan.features[0], plan.kernel_sizes[0], plan.strides[0])
    return Chain(stem, *blocks)


@NETWORKS.register("resenc_unet")
def build_resenc_unet(plan: NetworkPlan) -> UNet:
    encoder = nn.ModuleList(_encoder_stage(plan, s) for s in range(plan.num_stages))
    return UNet(plan, encoder, decoder_convs=DECODER_CONVS_PER_STAGE)
