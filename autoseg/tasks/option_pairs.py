"""Task options from the command line: `--task-option KEY=VALUE`, repeatable, and named shortcuts.

A value is read as JSON where it parses (6, -500.5, true, null, [-200, 1500], "intra") and as a
plain string otherwise (intra), so most values need no quoting; the task's typed options then
check it (unknown keys, types, ranges) like options from dataset.json.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from autoseg.errors import ConfigError


def parse_option_pairs(pairs: Sequence[str], named: dict[str, Any] | None = None) -> dict[str, Any]:
    """{key: value} from KEY=VALUE strings, then the named shortcuts that were given (not None)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--task-option '{pair}': expected KEY=VALUE, e.g. normalization=intra or clip_hu=[-200,1500]")
        options[key.strip()] = _value(text.strip())
    for key, value in (named or {}).items():
        if value is not None:
            options[key] = value
    return options


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
