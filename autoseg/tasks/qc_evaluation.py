"""How well QC verdicts match the truth: `autoseg qc-evaluate QC_JSON REFERENCE_JSON`.

"Positive" is not qualified (the images QC must catch): sensitivity = caught / truly not
qualified, specificity = passed / truly qualified, accuracy = agreeing / all; per position and
overall, each with its confusion matrix. The reference is a phantom's cases.json ("qc":
{"verdict"}) or another qc.json, e.g. one computed from reference labels: then the agreement of
every criterion's pass/fail between the two is reported too (criteria measured in both).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autoseg.errors import ConfigError
from autoseg.tasks.qc_report import NOT_QUALIFIED, QUALIFIED
from autoseg.tasks.xray_positions import normalize_position


@dataclass(frozen=True)
class Confusion:
    true_positive: int = 0  # not qualified, caught
    false_negative: int = 0  # not qualified, passed
    false_positive: int = 0  # qualified, failed
    true_negative: int = 0

    @property
    def total(self) -> int:
        return self.true_positive + self.false_negative + self.false_positive + self.true_negative

    def scores(self) -> dict[str, Any]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {"n": self.total, "accuracy": ratio(self.true_positive + self.true_negative, self.total),
                "sensitivity": ratio(self.true_positive, self.true_positive + self.false_negative),
                "specificity": ratio(self.true_negative, self.true_negative + self.false_positive),
                "confusion": {"not_qualified_caught": self.true_positive, "not_qualified_passed": self.false_negative,
                              "qualified_failed": self.false_positive, "qualified_passed": self.true_negative}}


def confusion(pairs: list[tuple[bool, bool]]) -> Confusion:
    """From (truly not qualified, judged not qualified) pairs."""
    return Confusion(sum(t and p for t, p in pairs), sum(t and not p for t, p in pairs),
                     sum(p and not t for t, p in pairs), sum(not t and not p for t, p in pairs))


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    cases = data.get("cases", data) if isinstance(data, dict) else None
    if not isinstance(cases, dict):
        raise ConfigError(f"{path}: expected a qc.json ({{\"cases\": {{case: {{\"verdict\": ...}}}}}}) or a cases.json")
    return cases


def _verdict(entry: Any, path: Path, case_id: str) -> str:
    verdict = entry.get("verdict", (entry.get("qc") or {}).get("verdict")) if isinstance(entry, dict) else None
    if verdict not in (QUALIFIED, NOT_QUALIFIED):
        raise ConfigError(f"{path}: case '{case_id}' has no verdict ('{QUALIFIED}' or '{NOT_QUALIFIED}'), found {verdict!r}")
    return verdict


def evaluate_qc(qc_json: str | Path, reference_json: str | Path) -> dict[str, Any]:
    """Scores per position and overall, and criterion agreement where the reference is a qc.json."""
    qc_path, ref_path = Path(qc_json), Path(reference_json)
    judged, reference = _read(qc_path, "QC result"), _read(ref_path, "reference")
    missing = sorted(set(judged) - set(reference))
    if missing:
        raise ConfigError(f"{ref_path}: no reference for case(s) {', '.join(missing[:5])} of {qc_path}")
    by_position: dict[str, list[tuple[bool, bool]]] = {}
    for case_id, entry in judged.items():
        truth = _verdict(reference[case_id], ref_path, case_id) == NOT_QUALIFIED
        said = _verdict(entry, qc_path, case_id) == NOT_QUALIFIED
        by_position.setdefault(_position(reference[case_id], entry), []).append((truth, said))
    every = [pair for pairs in by_position.values() for pair in pairs]
    return {"qc": str(qc_path), "reference": str(ref_path), "overall": confusion(every).scores(),
            "positions": {p: confusion(pairs).scores() for p, pairs in sorted(by_position.items())},
            "criteria_agreement": criteria_agreement(judged, reference)}


def _position(reference: Any, judged: Any) -> str:
    """The reference's position where it records one, else the judged one."""
    for entry in (reference, judged):
        value = entry.get("position") if isinstance(entry, dict) else None
        if value:
            return normalize_position(value, "position")
    return "unknown"


def criteria_agreement(judged: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Per criterion: share of cases where both measured it and agree on pass/fail."""
    counts: dict[str, list[int]] = {}
    for case_id, entry in judged.items():
        theirs = reference[case_id].get("criteria", {}) if isinstance(reference[case_id], dict) else {}
        for name, result in entry.get("criteria", {}).items():
            other = theirs.get(name, {})
            if result.get("passed") is None or other.get("passed") is None:
                continue
            agree, total = counts.setdefault(name, [0, 0])
            counts[name] = [agree + (result["passed"] == other["passed"]), total + 1]
    return {name: {"agreement": round(a / n, 4), "n": n} for name, (a, n) in counts.items()}


def dice_by_position(per_case: Sequence[Any], positions: dict[str, str]) -> dict[str, dict[str, float]]:
    """Mean Dice per class and over classes within each true position, from evaluation rows
    (autoseg.evaluation.MetricRow: case_id, label, dice); rows of cases without a position are left out."""
    grouped: dict[str, dict[str, list[float]]] = {}
    for row in per_case:
        position = positions.get(row.case_id)
        if position is not None and row.dice == row.dice:  # NaN: absent in both
            grouped.setdefault(position, {}).setdefault(row.label, []).append(float(row.dice))
    table = {}
    for position, classes in sorted(grouped.items()):
        means = {label: round(sum(v) / len(v), 4) for label, v in classes.items()}
        table[position] = {**means, "mean": round(sum(means.values()) / len(means), 4),
                           "cases": max(len(v) for v in classes.values())}
    return table
