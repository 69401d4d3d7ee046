"""Shared phantom pieces: the phantom description, one generated case, tissue values and CT finishing.

A phantom is described by a `Phantom` record (dataset name, labels, defaults and a `make_case`
function); `make_case(rng, index, **options)` returns a `PhantomCase` and never touches disk, so
tests can inspect cases directly. Writing the dataset folder is `autoseg.phantoms.writer`'s job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from autoseg.io import Geometry

# Typical CT numbers (HU). Cortical bone is kept at the ~1000 HU that the clinical tasks quote;
# "mixed_bone" stands for thin bone (laminae, ribs) where cortex and marrow share a voxel.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "gas": -950.0,
    "lung": -850.0,
    "pad": -800.0,
    "fat": -100.0,
    "csf": 10.0,
    "water": 5.0,
    "soft": 40.0,
    "blood": 45.0,
    "muscle": 55.0,
    "organ": 60.0,
    "marrow": 60.0,
    "disc": 90.0,
    "cancellous": 250.0,
    "mixed_bone": 600.0,
    "cortical": 1000.0,
    "table": 600.0,
}
BONE_MATERIALS = frozenset({"cancellous", "mixed_bone", "cortical", "marrow"})
CT_RANGE_HU = (-1024.0, 3071.0)  # what a 12-bit CT scanner stores


@dataclass(frozen=True)
class PhantomCase:
    """One generated case: a single-channel image, its label map and their shared geometry.

    `metadata` (JSON-able) is collected into the dataset's cases.json; `extras` carries
    phantom-specific arrays for the phantom's `write_extras` hook (e.g. diffusion volumes).
    """

    image: np.ndarray
    label: np.ndarray
    geometry: Geometry
    metadata: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Phantom:
    """Everything needed to write one synthetic dataset in the nnU-Net v2 raw layout."""

    name: str  # CLI name, e.g. "lumbar-ct"
    folder: str  # dataset folder, e.g. "Dataset903_LumbarCT"
    case_prefix: str
    description: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    default_cases: int
    options: dict[str, Any]  # size option -> default value; make_case takes them as keywords
    make_case: Callable[..., PhantomCase]
    write_extras: Callable[[Path, str, PhantomCase], None] | None = None


def jittered(
    table: dict[str, float], rng: np.random.Generator, spread: float, keep: tuple[str, ...] = ()
) -> dict[str, float]:
    """Per-case tissue values: each entry moved by up to +-`spread` HU (air-like ones kept)."""
    fixed = set(keep) | {"air", "gas"}
    return {k: v if k in fixed else float(v + rng.uniform(-spread, spread)) for k, v in table.items()}


def finish_ct(
    hu: np.ndarray, spacing_zyx: tuple[float, ...], rng: np.random.Generator, noise_hu: float, blur_mm: float = 0.6
) -> np.ndarray:
    """Scanner look for a painted HU volume: a little blur (partial volume), Gaussian noise, int16.

    The blur is in mm so thin cortex fades the same way at any spacing; noise is white, which is
    crude but enough to stop a network from keying on exact tissue values.
    """
    sigma = [min(blur_mm / s, 1.0) for s in spacing_zyx]
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), sigma)
    noisy = smooth + rng.normal(0.0, noise_hu, size=hu.shape).astype(np.float32)
    return np.clip(np.rint(noisy), *CT_RANGE_HU).astype(np.int16)


def bone_label(part) -> int:
    """Binary bone label used by skeleton-style phantoms."""
    return int(part.material in BONE_MATERIALS)


def scaled_shape(shape: tuple[int, ...], scale: float, multiple: int = 2) -> tuple[int, ...]:
    """`shape` times `scale`, rounded to a multiple of `multiple` and at least `multiple`."""
    return tuple(max(multiple, int(round(n * scale / multiple)) * multiple) for n in shape)
