"""The lumbar-xray-qc rules table: which criteria apply in each position and their thresholds.

The shipped table is qc_rules.json beside this module; `--qc-rules FILE` replaces it with a file of
the same layout ({position: {criterion: {threshold: number}}}, keys starting with "_" are
comments). A rules file is checked whole before any image is judged: an unknown position or
criterion, a missing or unknown threshold or a value that is not a number is a ConfigError naming
the file and the fix.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from autoseg.errors import ConfigError
from autoseg.tasks.qc_criteria import CRITERIA
from autoseg.tasks.xray_positions import POSITIONS

DEFAULT_RULES = Path(__file__).with_name("qc_rules.json")
# criteria that need no position: applied with AP's thresholds when a position cannot be told
POSITION_FREE = ("field_of_view", "centring", "tilt", "exposure")

Rules = dict[str, dict[str, dict[str, float]]]


def load_rules(path: str | Path | None = None) -> Rules:
    """The rules table at `path` (None: the shipped one), checked."""
    path = Path(path) if path is not None else DEFAULT_RULES
    if not path.is_file():
        raise ConfigError(f"{path}: QC rules file not found; give a JSON file laid out like {DEFAULT_RULES}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); see {DEFAULT_RULES} for the layout") from None
    return check_rules(data, str(path))


def check_rules(data: Any, where: str) -> Rules:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object {{position: {{criterion: {{threshold: value}}}}}}")
    tables = {k: v for k, v in data.items() if not k.startswith("_")}
    unknown = sorted(set(tables) - set(POSITIONS))
    missing = [p for p in POSITIONS if p not in tables]
    if unknown or missing:
        raise ConfigError(f"{where}: positions must be exactly {', '.join(POSITIONS)}"
                          + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                          + (f"; missing: {', '.join(missing)}" if missing else ""))
    return {position: _check_table(tables[position], f"{where}: {position}") for position in POSITIONS}


def _check_table(table: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: expected a non-empty object {{criterion: {{threshold: value}}}}")
    checked = {}
    for name, rule in table.items():
        if name not in CRITERIA:
            raise ConfigError(f"{where}: unknown criterion '{name}'; known: {', '.join(CRITERIA)}")
        checked[name] = _check_rule(rule, CRITERIA[name][1], f"{where}.{name}")
    return checked


def _check_rule(rule: Any, needed: tuple[str, ...], where: str) -> dict[str, float]:
    if not isinstance(rule, dict):
        raise ConfigError(f"{where}: expected an object of thresholds {{{', '.join(needed)}}}")
    missing = [k for k in needed if k not in rule]
    extra = sorted(set(rule) - set(needed))
    if missing:
        raise ConfigError(f"{where}: missing threshold(s) {', '.join(missing)}; add them, e.g. "
                          f"{json.dumps({k: 1.0 for k in needed})}")
    if extra:
        raise ConfigError(f"{where}: unknown threshold(s) {', '.join(extra)}; expected {', '.join(needed)}")
    for key, value in rule.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: expected a number, found {value!r}")
    return {k: float(v) for k, v in rule.items()}


def rules_for(rules: Rules, position: str | None) -> dict[str, dict[str, float]]:
    """The criteria of a position; without one, the position-free criteria at AP's thresholds."""
    if position is None:
        return {name: rule for name, rule in rules["AP"].items() if name in POSITION_FREE}
    return rules[position]
