"""Overlay PNGs for a quick look at a segmentation.

The image is drawn in gray (windowed to its 1st-99th percentile), the prediction as a translucent
fill and the reference as opaque outlines, both in one fixed colour per label value, so the same
vertebra has the same colour in every overlay. 3D volumes show the axial slice (axis 0) with the most
foreground in prediction or reference.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg import io
from autoseg.errors import DatasetError

# Distinct, colour-blind-friendly-ish colours; label value v uses PALETTE[(v - 1) % len(PALETTE)].
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
], dtype=np.float32)
FILL_ALPHA = 0.45


def label_color(value: int) -> np.ndarray:
    """RGB colour (float32, 0-255) of a label value >= 1."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def busiest_slice(pred: np.ndarray, ref: np.ndarray | None) -> int:
    """Index along axis 0 with the most foreground voxels in prediction or reference (middle if none)."""
    foreground = pred > 0 if ref is None else (pred > 0) | (ref > 0)
    per_slice = foreground.reshape(foreground.shape[0], -1).sum(axis=1)
    return int(np.argmax(per_slice)) if per_slice.any() else foreground.shape[0] // 2


def window(image: np.ndarray) -> np.ndarray:
    """Map the 1st-99th percentile range to 0-255 (float32); a flat image becomes black."""
    low, high = np.percentile(image, (1, 99))
    if high <= low:
        return np.zeros(image.shape, np.float32)
    return (np.clip((image.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.float32)


def _gray_or_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) float32: three channels are shown as colour, otherwise channel 0."""
    if image.shape[0] == 3:
        return np.moveaxis(window(image), 0, -1)
    return np.repeat(window(image[0])[..., None], 3, axis=-1)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _check_shapes(image: np.ndarray, pred: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """Return the image channel-first; shapes must agree with the label maps."""
    if image.ndim == pred.ndim:
        image = image[None]
    if image.shape[1:] != pred.shape or (ref is not None and ref.shape != pred.shape):
        found = f"image {image.shape[1:]}, prediction {pred.shape}" + ("" if ref is None else f", reference {ref.shape}")
        raise DatasetError(f"overlay needs image and label maps of one spatial shape; found {found}")
    if pred.ndim not in (2, 3):
        raise DatasetError(f"overlay needs 2D or 3D label maps; found {pred.ndim}D")
    return image


def render_overlay(image: np.ndarray, pred: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """RGB overlay as a (3, H, W) uint8 array. `image` is (C, *spatial) or (*spatial)."""
    image = _check_shapes(image, pred, ref)
    if pred.ndim == 3:
        index = busiest_slice(pred, ref)
        image, pred, ref = image[:, index], pred[index], None if ref is None else ref[index]
    rgb = _gray_or_rgb(image)
    for value in np.unique(pred[pred > 0]):
        fill = pred == value
        rgb[fill] = (1 - FILL_ALPHA) * rgb[fill] + FILL_ALPHA * label_color(value)
    if ref is not None:
        for value in np.unique(ref[ref > 0]):
            rgb[_outline(ref == value)] = label_color(value)
    return np.moveaxis(np.rint(rgb).astype(np.uint8), -1, 0)


def write_overlay_png(image: np.ndarray, pred: np.ndarray, ref: np.ndarray | None, out_path: str | Path) -> Path:
    """Write the overlay of `pred` (fill) and `ref` (outlines) on `image` as an RGB PNG; returns the path."""
    return io.write_image(out_path, render_overlay(image, pred, ref), io.Geometry.default(2))
