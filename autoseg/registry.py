"""Name -> component registries with "did you mean" errors.

Networks, planners and trainers register under a short name; plans and checkpoints refer to
components by that name only (never an import path). Contract tests iterate over `names()`.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from autoseg.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise RegistryError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"Unknown {self.kind} '{name}'.{hint} Known: {known}.")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


NETWORKS: Registry = Registry("network")
PLANNERS: Registry = Registry("planner")
TRAINERS: Registry = Registry("trainer")
