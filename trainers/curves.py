"""progress.png: loss and pseudo-Dice curves, drawn with Pillow (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from autoseg.atomic import atomic_write

WIDTH, HEIGHT, MARGIN = 900, 420, 50
COLORS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14), "pseudo_dice": (150, 150, 150), "ema_dice": (44, 160, 44)}


def _polyline(draw: ImageDraw.ImageDraw, values: list[float], lo: float, hi: float, box, color, xs: list[float] | None = None) -> None:
    """`values` at positions `xs` (default: their index), scaled into `box`."""
    x0, y0, x1, y1 = box
    xs = xs if xs is not None and len(xs) == len(values) else list(range(len(values)))
    finite = [(x, v) for x, v in zip(xs, values) if np.isfinite(v)]
    if not finite:
        return
    x_span = (max(xs) - min(xs)) or 1.0
    span = (hi - lo) or 1.0
    points = [(x0 + (x1 - x0) * (x - min(xs)) / x_span, y1 - (y1 - y0) * (v - lo) / span) for x, v in finite]
    if len(points) > 1:
        draw.line(points, fill=color, width=2)
    else:  # one epoch so far: a dot
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)


def _panel(draw, history, keys, box, title, fixed_range=None, xs: list[float] | None = None) -> None:
    values = [v for k in keys for v in history.get(k, []) if np.isfinite(v)]
    lo, hi = fixed_range or ((min(values), max(values)) if values else (0.0, 1.0))
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((box[0], box[1] - 14), f"{title}  [{lo:.3g} .. {hi:.3g}]", fill=(0, 0, 0))
    for i, key in enumerate(keys):
        _polyline(draw, history.get(key, []), lo, hi, box, COLORS[key], xs)
        draw.text((box[0] + 5 + 110 * i, box[3] + 5), key, fill=COLORS[key])


def write_progress_png(path: Path, history: dict[str, list[float]], minutes: list[float] | None = None) -> None:
    """Two panels: train/val loss over epochs, and pseudo-Dice with its EMA (0..1) over `minutes`
    of training at each epoch's end (else over epochs), so the curve shows when the model becomes useful."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    half = WIDTH // 2
    minutes = minutes or []
    _panel(draw, history, ("train_loss", "val_loss"), (MARGIN, MARGIN, half - 20, HEIGHT - MARGIN), "loss")
    _panel(draw, history, ("pseudo_dice", "ema_dice"), (half + 20, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN), "pseudo-Dice",
           (0.0, 1.0), minutes)
    elapsed = f", {minutes[-1]:.1f} min (Dice panel: x = minutes of training)" if minutes else ""
    draw.text((MARGIN, 10), f"epochs: {len(history.get('train_loss', []))}{elapsed}", fill=(0, 0, 0))
    with atomic_write(path, suffix=".png") as tmp:
        image.save(tmp)
