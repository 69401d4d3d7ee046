"""Diffusion-weighted MRI input: 4D series with FSL gradient files, and the mean b=0 image.

A DWI is one 4D image (x, y, z, volume) read as volumes first, (N, z, y, x), with its b-values
and gradient directions in FSL text files (.bval: one row of N b-values in s/mm^2; .bvec: three
rows x, y, z of N directions in the image's voxel axes). Gradient files are looked for beside the
image, first match wins:

    NAME.nii.gz        NAME.bval, NAME.bvec          FSL / BIDS (sub-01_dwi.nii.gz, sub-01_dwi.bval)
    CASE_dwi.nii.gz    CASE.bval, CASE.bvec          the dti-cord phantom's dwi/ folder
    any 4D image       bvals, bvecs (or .txt, or bval, bvec) in the folder, shared by its DWIs

A case's id is the image name without its ending and without a trailing "_dwi".
The mean b=0 image averages the volumes with b at or below a threshold (50 s/mm^2 by default), in
whatever order they were acquired; optionally after aligning them to the first b=0 volume by a
translation found by phase correlation (rigid motion without rotation: the slab's in-plane drift,
which dominates in cord imaging; rotations are not corrected).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import DatasetError
from autoseg.io import IMAGE_ENDINGS, Geometry, file_ending, read_image, read_image_info

log = logging.getLogger(__name__)

B0_THRESHOLD = 50.0
_SHARED_GRADIENTS = (("bvals", "bvecs"), ("bvals.txt", "bvecs.txt"), ("bval", "bvec"), ("bval.txt", "bvec.txt"))


@dataclass(frozen=True)
class DwiSeries:
    """One diffusion series: volumes first, with one b-value and direction per volume."""

    path: Path
    data: np.ndarray  # (N, z, y, x) float32
    geometry: Geometry  # of the 3D grid
    bvals: np.ndarray  # (N,)
    bvecs: np.ndarray  # (N, 3)


# ---------------------------------------------------------------- gradient files
def read_fsl_gradients(bval_path: str | Path, bvec_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL .bval/.bvec files; returns b-values (N,) and directions (N, 3) in x, y, z as written."""
    bvals = _read_rows(Path(bval_path)).ravel()
    bvecs = _read_rows(Path(bvec_path))
    if bvecs.shape[0] == 3:
        bvecs = bvecs.T  # FSL layout: rows x, y, z
    elif bvecs.shape[1] != 3:
        raise DatasetError(f"{bvec_path}: expected 3 rows (x, y, z) of gradient components, found shape {bvecs.shape}")
    if len(bvals) != len(bvecs):
        raise DatasetError(
            f"{bval_path}, {bvec_path}: {len(bvals)} b-values but {len(bvecs)} directions; both files must list every volume"
        )
    return bvals, bvecs


def _read_rows(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return np.atleast_1d(np.loadtxt(path, ndmin=2))
    except ValueError as exc:
        raise DatasetError(f"{path}: expected whitespace-separated numbers ({exc})") from None


def write_fsl_gradients(bval_path: str | Path, bvec_path: str | Path, bvals: np.ndarray, bvecs: np.ndarray) -> None:
    """Write b-values as one row and directions (N, 3) as three rows, FSL style."""
    Path(bval_path).write_text(" ".join(f"{b:g}" for b in np.asarray(bvals, float)) + "\n")
    rows = np.asarray(bvecs, float).T
    Path(bvec_path).write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in rows) + "\n")


def image_stem(path: Path) -> str:
    ending = file_ending(path)
    return path.name[: len(path.name) - len(ending)] if ending else path.name


def case_id_of(path: Path) -> str:
    """The case a DWI file belongs to: its name without ending and without a trailing '_dwi'."""
    stem = image_stem(Path(path))
    return stem[:-4] if stem.endswith("_dwi") and len(stem) > 4 else stem


