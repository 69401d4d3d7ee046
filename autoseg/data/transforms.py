"""Small batch transforms that batchgenerators 0.25.5 lacks, in its dict-of-arrays style.

- `Convert3DTo2DTransform` / `Convert2DTo3DTransform`: fold the slice axis into the channels and
  back, so a 2D spatial transform augments a strongly anisotropic 3D patch in-plane only.
- `DeepSupervisionTargetsTransform`: the label map at every deep-supervision scale (nearest), as a
  list of int16 arrays. The resizing is the pure function `downsample_nearest`.
- `NormalizeTransform`: raw-intensity samples normalized with their case's recorded normalization
  (plans that normalize in the loader), after the augmentations that need raw intensities.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from autoseg.normalization import ChannelNormalization, apply_normalization

_SHAPE_KEY = "_shape_before_3d_to_2d"  # where the fold remembers what to unfold


class Convert3DTo2DTransform(AbstractTransform):
    """(B, C, Z, Y, X) -> (B, C*Z, Y, X) for each of `keys`."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **batch):
        shapes = {}
        for key in self.keys:
            array = batch[key]
            if array.ndim != 5:
                raise ValueError(f"Convert3DTo2DTransform: '{key}' must be (B, C, Z, Y, X), got shape {array.shape}")
            shapes[key] = array.shape
            batch[key] = array.reshape(array.shape[0], array.shape[1] * array.shape[2], *array.shape[3:])
        batch[_SHAPE_KEY] = shapes
        return batch


class Convert2DTo3DTransform(AbstractTransform):
    """Undo `Convert3DTo2DTransform`; the in-plane size may have changed (e.g. cropped) in between."""

    def __init__(self, keys: Sequence[str] = ("data", "seg")):
        self.keys = tuple(keys)

    def __call__(self, **batch):
        shapes = batch.pop(_SHAPE_KEY)
        for key in self.keys:
            b, c, z = shapes[key][:3]
            batch[key] = batch[key].reshape(b, c, z, *batch[key].shape[2:])
        return batch


def scaled_shape(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """Spatial shape at a deep-supervision scale (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, scale))


def downsample_nearest(labels: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of (B, C, *spatial) labels to `spatial_shape`; no new label values."""
    if tuple(labels.shape[2:]) == tuple(spatial_shape):
        return labels
    # voxel centres of the output grid, mapped onto the input grid
    indices = [np.minimum(((np.arange(m) + 0.5) * n / m).astype(np.intp), n - 1)
               for n, m in zip(labels.shape[2:], spatial_shape)]
    return labels[(slice(None), slice(None), *np.ix_(*indices))]


class DeepSupervisionTargetsTransform(AbstractTransform):
    """batch[input_key] -> batch[output_key] = [int16 labels at each scale]; drops input_key.

    `scales` holds one per-axis factor tuple per network output, full resolution first,
    e.g. [(1, 1), (0.5, 0.5), (0.25, 0.25)]. None keeps only the full-resolution target.
    """

    def __init__(self, scales: Sequence[Sequence[float]] | None, input_key: str = "seg", output_key: str = "target"):
        self.scales = [tuple(float(f) for f in s) for s in scales] if scales else None
        self.input_key = input_key
        self.output_key = output_key

    def __call__(self, **batch):
        labels = np.asarray(batch.pop(self.input_key))
        # round first: a float label map from an order-0 spatial transform holds exact integers anyway
        labels = np.rint(labels).astype(np.int16) if labels.dtype.kind == "f" else labels.astype(np.int16)
        scales = self.scales or [(1.0,) * (labels.ndim - 2)]
        if any(len(s) != labels.ndim - 2 for s in scales):
            raise ValueError(f"deep supervision scales {scales} do not match the "
                             f"{labels.ndim - 2}D target shape {labels.shape}")
        batch[self.output_key] = [downsample_nearest(labels, scaled_shape(labels.shape[2:], s)) for s in scales]
        return batch


class NormalizeTransform(AbstractTransform):
    """batch["data"] (B, C, *S) raw -> normalized float32 with each sample's batch["normalization"]
    (per channel, as recorded by preprocessing); drops the per-sample records ("normalization",
    "spacing"). Masked channels treat every nonzero raw voxel as inside, as preprocessing did."""

    def __call__(self, **batch):
        records, data = batch.pop("normalization"), batch["data"]
        batch.pop("spacing", None)
        out = np.empty(data.shape, dtype=np.float32)
        for b, channels in enumerate(records):
            resolved = [ChannelNormalization.from_dict(c) for c in channels]
            mask = np.any(data[b] != 0, axis=0) if any(n.masked for n in resolved) else None
            out[b] = apply_normalization(data[b], resolved, mask)
        batch["data"] = out
        return batch
