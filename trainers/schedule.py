"""How long a run lasts and how its learning rate decays.

Length is an option, never a class: a fixed number of epochs, or a wall-clock budget. In both the
poly schedule follows the fraction of the run that is done, so every run ends fully decayed: with a
budget, the fraction is elapsed training time over the budget. An optional linear warm-up takes the
first part of that fraction (`--warmup`).
"""
from __future__ import annotations

import re

from autoseg.errors import ConfigError

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_EXAMPLES = "e.g. 30m, 90s, 1h or 1h30m"


def parse_duration(text: str) -> float:
    """'90s', '10m', '1.5h' or '1h30m' -> seconds; refuses what is not a duration, and zero."""
    compact = re.sub(r"\s+", "", str(text)).lower()
    match = _DURATION.fullmatch(compact)
    if not compact or match is None:
        raise ConfigError(f"time budget '{text}' is not a duration: expected numbers with units h, m, s "
                          f"(in that order), {_EXAMPLES}")
    seconds = sum(float(n) * unit for n, unit in zip(match.groups(), (3600, 60, 1)) if n)
    if seconds <= 0:
        raise ConfigError(f"time budget '{text}' is 0 seconds: expected a duration > 0, {_EXAMPLES}")
    return seconds


def poly_lr(initial_lr: float, fraction_done: float, exponent: float = 0.9) -> float:
    return initial_lr * (1.0 - min(max(fraction_done, 0.0), 1.0)) ** exponent



WARMUP_START = 0.01  # of the rate: the first steps of a warm-up still move the weights


def scheduled_lr(initial_lr: float, fraction_done: float, warmup: float = 0.0, exponent: float = 0.9) -> float:
    """Linear warm-up over the first `warmup` fraction of the run, then poly decay to zero at its end."""
    done = min(max(fraction_done, 0.0), 1.0)
    if done < warmup:
        return initial_lr * max(done / warmup, WARMUP_START)
    return poly_lr(initial_lr, (done - warmup) / (1.0 - warmup), exponent)