def find_gradient_files(image_path: str | Path) -> tuple[Path, Path]:
    """The .bval/.bvec pair of a DWI file (see the module docstring for the names tried)."""
    path = Path(image_path)
    folder, stem = path.parent, image_stem(path)
    candidates = [(f"{stem}.bval", f"{stem}.bvec"), (f"{case_id_of(path)}.bval", f"{case_id_of(path)}.bvec"),
                  *_SHARED_GRADIENTS]
    for bval, bvec in candidates:
        if (folder / bval).is_file() and (folder / bvec).is_file():
            return folder / bval, folder / bvec
    raise DatasetError(f"{path}: no gradient files beside it; put {stem}.bval and {stem}.bvec (FSL layout: one row "
                       "of b-values; three rows x, y, z of directions) in the same folder, or bvals and bvecs for "
                       "every DWI of the folder")


# ---------------------------------------------------------------- reading
def is_4d(path: str | Path) -> bool:
    """Whether the image file holds a 4D series (header only)."""
    return len(read_image_info(path)[0]) == 4


def read_dwi(path: str | Path) -> DwiSeries:
    """A 4D DWI and its gradients, checked: 4D, and one b-value and direction per volume."""
    path = Path(path)
    shape = read_image_info(path)[0]
    if len(shape) != 4:
        raise DatasetError(f"{path}: a {len(shape)}D image where a 4D diffusion series is expected (volumes along "
                           "the 4th axis); pass the DWI series itself, not a b=0 image or label map")
    bval_path, bvec_path = find_gradient_files(path)
    bvals, bvecs = read_fsl_gradients(bval_path, bvec_path)
    if len(bvals) != shape[0]:
        raise DatasetError(f"{path}: {shape[0]} volumes, but {bval_path} and {bvec_path} list {len(bvals)}; "
                           "the gradient files must give one b-value and direction per volume, in volume order")
    data, geometry = read_image(path)
    return DwiSeries(path, data.astype(np.float32, copy=False), geometry, bvals, bvecs)


def find_dwi_files(source: str | Path) -> list[Path]:
    """The 4D DWI files of a file, a folder, or a dataset folder with a dwi/ subfolder (3D images
    beside them, such as labels, are passed over)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DatasetError(f"{source}: not found; pass a 4D DWI file or a folder holding DWI series")
    folder = source / "dwi" if (source / "dwi").is_dir() else source
    images = sorted(p for p in folder.iterdir() if p.is_file() and file_ending(p) in IMAGE_ENDINGS
                    and not p.name.startswith("."))
    series = [p for p in images if is_4d(p)]
    if not series:
        found = f"; found only 3D images ({', '.join(p.name for p in images[:3])})" if images else ""
        raise DatasetError(f"{folder}: no 4D diffusion series found{found}; each DWI must be one 4D image "
                           "(volumes along the 4th axis) with its .bval/.bvec beside it")
    return series


# ---------------------------------------------------------------- the b=0 image
def b0_volumes(bvals: np.ndarray, threshold: float = B0_THRESHOLD, where: str = "diffusion series") -> np.ndarray:
    """Indices of the volumes with b at or below `threshold`, in any acquisition order."""
    chosen = np.flatnonzero(np.asarray(bvals, float) <= threshold)
    if chosen.size == 0:
        raise DatasetError(f"{where}: no volume with b <= {threshold:g} s/mm^2 (b-values: "
                           f"{', '.join(f'{b:g}' for b in sorted(set(np.asarray(bvals, float))))}); a b=0 image "
                           "needs at least one, or raise the b=0 threshold")
    return chosen


def mean_b0(data: np.ndarray, bvals: np.ndarray, threshold: float = B0_THRESHOLD, align: bool = False,
            where: str = "diffusion series") -> np.ndarray:
    """Mean of the b=0 volumes of `data` (N, *spatial), optionally aligned to the first one first."""
    volumes = np.asarray(data, np.float32)[b0_volumes(bvals, threshold, where)]
    if align and len(volumes) > 1:
        volumes = align_to_first(volumes)
    return volumes.mean(axis=0)


def align_to_first(volumes: np.ndarray) -> np.ndarray:
    """Each volume translated onto the first (phase correlation to 1/10 voxel, linear resampling)."""
    from scipy.ndimage import shift
    from skimage.registration import phase_cross_correlation

    reference = volumes[0]
    aligned = [reference]
    for moving in volumes[1:]:
        offset = phase_cross_correlation(reference, moving, upsample_factor=10, normalization=None)[0]
        aligned.append(shift(moving, offset, order=1, mode="nearest"))
    return np.stack(aligned)
