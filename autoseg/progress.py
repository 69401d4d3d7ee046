"""Progress reporting without a UI dependency in the library.

Long operations accept a `ProgressFactory`: called with a task description and its total, it
returns an `advance(n)` callback. The CLI supplies one backed by rich; the default does nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int], Advance]


def _ignore(_: int = 1) -> None:
    return None


def no_progress(description: str, total: int) -> Advance:
    return _ignore


def task(factory: Optional[ProgressFactory], description: str, total: int) -> Advance:
    return (factory or no_progress)(description, total)
