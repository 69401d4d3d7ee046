"""Simulate a lower-dose acquisition of an existing radiograph.

Physics, in the order `apply_low_dose` applies it (f is the dose fraction, 1 = full dose):

1. Linearise. Stored values I become a relative signal L in (0, 1] and then detected quanta
   q = g * L per pixel. "linear" images (raw detector data) are proportional to the signal:
   L = (I - black) / (white - black). "log" images (radiographs for presentation: bone bright,
   air dark) store the attenuation line integral: L = exp(-log_range * (I - black) / (white - black)),
   so black is unattenuated and white is `log_range` nepers of attenuation. black and white are
   the image's minimum and maximum unless given. The gain g (quanta at L = 1) is the given
   `full_dose_photons`, or estimated from the image's own quantum noise (`estimate_gain`): for
   Poisson counts the variance equals the mean, so in flat regions var(L) = L / g.
2. Scatter: the detector also receives a veil S = spr * G(q), G a wide Gaussian kernel
   (`scatter_fwhm_mm`); an exposure control keeps the mean signal, so q <- (q + S) / (1 + spr),
   which lowers contrast by 1 / (1 + spr) (spr: the scatter-to-primary ratio).
3. Quantum noise: lowering the tube current keeps each quantum with probability f (binomial
   thinning of the rounded counts). Thinning a Poisson count of mean N gives exactly a Poisson
   count of mean f N: a real exposure at f times the dose. Rescaled by 1 / f the mean is kept and
   a pixel of n quanta gains the variance n (1 - f) / f.
4. Detector blur: a Gaussian point spread function of `psf_fwhm_mm` (sigma = FWHM / 2.3548) on
   the detected quanta, noise included.
5. Electronic noise: Gaussian readout noise of `electronic_noise` quanta (std). The full-dose
   image already holds it, scaled by f through thinning, so sigma_e * sqrt(1 - f^2) is added to
   keep sigma_e in the low-dose counts: sigma_e / f after rescaling, more as f falls.
6. Back to the stored encoding. A log conversion takes at least half a quantum (as radiographs
   do) and keeps the original's display window [black, white]; integers are rounded and clipped
   to their dtype's range (the detector's full scale), floats clipped at 0; shape and dtype are kept.

Parameters are drawn by `sample_low_dose` ("sample, then apply"); `apply_low_dose` is
deterministic given them (its noise comes from the parameters' seed). Scatter and blur strengths
are sampled in proportion to 1 - f and the electronic noise added vanishes at f = 1, so a
simulation at full dose returns the image unchanged (an exact copy), as does `apply_low_dose` at
f = 1 without scatter or blur. The model holds down to f = 0.075 (7.5 % dose) and below.
"""
from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from autoseg.errors import ConfigError

log = logging.getLogger(__name__)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
MAX_PHOTONS = 1e6  # quanta per pixel assumed for an image without measurable noise
MIN_PHOTONS = 1.0
_MIN_SIGNAL = 1e-6  # L is kept above this: a log encoding cannot store zero transmission


@dataclass(frozen=True)
class DetectorModel:
    """How stored pixel values relate to detected quanta (step 1 of the module docstring)."""

    encoding: Literal["log", "linear"] = "log"
    log_range: float = 4.0  # nepers of attenuation from black to white ("log" only)
    full_dose_photons: float | None = None  # quanta per pixel at L = 1; None: estimated from the image's noise
    black: float | None = None  # None: the image's minimum ("log"), 0 ("linear")
    white: float | None = None  # None: the image's maximum


@dataclass(frozen=True)
class LowDoseProtocol:
    """What a reduced-dose acquisition changes besides the dose: the largest extra scatter and
    blur (reached as the dose approaches 0; sampled in proportion to 1 - f) and the readout noise."""

    scatter_to_primary: float = 0.15
    scatter_fwhm_mm: float = 60.0
    psf_fwhm_mm: float = 1.0
    electronic_noise: float = 2.0  # quanta (std)
    detector: DetectorModel = field(default_factory=DetectorModel)


@dataclass(frozen=True)
class LowDoseParams:
    """Everything `apply_low_dose` needs; drawn by `sample_low_dose` or given."""

    dose_fraction: float
    scatter_to_primary: float = 0.0
    scatter_fwhm_mm: float = 60.0
    psf_fwhm_mm: float = 0.0
    electronic_noise: float = 0.0
    noise_seed: int = 0
    detector: DetectorModel = field(default_factory=DetectorModel)

    @property
    def is_identity(self) -> bool:
        """Full dose without scatter or blur (the electronic noise added vanishes at f = 1)."""
        return self.dose_fraction == 1.0 and self.scatter_to_primary == 0.0 and self.psf_fwhm_mm == 0.0


