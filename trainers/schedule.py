"""How long a run lasts and how its learning rate decays.

Length is an option, never a class: a fixed number of epochs, or a wall-clock budget. In both the
poly schedule follows the fraction of the run that is done, so every run ends fully decayed: with a
budget, the fraction is elapsed training time over the budget.
"""
from __future__ import annotations

import re

from autoseg.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' or '1h30m' -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", text.strip().lower())
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise ConfigError(f"time budget '{text}' is not a duration; use e.g. 30m, 90s, 1h or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def poly_lr(initial_lr: float, fraction_done: float, exponent: float = 0.9) -> float:
    return initial_lr * (1.0 - min(max(fraction_done, 0.0), 1.0)) ** exponent

