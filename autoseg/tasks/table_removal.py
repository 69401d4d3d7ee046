"""Table removal on one CT file, as skeleton-ct's case step does it, for a look before training.

    result = remove_table_file("ct.nii.gz", "ct_no_table.nii.gz", mask_path="body.nii.gz",
                               picture_path="table.png")

Everything outside the body mask (autoseg.modalities.ct_body) becomes air (-1000 HU); the output
keeps the input's geometry and its integer type where it has one. All is computed before anything
is written, so a refusal (no body found, output = input) leaves no file behind.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import ConfigError, PreprocessingError
from autoseg.io import read_image, write_image
from autoseg.modalities.ct_body import AIR_HU, NoBodyFound, body_mask
from autoseg.tasks.skeleton_figure import REMOVED_HU, write_table_removal_png


@dataclass(frozen=True)
class TableRemoval:
    output: Path
    mask: Path | None
    picture: Path | None
    voxels_removed: int  # voxels set to air that were not air-like before (above -900 HU)
    dense_voxels_removed: int  # of those, denser than fat (table, pads, cables)
    body_fraction: float  # share of the volume inside the body mask
    seconds: float  # finding the body


def remove_table_file(image_path: str | Path, output_path: str | Path, mask_path: str | Path | None = None,
                      picture_path: str | Path | None = None, threshold_hu: float = -500.0,
                      opening_mm: float = 6.0) -> TableRemoval:
    image_path, output_path = Path(image_path), Path(output_path)
    targets = [Path(p) for p in (output_path, mask_path, picture_path) if p is not None]
    if any(t.resolve() == image_path.resolve() for t in targets):
        raise ConfigError(f"{image_path}: an output would overwrite the input; choose another output path")
    image, geometry = read_image(image_path)
    if image.shape[0] != 1 or geometry.ndim != 3:
        raise ConfigError(f"{image_path}: expected one 3D CT volume in HU, found shape {image.shape}")
    hu = image[0].astype(np.float32)
    start = time.perf_counter()
    try:
        body = body_mask(hu, geometry.spacing_zyx, threshold_hu, opening_mm)
    except NoBodyFound as exc:
        raise PreprocessingError(f"{image_path}: no body found ({exc}); check that it holds CT numbers in HU, "
                                 "or lower --threshold-hu") from None
    seconds = time.perf_counter() - start
    removed = ~body & (hu > -900.0)
    cleaned = np.where(body, image[0], np.asarray(AIR_HU).astype(image.dtype))
    write_image(output_path, cleaned, geometry)
    if mask_path is not None:
        write_image(mask_path, body.astype(np.uint8), geometry)
    if picture_path is not None:
        write_table_removal_png(picture_path, hu, body, geometry.spacing_zyx)
    return TableRemoval(output_path, Path(mask_path) if mask_path else None, Path(picture_path) if picture_path else None,
                        int(removed.sum()), int((removed & (hu > REMOVED_HU)).sum()), float(body.mean()), seconds)