# ---------------------------------------------------------------- sample
def sample_low_dose(dose_fraction: float, rng: np.random.Generator,
                    protocol: LowDoseProtocol | None = None) -> LowDoseParams:
    """Draw the random parts of a simulation at `dose_fraction`; strengths grow with 1 - f."""
    check_dose(dose_fraction)
    protocol = protocol or LowDoseProtocol()
    check_protocol(protocol)
    reduction = 1.0 - float(dose_fraction)
    return LowDoseParams(
        dose_fraction=float(dose_fraction),
        scatter_to_primary=protocol.scatter_to_primary * reduction * float(rng.uniform(0.5, 1.0)),
        scatter_fwhm_mm=protocol.scatter_fwhm_mm,
        psf_fwhm_mm=protocol.psf_fwhm_mm * reduction * float(rng.uniform(0.5, 1.0)),
        electronic_noise=protocol.electronic_noise,
        noise_seed=int(rng.integers(0, 2**63 - 1)),
        detector=protocol.detector,
    )


# ---------------------------------------------------------------- apply
def apply_low_dose(image: np.ndarray, params: LowDoseParams, spacing: Sequence[float] | None = None) -> np.ndarray:
    """One channel (*spatial) at reduced dose; `spacing` in mm per axis (default 1). Same shape and dtype."""
    check_dose(params.dose_fraction)
    original = np.asarray(image)
    check_image(original)
    if params.is_identity or original.size == 0:
        return original.copy()
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * original.ndim
    black, white = _black_white(original, params.detector)
    signal = _linearise(original.astype(np.float64), params.detector, black, white)
    gain = params.detector.full_dose_photons or gain_from_noise(signal)
    quanta = _detect(signal * gain, params, spacing)
    return _restore_dtype(_encode(quanta / gain, params.detector, black, white), original)


