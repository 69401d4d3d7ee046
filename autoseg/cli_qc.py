"""Commands of the lumbar-xray-qc task: `qc` and `qc-evaluate` (registered on autoseg.cli_app's app;
same rules: parse, call autoseg.api, render with rich, heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg.cli_app import app, out, user_errors


@app.command("qc")
def qc(
    images: Path = typer.Option(..., "--images", "-i", help="Radiographs (nnU-Net naming <case>_0000.png or <case>.png)"),
    predictions: Path = typer.Option(..., "--predictions", "-p", help="Label maps named <case>.png (predicted or reference)"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for qc.json, qc.csv and overlays/"),
    positions: Optional[Path] = typer.Option(None, "--positions", help="JSON {case: AP|LAT|OBL} [default: dataset.json/cases.json, DICOM, else inferred]"),
    qc_rules: Optional[Path] = typer.Option(None, "--qc-rules", help="Thresholds table JSON [default: autoseg/tasks/qc_rules.json]"),
) -> None:
    """Quality-control verdict per lumbar radiograph from its label map: position, every criterion's value and pass/fail."""
    from autoseg import api
    from autoseg.tasks.qc_tables import qc_table

    with user_errors():
        result = api.qc(images, predictions, output, positions, qc_rules)
    out.print(qc_table(result.results))
    failed = sum(1 for r in result.results if r.failed)
    out.print(f"{len(result.results) - failed} qualified, {failed} not qualified; [bold]{result.qc_json}[/], "
              f"[bold]{result.qc_csv}[/], {len(result.overlays)} overlay(s) in [bold]{output / 'overlays'}[/]",
              highlight=False)


@app.command("qc-evaluate")
def qc_evaluate(
    qc_json: Path = typer.Argument(..., help="qc.json written by `autoseg qc`"),
    reference_json: Path = typer.Argument(..., help="True verdicts: a phantom's cases.json or a qc.json from reference labels"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the scores to this JSON file"),
) -> None:
    """Accuracy, sensitivity (not-qualified caught) and specificity per position and overall, confusion matrix, criterion agreement."""
    from autoseg import api
    from autoseg.tasks.qc_tables import agreement_table, qc_scores_table

    with user_errors():
        result = api.qc_evaluate(qc_json, reference_json, output)
    out.print(qc_scores_table(result))
    if result["criteria_agreement"]:
        out.print(agreement_table(result["criteria_agreement"]))
