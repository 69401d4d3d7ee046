"""Parallel-beam radiographs of painted anatomy: Beer-Lambert attenuation, quantum noise, display.

The anatomy is turned into the beam's frame (z up, v across the detector, w along the rays),
painted as linear attenuation coefficients mu (1/mm) and summed along w. The detector sees
I = I0 * exp(-sum(mu * dl)) photons per pixel with Poisson noise; I0 comes from an automatic
exposure control that aims at a photon count behind the spine, as a real AEC chamber does.
The stored image is the log-converted radiograph (bone bright, air black) in a 12-bit range.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from autoseg.phantoms.solids import Grid, Part, paint, transform_parts

# Linear attenuation at an effective energy of ~60 keV (1/mm). Bone attenuates relatively
# more than its CT number suggests because photoelectric absorption grows at low energy.
XRAY_MU: dict[str, float] = {
    "air": 0.0,
    "gas": 0.0,
    "lung": 0.005,
    "pad": 0.004,
    "fat": 0.018,
    "csf": 0.0205,
    "water": 0.0205,
    "soft": 0.021,
    "blood": 0.0215,
    "muscle": 0.0215,
    "organ": 0.0215,
    "marrow": 0.021,
    "disc": 0.022,
    "cancellous": 0.034,
    "mixed_bone": 0.045,
    "cortical": 0.060,
    "table": 0.030,
}
DISPLAY_MAX = 4095  # 12-bit detector range, stored in a 16-bit PNG


def beam_matrix(angle_deg: float) -> np.ndarray:
    """World (z, y, x) -> beam (z, v, w). 0 deg: beam anterior->posterior (AP); 90 deg: right->left (lateral).

    v runs along the patient's left in AP and toward anterior in the lateral view.
    """
    a = np.radians(angle_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, -np.sin(a), np.cos(a)], [0.0, np.cos(a), np.sin(a)]])


def project(
    parts: list[Part],
    angle_deg: float,
    grid: Grid,
    mu: dict[str, float],
    label_of: Callable[[Part], int],
    priority: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals (z, v) and the projected label map for a beam at `angle_deg`.

    `grid` lives in beam coordinates; its last axis is the ray direction. Each ray's samples
    start at a random fraction of a step (stratified sampling, see `paint`). A pixel's label is
    the highest-`priority` label (listed low to high) whose parts its ray crosses, computed from
    the exact silhouettes of the solids rather than from the sampled voxels.
    """
    beam_parts = transform_parts(parts, beam_matrix(angle_deg))
    jitter = rng.uniform(0.0, 1.0, size=grid.shape[:2])
    attenuation, _ = paint(grid, beam_parts, mu, lambda part: 0, background=0.0, ray_jitter=jitter)
    return attenuation.sum(axis=2) * grid.spacing[2], silhouette_labels(beam_parts, grid, label_of, priority)


def silhouette_labels(
    parts: list[Part], grid: Grid, label_of: Callable[[Part], int], priority: tuple[int, ...]
) -> np.ndarray:
    """Label each ray (pixel of the first two grid axes) by the parts it crosses."""
    z, v = grid.axis(0), grid.axis(1)
    out = np.zeros(grid.shape[:2], dtype=np.uint8)
    for value in priority:
        hit = np.zeros(grid.shape[:2], dtype=bool)
        for part in (p for p in parts if label_of(p) == value):
            rows, cols = _pixel_box(grid, part)
            if rows.start < rows.stop and cols.start < cols.stop:
                hit[rows, cols] |= part.solid.hit_by_rays(z[rows, None], v[None, cols])
        out[hit] = value
    return out


def _pixel_box(grid: Grid, part: Part) -> tuple[slice, slice]:
    """Detector rows and columns that a part's bounding box can shadow."""
    extent, center = part.solid.half_extent(), part.solid.center
    box = []
    for i in (0, 1):
        lo = int(np.floor((center[i] - extent[i] - grid.origin[i]) / grid.spacing[i]))
        hi = int(np.ceil((center[i] + extent[i] - grid.origin[i]) / grid.spacing[i])) + 1
        box.append(slice(max(lo, 0), min(hi, grid.shape[i])))
    return box[0], box[1]


def expose(
    line_integral: np.ndarray, target_counts: float, region: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Poisson photon counts; I0 is chosen so the median count inside `region` is `target_counts`."""
    transmission = np.exp(-line_integral)
    i0 = target_counts / max(float(np.median(transmission[region])), 1e-12)
    return rng.poisson(i0 * transmission).astype(np.float64), i0


def to_display(counts: np.ndarray, i0: float, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log conversion and a window set on the anatomy of interest, like a radiography workstation.

    Black is set by the darkest pixels (air), white a little above most of `region`, so very
    dense overlap (shoulders, pelvis) may burn out white as it does on real films.
    Returns uint16 in 0..DISPLAY_MAX.
    """
    density = -np.log(np.maximum(counts, 0.5) / i0)
    low = np.percentile(density, rng.uniform(0.2, 2.0))
    top = np.percentile(density[region], 95) if region.any() else np.percentile(density, 99)
    high = top + rng.uniform(0.1, 0.35) * (top - low)
    scaled = np.clip((density - low) / max(high - low, 1e-6), 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    return np.rint(scaled * DISPLAY_MAX).astype(np.uint16)


def radiograph_rows(image: np.ndarray) -> np.ndarray:
    """Beam grids run z upward; a radiograph shows superior at the top row."""
    return np.ascontiguousarray(image[::-1])
