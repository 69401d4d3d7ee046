"""`autoseg dti-prepare`: raw DWI cases -> an nnU-Net-layout dataset for the dti-cord task.

Input: a folder of 4D DWI files with their gradient files (autoseg/modalities/dwi.py), or a dataset
folder with a dwi/ subfolder (the dti-cord phantom). A case's label map is taken from --labels
(files named by case id), else from the dataset's labelsTr/, else from a 3D image beside the DWI
named <DWI name>_label... or <DWI name>_seg... (DTI_cord_raw's layout). Labels are white/gray
matter (1, 2) or the eight regions (1-8); `regions` turns two-label maps into the eight regions.

Output (a new or empty folder, filled only after every case was read and checked): imagesTr/
(labelled cases) or imagesTs/ (the others) with one file per channel (CASE_0000 = b=0, then the
chosen tensor maps), labelsTr/, dwi/ (each DWI with CASE.bval and CASE.bvec, so dti-metrics and
prediction can use the dataset directly) and dataset.json naming the task and its options.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import DatasetError
from autoseg.io import IMAGE_ENDINGS, file_ending, read_label, write_image
from autoseg.modalities import dwi
from autoseg.schema import write_json_atomic
from autoseg.tasks.cord_regions import eight_regions, label_names
from autoseg.tasks.dti_cord import CHANNEL_NAMES, NAME, DtiCordOptions, network_channels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedCase:
    case_id: str
    series: dwi.DwiSeries
    channels: np.ndarray  # (C, *spatial)
    label: np.ndarray | None


@dataclass(frozen=True)
class PrepareResult:
    dataset_dir: Path
    training: int
    test: int
    labels: dict[str, int]


def find_label(dwi_path: Path, case_id: str, labels_dir: Path | None) -> Path | None:
    """The case's label file (see the module docstring), or None."""
    if labels_dir is not None:
        found = [p for p in labels_dir.iterdir() if p.is_file() and dwi.case_id_of(p) == case_id]
        return found[0] if found else None
    stem = dwi.image_stem(dwi_path)
    beside = sorted(p for p in dwi_path.parent.iterdir() if p.is_file() and file_ending(p) in IMAGE_ENDINGS
                    and p != dwi_path and dwi.image_stem(p).startswith((f"{stem}_label", f"{stem}_seg")))
    return beside[0] if beside else None


def read_case(dwi_path: Path, labels_dir: Path | None, options: DtiCordOptions, regions: bool) -> PreparedCase:
    series = dwi.read_dwi(dwi_path)
    case_id = dwi.case_id_of(dwi_path)
    channels, _ = network_channels(series, options)
    label_path = find_label(dwi_path, case_id, labels_dir)
    label = None
    if label_path is not None:
        label, geometry = read_label(label_path)
        if label.shape != channels.shape[1:] or not geometry.matches(series.geometry):
            raise DatasetError(f"{label_path}: label grid {label.shape} does not match the DWI {dwi_path} "
                               f"{channels.shape[1:]} (spacing, origin and direction must agree)")
        if regions:
            label = eight_regions(label, geometry, where=str(label_path))
    return PreparedCase(case_id, series, channels, label)


def label_set(cases: Sequence[PreparedCase]) -> dict[str, int]:
    seen = set().union(*(set(np.unique(c.label).tolist()) for c in cases if c.label is not None))
    return label_names(seen, "the prepared label maps")


def prepare_dataset(raw: str | Path, out_dir: str | Path, channels: Sequence[str] = ("b0",),
                    labels_dir: str | Path | None = None, regions: bool = False, b0_threshold: float = dwi.B0_THRESHOLD,
                    align_b0: bool = False, fit_method: str = "WLS", progress=None) -> PrepareResult:
    options = DtiCordOptions(tuple(channels), b0_threshold, align_b0, fit_method)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir}: the dataset folder (-o) must be new or empty; choose another folder")
    raw = Path(raw)
    if labels_dir is None and (raw / "dwi").is_dir() and (raw / "labelsTr").is_dir():
        labels_dir = raw / "labelsTr"
    labels_dir = Path(labels_dir) if labels_dir is not None else None
    if labels_dir is not None and not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: label folder (--labels) not found")
    cases = []
    for path in dwi.find_dwi_files(raw):
        cases.append(read_case(path, labels_dir, options, regions))
        if progress is not None:
            progress(1)
    labels = label_set(cases)
    _write(cases, out_dir, options, labels)
    training = sum(c.label is not None for c in cases)
    return PrepareResult(out_dir, training, len(cases) - training, labels)


def _write(cases: Sequence[PreparedCase], out_dir: Path, options: DtiCordOptions, labels: dict[str, int]) -> None:
    """Everything into a temporary sibling folder, then renamed into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for case in cases:
            _write_case(building, case)
        dataset = {"name": out_dir.name, "description": "dti-cord dataset from raw DWI (autoseg dti-prepare)",
                   "channel_names": {str(i): CHANNEL_NAMES[c] for i, c in enumerate(options.channels)},
                   "labels": labels, "numTraining": sum(c.label is not None for c in cases),
                   "file_ending": ".nii.gz",
                   "task": {"name": NAME, "options": {"channels": list(options.channels),
                                                      "b0_threshold": options.b0_threshold,
                                                      "align_b0": options.align_b0, "fit_method": options.fit_method}}}
        write_json_atomic(building / "dataset.json", dataset)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty
        os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _write_case(root: Path, case: PreparedCase) -> None:
    images = root / ("imagesTr" if case.label is not None else "imagesTs")
    images.mkdir(exist_ok=True)
    for index, channel in enumerate(case.channels):
        write_image(images / f"{case.case_id}_{index:04d}.nii.gz", channel, case.series.geometry)
    if case.label is not None:
        (root / "labelsTr").mkdir(exist_ok=True)
        write_image(root / "labelsTr" / f"{case.case_id}.nii.gz", case.label.astype(np.uint8), case.series.geometry)
    folder = root / "dwi"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(case.series.path, folder / f"{case.case_id}_dwi{file_ending(case.series.path)}")
    dwi.write_fsl_gradients(folder / f"{case.case_id}.bval", folder / f"{case.case_id}.bvec",
                            case.series.bvals, case.series.bvecs)
