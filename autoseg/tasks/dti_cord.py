"""`dti-cord`: spinal cord on diffusion MRI, eight white/gray matter regions from the b=0 image,
with FA, MD, AD and RD per region (the design of the SCS-Net study of cervical myelopathy).

- Input: the network sees the mean b=0 image (option `channels`: also FA, MD, AD or RD maps).
  `autoseg dti-prepare` turns raw DWI cases into a dataset of those channels, and a model of this
  task reads a 4D DWI (FSL .bval/.bvec beside it, autoseg/modalities/dwi.py) itself when it
  predicts (`raw_input`), with the same function, so training and prediction see identical
  channels; prepared channel files are predicted as usual.
- Configurations: 2d (thick axial slices, 3-5 mm against < 1 mm in plane, as in the study).
- Tensor fit: dipy's TensorModel (`fit_method`, weighted least squares by default).
- Regions: `autoseg dti-regions` derives the eight regions from white/gray matter labels
  (autoseg/tasks/cord_regions.py).
- Report per predicted DWI: voxels, mean FA, MD, AD, RD per region (a b=0 file alone: voxels only);
  `autoseg dti-metrics` gives the same per case as an sct_extract_metric-shaped CSV and the
  FA-index error against reference labels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import ConfigError
from autoseg.io import IMAGE_ENDINGS, file_ending
from autoseg.modalities import dti, dwi
from autoseg.tasks.profile import PredictedCase, RawCase, RawInput, TaskProfile, register

log = logging.getLogger(__name__)

NAME = "dti-cord"
CHANNELS = ("b0", "fa", "md", "ad", "rd")
CHANNEL_NAMES = {"b0": "MR_B0", "fa": "FA", "md": "MD", "ad": "AD", "rd": "RD"}


@dataclass(frozen=True)
class DtiCordOptions:
    """How a DWI becomes the network's input, and how tensors are fitted."""

    channels: tuple[str, ...] = ("b0",)  # network input channels, in order: b0, fa, md, ad, rd
    b0_threshold: float = dwi.B0_THRESHOLD  # s/mm^2: volumes at or below are averaged into the b=0 image
    align_b0: bool = False  # translate the b=0 volumes onto the first before averaging
    fit_method: str = "WLS"  # dipy TensorModel fit: WLS, OLS, NLLS or RESTORE

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in self.channels if c not in CHANNELS]
        if not self.channels or unknown or len(set(self.channels)) != len(self.channels):
            problems.append(f"channels {list(self.channels)}: expected distinct names from {', '.join(CHANNELS)}")
        if not 0 <= self.b0_threshold < 500:
            problems.append(f"b0_threshold {self.b0_threshold}: expected 0 <= b0_threshold < 500 s/mm^2")
        if self.fit_method not in dti.FIT_METHODS:
            problems.append(f"fit_method '{self.fit_method}': expected one of {', '.join(dti.FIT_METHODS)}")
        if problems:
            raise ConfigError(f"task '{NAME}' options: " + "; ".join(problems))


def parse_channels(text: str) -> tuple[str, ...]:
    """'b0,fa,md' -> ('b0', 'fa', 'md'), checked like the option."""
    channels = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    DtiCordOptions(channels=channels)
    return channels


# ---------------------------------------------------------------- the DWI as the network's input
def network_channels(series: dwi.DwiSeries, options: DtiCordOptions) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The channels the model sees, (C, *spatial) float32, and the tensor maps when any were fitted."""
    b0 = dwi.mean_b0(series.data, series.bvals, options.b0_threshold, options.align_b0, str(series.path))
    maps = tensor_maps(series, options) if set(options.channels) - {"b0"} else {}
    planes = {"b0": b0, **{name.lower(): values for name, values in maps.items()}}
    return np.stack([planes[c] for c in options.channels]).astype(np.float32), maps


def tensor_maps(series: dwi.DwiSeries, options: DtiCordOptions) -> dict[str, np.ndarray]:
    fit = dti.fit_tensor(series.data, series.bvals, series.bvecs, fit_method=options.fit_method,
                         b0_threshold=options.b0_threshold)
    return {name: values.astype(np.float32) for name, values in fit.maps().items()}


def _one_file(files: tuple[Path, ...]) -> bool:
    return len(files) == 1 and files[0].is_file() and file_ending(files[0]) in IMAGE_ENDINGS


def is_dwi(files: tuple[Path, ...]) -> bool:
    """A single 4D image file: a DWI series (its gradients are checked in check_dwi)."""
    return _one_file(files) and dwi.is_4d(files[0])


def check_dwi(files: tuple[Path, ...], options: DtiCordOptions) -> tuple[int, ...]:
    """Headers and gradient files, before anything is written; the spatial shape."""
    from autoseg.io import read_image_info

    path = files[0]
    shape = read_image_info(path)[0]
    bval_path, bvec_path = dwi.find_gradient_files(path)
    bvals, _ = dwi.read_fsl_gradients(bval_path, bvec_path)
    if len(bvals) != shape[0]:
        raise ConfigError(f"{path}: {shape[0]} volumes, but {bval_path} lists {len(bvals)} b-values; the gradient "
                          "files must give one entry per volume")
    dwi.b0_volumes(bvals, options.b0_threshold, str(path))
    return tuple(shape[1:])


def read_dwi_input(files: tuple[Path, ...], options: DtiCordOptions) -> RawCase:
    series = dwi.read_dwi(files[0])
    image, maps = network_channels(series, options)
    if not maps:  # the report measures regions on the tensor maps
        maps = tensor_maps(series, options)
    return RawCase(image, series.geometry, {"maps": maps})


DWI_INPUT = RawInput(kind="4D DWI with FSL .bval/.bvec beside it", recognizes=is_dwi, check=check_dwi,
                     read=read_dwi_input, case_id=lambda case_id: dwi.case_id_of(Path(case_id)))


# ---------------------------------------------------------------- report after prediction
def region_report(case: PredictedCase, options: DtiCordOptions) -> dict[str, Any]:
    """Per region: voxels, and with a DWI input the mean FA, MD, AD and RD inside it."""
    from autoseg.tasks.dti_metrics import region_values

    maps = case.extras.get("maps", {})
    names = {n: v for n, v in case.label_values.items() if v != 0}
    report: dict[str, Any] = {"input": "dwi" if maps else "b0 image (no diffusion maps: predict the 4D DWI for FA/MD)"}
    values = region_values(maps, case.labels, {"background": 0, **names}) if maps else {}
    for name, value in names.items():
        report[f"voxels_{name}"] = int(np.count_nonzero(case.labels == value))
        for metric, regions in values.items():
            mean = regions[name].mean
            report[f"{metric}_{name}"] = round(mean, 6 if metric == "FA" else 9) if mean is not None else None
    return report


PROFILE = register(TaskProfile(
    name=NAME,
    summary="spinal cord on diffusion MRI: 8 white/gray matter regions from the b=0 image, FA/MD per region; "
            "dti-prepare, dti-regions, dti-metrics",
    phantom="dti-cord",
    options=DtiCordOptions,
    configurations=("2d",),
    report=region_report,
    raw_input=DWI_INPUT,
))
