"""The cascade's second stage, 3d_cascade_fullres, planned whenever 3d_lowres is (nnU-Net's design).

It is 3d_fullres with more input channels: the image's, then one per foreground class holding
3d_lowres's prediction (one-hot, resampled to the full-resolution grid; autoseg/cascade.py). The
extra channels change only the first convolution, so patch, batch and memory stay 3d_fullres's.
"""
from __future__ import annotations

from dataclasses import replace

from autoseg.config import ConfigPlan

CASCADE = "3d_cascade_fullres"
FIRST_STAGE = "3d_lowres"


def cascade_config(fullres: ConfigPlan) -> ConfigPlan:
    """3d_fullres taking, besides the image, one channel per foreground class of the first stage."""
    foreground = fullres.network.num_classes - 1
    network = replace(fullres.network, in_channels=fullres.network.in_channels + foreground)
    return replace(fullres, name=CASCADE, network=network, previous_stage=FIRST_STAGE)
