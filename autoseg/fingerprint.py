"""Dataset fingerprint: the measured facts a planner decides from.

Per case: spacing, shape, shape after crop-to-nonzero, label voxel fractions, connected
component counts and centroids. Per channel: foreground intensity statistics from a bounded random sample
(at most `samples_per_case` voxels of each case), so memory stays flat however large the dataset.
Cases are measured one at a time in worker processes; only the small summaries come back.
"""
from __future__ import annotations

import logging
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from autoseg.config import CaseFingerprint, ChannelFingerprint, Fingerprint, IntensityStats
from autoseg.cropping import nonzero_bbox
from autoseg.dataset import Case, Dataset
from autoseg.io import read_image, read_label

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000

_MR_PREFIXES = ("mr", "t1", "t2", "flair", "dwi", "dti", "b0", "adc", "pd")


def modality_of(channel_name: str) -> str:
    """Map a dataset.json channel name to a modality. Only "CT" changes normalization (as in
    nnU-Net); the others are recorded for the reader and all get per-image z-scoring."""
    key = "".join(ch for ch in channel_name.lower() if ch.isalnum())
    if key.startswith("ct"):
        return "CT"
    if "xray" in key or "radiograph" in key or key in ("dx", "cr"):
        return "xray"
    if key.startswith(_MR_PREFIXES):
        return "MR"
    return "other"


@dataclass(frozen=True)
class _CaseMeasurement:
    case: CaseFingerprint
    foreground_samples: np.ndarray  # (C, n) float32


def _label_statistics(label: np.ndarray, values: list[int]) -> tuple[dict[str, float], dict[str, int], dict[str, tuple[float, ...]]]:
    """Per label value: voxel fraction, connected components and (present foreground labels only)
    the centre of mass as a fraction of the image extent, from which planners see label order."""
    fractions, components, centroids = {}, {}, {}
    for v in values:
        mask = label == v
        fractions[str(v)] = float(mask.mean())
        components[str(v)] = int(ndimage.label(mask)[1]) if v != 0 else 0
        if v != 0 and fractions[str(v)] > 0:
            centre = ndimage.center_of_mass(mask)
            centroids[str(v)] = tuple(round(float(c) / max(n - 1, 1), 4) for c, n in zip(centre, mask.shape))
    return fractions, components, centroids


def foreground_extent_mm(label: np.ndarray, spacing) -> tuple[float, ...]:
    """Size in mm, per axis, of the box around every foreground voxel; () without foreground."""
    foreground = label > 0
    if not foreground.any():
        return ()
    extent = []
    for axis, step in enumerate(spacing):
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(foreground.ndim) if a != axis)))
        extent.append(round(float((hits[-1] + 1 - hits[0]) * step), 2))
    return tuple(extent)


def measure_case(case: Case, label_values: list[int], samples_per_case: int = SAMPLES_PER_CASE) -> _CaseMeasurement:
    """Read one case and summarise it. Runs in a worker process."""
    channels = [read_image(p) for p in case.images]
    image = np.concatenate([c[0] for c in channels]).astype(np.float32, copy=False)
    geometry = channels[0][1]
    label, _ = read_label(case.label)
    bbox = nonzero_bbox(image)
    fractions, components, centroids = _label_statistics(label, label_values)
    foreground = image[:, label > 0]  # (C, n_foreground)
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    if foreground.shape[1] > samples_per_case:
        foreground = foreground[:, rng.choice(foreground.shape[1], samples_per_case, replace=False)]
    fingerprint = CaseFingerprint(
        case_id=case.case_id,
        spacing=tuple(float(s) for s in geometry.spacing_zyx),
        shape=tuple(int(s) for s in image.shape[1:]),
        cropped_shape=tuple(int(b - a) for a, b in bbox),
        label_fractions=fractions,
        label_components=components,
        label_centroids=centroids,
        foreground_extent_mm=foreground_extent_mm(label, geometry.spacing_zyx),
    )
    return _CaseMeasurement(fingerprint, foreground.astype(np.float32))


def _intensity_stats(samples: np.ndarray) -> IntensityStats:
    if samples.size == 0:  # no foreground anywhere: neutral statistics rather than NaN
        return IntensityStats(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p005, p50, p995 = np.percentile(samples, [0.5, 50.0, 99.5])
    return IntensityStats(
        mean=float(samples.mean()),
        std=float(samples.std()),
        median=float(p50),
        min=float(samples.min()),
        max=float(samples.max()),
        percentile_00_5=float(p005),
        percentile_99_5=float(p995),
    )


def compute_fingerprint(
    dataset: Dataset, workers: int = 2, progress: Callable[[int], None] | None = None
) -> Fingerprint:
    """Measure every training case of `dataset` (in `workers` processes) and summarise."""
    label_values = sorted(dataset.labels.values())
    measurements: list[_CaseMeasurement] = []
    if workers <= 1:
        for case in dataset.cases:
            measurements.append(measure_case(case, label_values))
            if progress:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for m in pool.map(measure_case, dataset.cases, [label_values] * len(dataset.cases), chunksize=4):
                measurements.append(m)
                if progress:
                    progress(1)
    samples = np.concatenate([m.foreground_samples for m in measurements], axis=1)
    channels = tuple(
        ChannelFingerprint(name=name, modality=modality_of(name), foreground=_intensity_stats(samples[i]))
        for i, name in enumerate(dataset.channel_names)
    )
    ndims = {len(m.case.shape) for m in measurements}
    return Fingerprint(
        dataset_name=dataset.name,
        ndim=ndims.pop(),
        file_ending=dataset.file_ending,
        labels=dict(dataset.labels),
        channels=channels,
        cases=tuple(m.case for m in measurements),
    )