def simulate_low_dose(image: np.ndarray, dose_fraction: float, rng: np.random.Generator,
                      protocol: LowDoseProtocol | None = None, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Sample parameters with `rng` and apply them to `image` (one channel)."""
    return apply_low_dose(image, sample_low_dose(dose_fraction, rng, protocol), spacing)


def _detect(quanta: np.ndarray, params: LowDoseParams, spacing: tuple[float, ...]) -> np.ndarray:
    """Steps 2-5 in quanta: scatter veil, thinning, blur, readout noise; rescaled to full-dose brightness."""
    f, rng = params.dose_fraction, np.random.default_rng(params.noise_seed)
    if params.scatter_to_primary > 0:
        veil = ndimage.gaussian_filter(quanta, _sigma_px(params.scatter_fwhm_mm, spacing), mode="nearest")
        quanta = (quanta + params.scatter_to_primary * veil) / (1.0 + params.scatter_to_primary)
    counts = np.rint(np.maximum(quanta, 0.0)).astype(np.int64)
    detected = rng.binomial(counts, f).astype(np.float64) if f < 1.0 else counts.astype(np.float64)
    if params.psf_fwhm_mm > 0:
        detected = ndimage.gaussian_filter(detected, _sigma_px(params.psf_fwhm_mm, spacing), mode="nearest")
    readout = params.electronic_noise * math.sqrt(max(1.0 - f * f, 0.0))
    if readout > 0:
        detected = detected + rng.normal(0.0, readout, detected.shape)
    if params.detector.encoding == "log":  # a log conversion cannot take 0 quanta; as on a radiograph, half a quantum
        detected = np.maximum(detected, 0.5)
    return detected / f


def _sigma_px(fwhm_mm: float, spacing: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(fwhm_mm / FWHM_PER_SIGMA / s for s in spacing)


# ---------------------------------------------------------------- stored values <-> signal
def _black_white(image: np.ndarray, detector: DetectorModel) -> tuple[float, float]:
    default_black = float(image.min()) if detector.encoding == "log" else 0.0
    black = default_black if detector.black is None else float(detector.black)
    white = float(image.max()) if detector.white is None else float(detector.white)
    if not white > black:  # a constant image: any positive scale maps it to L = 1 and back
        white = black + 1.0
    return black, white


def _linearise(values: np.ndarray, detector: DetectorModel, black: float, white: float) -> np.ndarray:
    """Stored values -> relative signal L (1 = the reference: unattenuated or the brightest)."""
    relative = (values - black) / (white - black)
    if detector.encoding == "log":
        return np.exp(-detector.log_range * relative)
    return np.maximum(relative, 0.0)


def _encode(signal: np.ndarray, detector: DetectorModel, black: float, white: float) -> np.ndarray:
    """Relative signal L -> stored values (the inverse of `_linearise`). A log image keeps the
    original's display window: what falls outside [black, white] burns out, as on a workstation."""
    if detector.encoding == "log":
        relative = np.clip(-np.log(np.maximum(signal, _MIN_SIGNAL)) / detector.log_range, 0.0, 1.0)
    else:
        relative = signal
    return black + relative * (white - black)


def _restore_dtype(values: np.ndarray, original: np.ndarray) -> np.ndarray:
    if np.issubdtype(original.dtype, np.integer):
        info = np.iinfo(original.dtype)
        return np.clip(np.rint(values), max(info.min, 0), info.max).astype(original.dtype)
    return np.maximum(values, 0.0).astype(original.dtype)


# ---------------------------------------------------------------- gain from the image's noise
def estimate_gain(signal: np.ndarray) -> float | None:
    """Quanta per unit of relative signal L from the quantum noise (var(L) = L / g), or None when
    the image shows no measurable noise.

    The noise is the residual against the mean of each pixel's face neighbours (white noise of
    variance v leaves (1 + 1 / (2 ndim)) v there), averaged over 5-pixel windows. Pixels are binned
    by local signal; each bin's median variance (edges only lift the upper tail) enters a
    least-squares fit of variance = L / g through the origin.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.size < 64 or min(signal.shape) < 8:
        return None
    neighbours = sum(np.roll(signal, shift, axis) for axis in range(signal.ndim) for shift in (1, -1)) / (2 * signal.ndim)
    residual = (signal - neighbours) / math.sqrt(1.0 + 1.0 / (2 * signal.ndim))
    inner = tuple(slice(3, -3) for _ in range(signal.ndim))  # np.roll wraps around: borders left out
    variance = ndimage.uniform_filter(residual**2, 5)[inner].ravel()
    mean = ndimage.uniform_filter(signal, 5)[inner].ravel()
    keep = mean > 0
    if keep.sum() < 32:
        return None
    mean, variance = mean[keep], variance[keep]
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, 17)))
    bins = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, max(len(edges) - 2, 0))
    m = np.array([np.median(mean[bins == b]) for b in np.unique(bins)])
    v = np.array([np.median(variance[bins == b]) for b in np.unique(bins)])
    slope = float(np.sum(m * v) / np.sum(m * m))
    return 1.0 / slope if slope > 0 and math.isfinite(slope) else None


def gain_from_noise(signal: np.ndarray) -> float:
    """`estimate_gain`, kept within [MIN_PHOTONS, MAX_PHOTONS]; a noise-free image counts as MAX_PHOTONS."""
    gain = estimate_gain(signal)
    if gain is None or gain > MAX_PHOTONS:
        log.warning("the image shows no measurable quantum noise; assuming %g quanta per pixel at full dose "
                    "(give full_dose_photons / --full-dose-photons for a known exposure)", MAX_PHOTONS)
        return MAX_PHOTONS
    return max(gain, MIN_PHOTONS)


# ---------------------------------------------------------------- checks
def check_dose(dose_fraction: float) -> None:
    if not (isinstance(dose_fraction, numbers.Real) and 0.0 < float(dose_fraction) <= 1.0):
        raise ConfigError(f"dose fraction {dose_fraction}: expected a value in (0, 1] (1 = full dose, 0.075 = 7.5 %)")


def check_image(image: np.ndarray) -> None:
    if np.iscomplexobj(image) or image.dtype == bool:
        raise ConfigError(f"dose simulation: expected a real-valued image, found dtype {image.dtype}")
    if image.size and float(image.min()) < 0:
        raise ConfigError(f"dose simulation: pixel values must be non-negative detector values, found minimum "
                          f"{float(image.min()):g}; rescale the image to 0..max first")


def check_protocol(protocol: LowDoseProtocol) -> None:
    d = protocol.detector
    problems = [f"{name} {value}: expected {allowed}" for name, value, allowed, ok in (
        ("scatter_to_primary", protocol.scatter_to_primary, ">= 0", protocol.scatter_to_primary >= 0),
        ("scatter_fwhm_mm", protocol.scatter_fwhm_mm, "> 0", protocol.scatter_fwhm_mm > 0),
        ("psf_fwhm_mm", protocol.psf_fwhm_mm, ">= 0", protocol.psf_fwhm_mm >= 0),
        ("electronic_noise", protocol.electronic_noise, ">= 0 quanta", protocol.electronic_noise >= 0),
        ("encoding", d.encoding, "'log' or 'linear'", d.encoding in ("log", "linear")),
        ("log_range", d.log_range, "> 0 nepers", d.log_range > 0),
        ("full_dose_photons", d.full_dose_photons, "> 0 quanta or unset", d.full_dose_photons is None or d.full_dose_photons > 0),
    ) if not ok]
    if problems:
        raise ConfigError("dose simulation: " + "; ".join(problems))


def with_range(protocol: LowDoseProtocol, black: float, white: float) -> LowDoseProtocol:
    """The protocol with the detector's black and white fixed (a patch linearised like its whole image)."""
    return replace(protocol, detector=replace(protocol.detector, black=float(black), white=float(white)))
