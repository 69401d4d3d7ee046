"""dose_curve.png: mean Dice (with its SD) and mean SSIM against dose on a log axis, drawn with Pillow."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from autoseg.atomic import atomic_write

WIDTH, HEIGHT, MARGIN = 720, 460, 60
DICE, SSIM, GRID = (44, 160, 44), (31, 119, 180), (225, 225, 225)


def write_dose_curve(path: Path, groups: Sequence[dict]) -> Path:
    """One point per dose group (needs "dose", "dice_mean", "dice_sd", "ssim_mean"); y from 0 to 1."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    box = (MARGIN, MARGIN, WIDTH - MARGIN // 2, HEIGHT - MARGIN)
    doses = sorted(g["dose"] for g in groups)
    low, high = math.log10(min(doses)), math.log10(max(doses))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5

    def at(dose: float, value: float) -> tuple[float, float]:
        x = box[0] + (box[2] - box[0]) * (math.log10(dose) - low) / (high - low)
        return x, box[3] - (box[3] - box[1]) * min(max(value, 0.0), 1.0)

    _axes(draw, box, doses, at)
    ordered = sorted(groups, key=lambda g: g["dose"])
    _series(draw, [(g["dose"], g["dice_mean"]) for g in ordered], at, DICE,
            errors=[g.get("dice_sd") for g in ordered])
    _series(draw, [(g["dose"], g["ssim_mean"]) for g in ordered], at, SSIM)
    draw.text((MARGIN, 15), "mean Dice (bars: SD) and mean SSIM against dose (log axis)", fill=(0, 0, 0))
    draw.text((box[2] - 170, 15), "Dice", fill=DICE)
    draw.text((box[2] - 110, 15), "SSIM", fill=SSIM)
    with atomic_write(path, suffix=".png") as tmp:
        image.save(tmp)
    return path


def _axes(draw: ImageDraw.ImageDraw, box, doses: Sequence[float], at) -> None:
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = at(doses[0], tick)
        draw.line([(box[0], y), (box[2], y)], fill=GRID)
        draw.text((box[0] - 35, y - 6), f"{tick:.2f}", fill=(0, 0, 0))
    for dose in doses:
        x, _ = at(dose, 0.0)
        draw.line([(x, box[1]), (x, box[3])], fill=GRID)
        draw.text((x - 12, box[3] + 8), f"{dose:g}", fill=(0, 0, 0))
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text(((box[0] + box[2]) // 2 - 40, box[3] + 28), "dose fraction", fill=(0, 0, 0))


def _series(draw: ImageDraw.ImageDraw, points, at, color, errors=None) -> None:
    finite = [(d, v, e) for (d, v), e in zip(points, errors or [None] * len(points)) if v is not None and math.isfinite(v)]
    xy = [at(d, v) for d, v, _ in finite]
    if len(xy) > 1:
        draw.line(xy, fill=color, width=2)
    for (d, v, e), (x, y) in zip(finite, xy):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        if e is not None and math.isfinite(e) and e > 0:
            _, top = at(d, v + e)
            _, bottom = at(d, v - e)
            draw.line([(x, top), (x, bottom)], fill=color, width=1)
