"""Image quality of a degraded image against its original: PSNR and SSIM from scikit-image.

SSIM uses the settings of Wang et al. 2004 (IEEE TIP 13(4)): an 11-tap Gaussian window of
sigma 1.5 and population (not sample) covariances. Both metrics need the data range explicitly
(scikit-image would otherwise guess it from the dtype, e.g. 65535 for a 12-bit image in a 16-bit
PNG); it is the original's value range, max - min, so 8-bit, 16-bit and float images compare alike.
"""
from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from autoseg.errors import ConfigError


def data_range_of(original: np.ndarray) -> float:
    """The original's value range; 1.0 for a constant image (any positive range then gives the same SSIM)."""
    span = float(np.max(original)) - float(np.min(original)) if np.size(original) else 0.0
    return span if span > 0 else 1.0


def psnr(original: np.ndarray, degraded: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical images."""
    reference, test = _pair(original, degraded)
    if np.array_equal(reference, test):
        return math.inf
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range or data_range_of(reference)))


def ssim(original: np.ndarray, degraded: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004 settings) of one channel (*spatial)."""
    reference, test = _pair(original, degraded)
    if min(reference.shape) < 7:
        raise ConfigError(f"SSIM needs at least 7 pixels along every axis, found shape {reference.shape}")
    return float(structural_similarity(reference, test, data_range=data_range or data_range_of(reference),
                                       gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def _pair(original: np.ndarray, degraded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, test = np.asarray(original, dtype=np.float64), np.asarray(degraded, dtype=np.float64)
    if reference.shape != test.shape:
        raise ConfigError(f"image quality: the images differ in shape ({reference.shape} vs {test.shape})")
    return reference, test
