"""`autoseg dti-regions`: white/gray matter label maps -> eight-region maps (rule: cord_regions.py).

Takes a folder of label files (every file converted, names kept) or a dataset folder (dataset.json
and labelsTr/: a new dataset whose labels are the eight regions, images, splits and other files
copied), and writes only after every map was converted, into a new or empty folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import DatasetError
from autoseg.io import IMAGE_ENDINGS, Geometry, file_ending, read_label, write_image
from autoseg.schema import write_json_atomic
from autoseg.tasks.cord_regions import REGIONS, eight_regions


@dataclass(frozen=True)
class RegionsResult:
    out_dir: Path
    maps: int
    dataset: bool


def convert_folder(source: str | Path, out_dir: str | Path, white: int = 1, gray: int = 2) -> RegionsResult:
    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir}: the output folder (-o) must be new or empty; choose another folder")
    dataset = (source / "dataset.json").is_file() and (source / "labelsTr").is_dir()
    labels_dir = source / "labelsTr" if dataset else source
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: label folder not found")
    files = sorted(p for p in labels_dir.iterdir() if p.is_file() and file_ending(p) in IMAGE_ENDINGS)
    if not files:
        raise DatasetError(f"{labels_dir}: no label files found")
    converted = {p.name: _convert(p, white, gray) for p in files}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        target = building / "labelsTr" if dataset else building
        if dataset:
            _copy_dataset(source, building)
        target.mkdir(exist_ok=True)
        for name, (regions, geometry) in converted.items():
            write_image(target / name, regions, geometry)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return RegionsResult(out_dir, len(converted), dataset)


def _convert(path: Path, white: int, gray: int) -> tuple[np.ndarray, Geometry]:
    label, geometry = read_label(path)
    return eight_regions(label, geometry, white, gray, where=str(path)), geometry


def _copy_dataset(source: Path, building: Path) -> None:
    """Everything but labelsTr, with dataset.json's labels replaced by the eight regions."""
    for entry in source.iterdir():
        if entry.name in ("labelsTr", "dataset.json") or entry.name.startswith("."):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, building / entry.name)
    meta = json.loads((source / "dataset.json").read_text())
    meta["labels"] = dict(REGIONS)
    write_json_atomic(building / "dataset.json", meta)
