"""Overlay PNG of a not-qualified radiograph: the segmentation (autoseg.overlay's colours) with the
failed measurements drawn in white: the column's box and the border it comes too close to (field
of view), the column's middle and the image centre (centring), the fitted midline (tilt)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.draw import line as draw_line

from autoseg import io
from autoseg.overlay import render_overlay

MARK = np.array([255, 255, 255], dtype=np.uint8)


def _segment(rgb: np.ndarray, start, end) -> None:
    h, w = rgb.shape[1:]
    r0, c0 = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(start, (h, w)))
    r1, c1 = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(end, (h, w)))
    rr, cc = draw_line(r0, c0, r1, c1)
    rgb[:, rr, cc] = MARK[:, None]


def draw_measurement(rgb: np.ndarray, name: str, drawing: dict) -> None:
    h, w = rgb.shape[1:]
    if name == "field_of_view" and "box" in drawing:
        top, left, bottom, right = drawing["box"]
        for a, b in (((top, left), (top, right)), ((bottom, left), (bottom, right)),
                     ((top, left), (bottom, left)), ((top, right), (bottom, right))):
            _segment(rgb, a, b)
        edge = 0 if drawing.get("side") == "top" else h - 1
        _segment(rgb, (edge, 0), (edge, w - 1))
    elif name == "centring" and "point" in drawing:
        _segment(rgb, (0, w / 2), (h - 1, w / 2))
        row, col = drawing["point"]
        _segment(rgb, (row, w / 2), (row, col))
    elif "line" in drawing:
        _segment(rgb, drawing["line"][0], drawing["line"][1])


def write_qc_overlay(path: Path, image: np.ndarray, labels: np.ndarray, result) -> Path:
    rgb = render_overlay(image, labels, None)
    for name in result.failed:
        draw_measurement(rgb, name, result.criteria[name].drawing)
    return io.write_image(path, rgb, io.Geometry.default(2))
