"""`cervical-lowdose`: cervical spine segmentation on radiographs that stays accurate at low dose.

The design of the low-dose cervical study: simulate reduced-dose images from full-dose ones
(autoseg.modalities.xray_dose), train with dose augmentation, and report IoU/Dice per dose group
beside the simulated images' PSNR/SSIM (`autoseg simulate-dose`, `autoseg evaluate-dose`).

- Configurations: 2d (radiographs).
- Case step: images must hold non-negative detector values (the simulator works on quanta), so a
  negative image is refused when it is preprocessed, in training and prediction alike.
- Normalization in the loader: a share of training patches (`dose_augmentation_p`, default
  half) is simulated at a dose drawn log-uniformly in [dose_min, dose_max] on its raw
  intensities, then normalized like every other patch; validation and prediction never simulate.
- Report per predicted case: the quanta per pixel estimated from the image's own noise (with a
  known `full_dose_photons`, also the dose fraction that implies) and each class's area.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from autoseg.errors import ConfigError, PreprocessingError
from autoseg.io import Geometry
from autoseg.modalities.xray_dose import (
    DetectorModel, LowDoseProtocol, apply_low_dose, check_protocol, estimate_gain, sample_low_dose, with_range,
)
from autoseg.normalization import ChannelNormalization
from autoseg.tasks.profile import PredictedCase, TaskProfile, register

log = logging.getLogger(__name__)

NAME = "cervical-lowdose"


@dataclass(frozen=True)
class CervicalLowdoseOptions:
    """Dose augmentation and the simulator's protocol (defaults: autoseg.modalities.xray_dose)."""

    dose_augmentation_p: float = 0.5  # share of training samples simulated at a lower dose
    dose_min: float = 0.075
    dose_max: float = 1.0
    encoding: Literal["log", "linear"] = "log"
    log_range: float = 4.0
    full_dose_photons: float | None = None  # quanta per pixel at full dose; None: from each image's noise
    scatter_to_primary: float = 0.15
    scatter_fwhm_mm: float = 60.0
    psf_fwhm_mm: float = 1.0
    electronic_noise: float = 2.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.dose_augmentation_p <= 1.0:
            problems.append(f"dose_augmentation_p {self.dose_augmentation_p}: expected a share in [0, 1]")
        if not 0.0 < self.dose_min <= self.dose_max <= 1.0:
            problems.append(f"dose_min {self.dose_min}, dose_max {self.dose_max}: expected 0 < dose_min <= dose_max <= 1")
        if problems:
            raise ConfigError(f"task '{NAME}' options: " + "; ".join(problems))
        check_protocol(self.protocol())

    def protocol(self) -> LowDoseProtocol:
        detector = DetectorModel(self.encoding, self.log_range, self.full_dose_photons)
        return LowDoseProtocol(self.scatter_to_primary, self.scatter_fwhm_mm, self.psf_fwhm_mm,
                               self.electronic_noise, detector)


# ---------------------------------------------------------------- case step
def require_detector_values(image: np.ndarray, geometry: Geometry, options: CervicalLowdoseOptions,
                            case_id: str) -> np.ndarray:
    """Dose simulation counts quanta, so the stored values must be non-negative detector values."""
    low = float(image.min()) if image.size else 0.0
    if low < 0:
        raise PreprocessingError(f"case '{case_id}': task '{NAME}' needs non-negative detector values (the dose "
                                 f"simulation counts quanta), found minimum {low:g}; store the radiograph as "
                                 "acquired (e.g. 8/16-bit PNG) or rescale it to 0..max")
    return image


# ---------------------------------------------------------------- training: dose augmentation
class DoseAugmentation:
    """Batch transform on raw intensities: each sample, with probability p, at a dose drawn
    log-uniformly in [dose_min, dose_max], every channel linearised with its case's own range.

    Draws from numpy's global state, which the loader seeds and isolates per producer. Records the
    dose of each sample in batch["dose"] (1.0: not simulated).
    """

    def __init__(self, options: CervicalLowdoseOptions):
        self.options = options
        self.protocol = options.protocol()

    def __call__(self, **batch: Any) -> dict:
        data = batch["data"]  # (B, C, *S) raw intensities
        doses = []
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.options.dose_augmentation_p:
                doses.append(1.0)
                continue
            low, high = math.log(self.options.dose_min), math.log(self.options.dose_max)
            dose = float(math.exp(np.random.uniform(low, high)))
            rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
            ranges = [ChannelNormalization.from_dict(n) for n in batch["normalization"][b]]
            for c, channel in enumerate(ranges):
                protocol = with_range(self.protocol, max(channel.minimum, 0.0), max(channel.maximum, 0.0))
                # cubic resampling can undershoot 0 by a little; quanta cannot
                patch = np.maximum(data[b, c], 0.0)
                data[b, c] = apply_low_dose(patch, sample_low_dose(dose, rng, protocol), batch["spacing"][b])
            doses.append(dose)
        batch["data"], batch["dose"] = data, doses
        return batch


# ---------------------------------------------------------------- report after prediction
def dose_report(case: PredictedCase, options: CervicalLowdoseOptions) -> dict[str, Any]:
    """The input's quanta per pixel from its own noise (and, with a known full dose, the dose
    fraction this implies), and each foreground class's area in mm^2 (pixels x pixel area)."""
    channel = case.image[0].astype(np.float64)
    black, white = float(channel.min()), float(channel.max())
    span = white - black if white > black else 1.0
    relative = (channel - black) / span
    signal = np.exp(-options.log_range * relative) if options.encoding == "log" else relative
    gain = estimate_gain(signal)
    fraction = gain / options.full_dose_photons if gain is not None and options.full_dose_photons else None
    pixel_area = float(np.prod(case.geometry.spacing_zyx))
    areas = {f"area_mm2_{name}": round(float(np.count_nonzero(case.labels == value)) * pixel_area, 3)
             for name, value in case.label_values.items() if value != 0}
    return {"estimated_quanta_per_pixel": round(gain, 1) if gain is not None else None,
            "estimated_dose_fraction": round(fraction, 4) if fraction is not None else None, **areas}


PROFILE = register(TaskProfile(
    name=NAME,
    summary="cervical spine on lateral X-ray, accurate down to 7.5% dose: dose-augmented training; "
            "simulate-dose, evaluate-dose",
    phantom="cervical-xray",
    options=CervicalLowdoseOptions,
    configurations=("2d",),
    normalize_at="loader",
    case_steps=(require_detector_values,),
    raw_augmentations=(DoseAugmentation,),
    report=dose_report,
))
