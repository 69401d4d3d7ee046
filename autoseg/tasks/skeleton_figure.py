"""A picture of table removal for skeleton-ct: a sagittal and an axial slice side by side.

The CT is shown in a bone-friendly window, what table removal took away (outside the body mask,
denser than fat) in red, the body outline in green and, when given, bone labels in yellow. The
sagittal slice is stretched to square millimetres, so anatomy keeps its proportions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg import io

WINDOW_HU = (-400.0, 1000.0)
MIN_HEIGHT = 400  # pixels
REMOVED_HU = -200.0  # what counts as removed matter outside the body (table, pads with some density)
RED, GREEN, YELLOW = (230.0, 40.0, 40.0), (60.0, 200.0, 75.0), (255.0, 225.0, 25.0)


def _gray(hu: np.ndarray) -> np.ndarray:
    low, high = WINDOW_HU
    gray = np.clip((hu - low) / (high - low), 0, 1) * 255
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)


def _panel(hu: np.ndarray, body: np.ndarray, bone: np.ndarray | None) -> np.ndarray:
    rgb = _gray(hu)
    removed = ~body & (hu > REMOVED_HU)
    rgb[removed] = 0.4 * rgb[removed] + 0.6 * np.array(RED)
    if bone is not None:
        rgb[bone] = 0.5 * rgb[bone] + 0.5 * np.array(YELLOW)
    rgb[body & ~ndimage.binary_erosion(body, border_value=0)] = GREEN
    return rgb


def _square_pixels(panel: np.ndarray, spacing_rows: float, spacing_cols: float) -> np.ndarray:
    """Rows stretched so a pixel covers as many mm down as across."""
    factor = spacing_rows / spacing_cols
    rows = max(1, int(round(panel.shape[0] * factor)))
    index = np.minimum((np.arange(rows) / factor).astype(int), panel.shape[0] - 1)
    return panel[index]


def table_removal_picture(hu: np.ndarray, body: np.ndarray, spacing_zyx, bone: np.ndarray | None = None) -> np.ndarray:
    """(3, H, W) uint8: the middle sagittal slice beside the axial slice with the most removed
    matter; hu, body and bone are (z, y, x) on one grid."""
    removed = ~body & (hu > REMOVED_HU)
    z = int(np.argmax(removed.sum(axis=(1, 2)))) if removed.any() else hu.shape[0] // 2
    x = hu.shape[2] // 2
    axial = _panel(hu[z], body[z], None if bone is None else bone[z])
    # sagittal through the middle column: rows run down the body axis (last slice on top), columns along y
    sagittal = _panel(hu[::-1, :, x], body[::-1, :, x], None if bone is None else bone[::-1, :, x])
    sagittal = _square_pixels(sagittal, spacing_zyx[0], spacing_zyx[1])
    height = max(axial.shape[0], sagittal.shape[0])
    pad = (lambda p: np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))))
    picture = np.concatenate([pad(sagittal), np.zeros((height, 4, 3), np.float32), pad(axial)], axis=1)
    zoom = max(1, -(-MIN_HEIGHT // height))  # small phantoms are enlarged, pixel for pixel
    picture = picture.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return np.moveaxis(np.rint(picture).astype(np.uint8), -1, 0)


def write_table_removal_png(path: str | Path, hu: np.ndarray, body: np.ndarray, spacing_zyx,
                            bone: np.ndarray | None = None) -> Path:
    return io.write_image(path, table_removal_picture(hu, body, spacing_zyx, bone), io.Geometry.default(2))
