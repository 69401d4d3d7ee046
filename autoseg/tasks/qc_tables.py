"""Rich tables of lumbar-xray-qc results for the CLI (presentation only)."""
from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table

from autoseg.tasks.qc_criteria import CRITERIA

SHORT = {"field_of_view": "fov mm", "centring": "centre", "tilt": "tilt deg", "rotation": "rotation",
         "true_lateral": "depth/h", "disc_spaces": "disc mm", "obliquity": "obl deg", "exposure": "clipped"}


def qc_table(results: Sequence) -> Table:
    """One row per image: position, verdict, each criterion's value (red when failed)."""
    names = [n for n in CRITERIA if any(n in r.criteria for r in results)]
    table = Table(title="Quality control (red: failed; n/a: not measurable; - : not a criterion of the position)")
    for column in ("case", "position", "verdict"):
        table.add_column(column, no_wrap=True)
    for name in names:
        table.add_column(SHORT.get(name, name), justify="right")
    for result in results:
        cells = []
        for name in names:
            criterion = result.criteria.get(name)
            if criterion is None or criterion.value is None:
                cells.append("-" if criterion is None else "n/a")
                continue
            text = f"{criterion.value:.3g}"
            cells.append(f"[red]{text}[/]" if criterion.passed is not None and not criterion.passed else text)
        verdict = "[green]ok[/]" if not result.failed else "[red]NOT OK[/]"
        position = f"{result.position or '?'}" + (" (inferred)" if result.position_source == "inferred" else "")
        table.add_row(result.case_id, position, verdict, *cells)
    return table


def _share(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def qc_scores_table(result: dict[str, Any]) -> Table:
    table = Table(title="QC verdicts against the reference (positive: not qualified)")
    for column in ("position", "n", "accuracy", "sensitivity", "specificity", "caught", "missed", "false alarm", "passed"):
        table.add_column(column, justify="left" if column == "position" else "right", no_wrap=True)
    rows = [*result["positions"].items(), ("overall", result["overall"])]
    for position, scores in rows:
        c = scores["confusion"]
        table.add_row(position, str(scores["n"]), _share(scores["accuracy"]), _share(scores["sensitivity"]),
                      _share(scores["specificity"]), str(c["not_qualified_caught"]), str(c["not_qualified_passed"]),
                      str(c["qualified_failed"]), str(c["qualified_passed"]))
    return table


def agreement_table(agreement: dict[str, Any]) -> Table:
    table = Table(title="Criterion pass/fail agreement with the reference qc.json")
    for column in ("criterion", "agreement", "n"):
        table.add_column(column, justify="left" if column == "criterion" else "right")
    for name, entry in agreement.items():
        table.add_row(name, _share(entry["agreement"]), str(entry["n"]))
    return table
