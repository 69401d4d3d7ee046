"""Simulate a lower-dose acquisition of an existing radiograph.

Model (pixel values are treated as proportional to detected photons, the brightest pixel of
the image receiving `full_dose_photons`):

1. Veiling glare / scatter: a fraction `veil` of the signal is replaced by a heavily blurred
   copy of the image, which lowers local contrast the way scatter and glare do when low-dose
   protocols run without a grid or with harder technique.
2. Blur: a Gaussian of `blur_sigma_px` pixels stands for detector spread and the patient motion
   that longer, lower-current exposures invite.
3. Quantum noise: reducing the dose to a fraction f keeps each detected photon with probability
   f (binomial thinning, exactly what lowering the tube current does to a Poisson count); the
   result is rescaled by 1/f so the mean brightness stays. The noise variance added to a pixel
   of n photons is n (1 - f) / f, so the total relative noise grows as 1/sqrt(f).

Parameters are drawn by `sample_low_dose` ("sample, then apply"); `apply_low_dose` is
deterministic given them. Both scale with 1 - f, so at f = 1 every step is an exact identity.
`simulate_low_dose` does both. The model holds down to f = 0.075 (7.5 % dose) and below.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.errors import ConfigError


@dataclass(frozen=True)
class LowDoseParams:
    dose_fraction: float
    veil: float  # fraction of signal replaced by the glare image, 0 at full dose
    blur_sigma_px: float
    noise_seed: int
    full_dose_photons: float = 5000.0  # photons behind the brightest pixel at full dose


def sample_low_dose(
    dose_fraction: float,
    rng: np.random.Generator,
    max_veil: float = 0.15,
    max_blur_px: float = 1.0,
    full_dose_photons: float = 5000.0,
) -> LowDoseParams:
    """Draw the random parts of a low-dose simulation; strengths grow with the dose reduction."""
    _check_fraction(dose_fraction)
    if full_dose_photons <= 0:
        raise ConfigError(f"full_dose_photons: expected a positive photon count, got {full_dose_photons}")
    reduction = 1.0 - float(dose_fraction)
    return LowDoseParams(
        dose_fraction=float(dose_fraction),
        veil=reduction * max_veil * float(rng.uniform(0.5, 1.0)),
        blur_sigma_px=reduction * max_blur_px * float(rng.uniform(0.5, 1.0)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
        full_dose_photons=float(full_dose_photons),
    )


def apply_low_dose(image: np.ndarray, params: LowDoseParams) -> np.ndarray:
    """Apply veil, blur and dose-reduced quantum noise; same shape and dtype (see `_restore_dtype`)."""
    _check_fraction(params.dose_fraction)
    original = np.asarray(image)
    signal = original.astype(np.float64)
    if signal.size and signal.min() < 0:
        raise ConfigError(
            "simulate_low_dose: pixel values must be non-negative detected intensities, "
            f"found minimum {signal.min():g}; rescale the image to 0..max first"
        )
    if params.veil > 0:
        glare = ndimage.gaussian_filter(signal, sigma=max(signal.shape) / 3.0, mode="nearest")  # scatter spreads far
        signal = (1.0 - params.veil) * signal + params.veil * glare
    if params.blur_sigma_px > 0:
        signal = ndimage.gaussian_filter(signal, sigma=params.blur_sigma_px, mode="nearest")
    signal = signal + _thinning_noise(signal, params)
    return _restore_dtype(signal, original)


def simulate_low_dose(image: np.ndarray, dose_fraction: float, rng: np.random.Generator, **options) -> np.ndarray:
    """Sample parameters with `rng` (options go to `sample_low_dose`) and apply them to `image`."""
    return apply_low_dose(image, sample_low_dose(dose_fraction, rng, **options))


def _thinning_noise(signal: np.ndarray, params: LowDoseParams) -> np.ndarray:
    """Extra noise from keeping each photon with probability f, in pixel-value units (0 when f = 1)."""
    f = params.dose_fraction
    peak = float(signal.max()) if signal.size else 0.0
    if f >= 1.0 or peak <= 0:
        return np.zeros_like(signal)
    photons_per_unit = params.full_dose_photons / peak
    counts = np.rint(signal * photons_per_unit).astype(np.int64)
    kept = np.random.default_rng(params.noise_seed).binomial(counts, f)
    return (kept / f - counts) / photons_per_unit


def _restore_dtype(signal: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Cast back: integers are rounded and clipped to the dtype's range (the detector's full scale);
    floats, which have no full scale, are clipped to [0, the input's maximum]."""
    if np.issubdtype(original.dtype, np.integer):
        info = np.iinfo(original.dtype)
        return np.clip(np.rint(signal), max(info.min, 0), info.max).astype(original.dtype)
    high = float(original.max()) if original.size else 0.0
    return np.clip(signal, 0.0, high).astype(original.dtype)


def _check_fraction(dose_fraction: float) -> None:
    if not (0.0 < float(dose_fraction) <= 1.0):
        raise ConfigError(f"dose_fraction: expected a value in (0, 1] (1.0 = full dose, 0.075 = 7.5 %), got {dose_fraction}")
