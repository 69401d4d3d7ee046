"""Commands of the dti-cord task: `dti-prepare`, `dti-regions`, `dti-metrics` (registered on
autoseg.cli_app's app; parse, call autoseg.api, render with rich, heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg.cli_app import app, out, progress_bars, user_errors

B0ThresholdOption = typer.Option(50.0, "--b0-threshold", help="Volumes with b at or below this (s/mm^2) are b=0 volumes")
FitOption = typer.Option("WLS", "--fit", help="dipy tensor fit: WLS (weighted least squares), OLS, NLLS or RESTORE")


@app.command("dti-prepare")
def dti_prepare(
    raw_dir: Path = typer.Argument(..., help="Folder of 4D DWI files with .bval/.bvec beside them (or a dti-cord phantom dataset)"),
    output: Path = typer.Option(..., "--output", "-o", help="New or empty folder for the dataset"),
    channels: str = typer.Option("b0", "--channels", help="Network input channels, in order: b0, fa, md, ad, rd (e.g. b0,fa,md)"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label files named by case [default: labelsTr/ of a dataset, or <DWI>_label*/_seg* beside each DWI]"),
    regions: bool = typer.Option(False, "--regions", help="Turn white/gray matter labels (1, 2) into the eight cord regions"),
    b0_threshold: float = B0ThresholdOption,
    align_b0: bool = typer.Option(False, "--align-b0", help="Translate the b=0 volumes onto the first before averaging"),
    fit: str = FitOption,
) -> None:
    """Raw DWI cases -> an nnU-Net-layout dataset for the dti-cord task (b=0 image, optional FA/MD channels)."""
    from autoseg import api
    from autoseg.tasks.dti_cord import parse_channels

    with user_errors():
        chosen = parse_channels(channels)
        with progress_bars() as progress:
            result = api.dti_prepare(raw_dir, output, chosen, labels, regions, b0_threshold, align_b0, fit, progress)
    names = ", ".join(n for n, v in result.labels.items() if v)
    out.print(f"wrote [bold]{result.dataset_dir}[/]: {result.training} training case(s), {result.test} without labels; "
              f"channels {', '.join(chosen)}; labels {names}", highlight=False)


@app.command("dti-regions")
def dti_regions(
    labels_dir: Path = typer.Argument(..., help="Folder of white/gray matter label maps, or a dataset folder (labelsTr/)"),
    output: Path = typer.Option(..., "--output", "-o", help="New or empty folder (a dataset folder for a dataset input)"),
    white: int = typer.Option(1, "--white", help="Label value of white matter (cord without gray matter)"),
    gray: int = typer.Option(2, "--gray", help="Label value of gray matter"),
) -> None:
    """Eight cord regions (dorsal/lateral/ventral white matter, gray matter; left/right) from two-label maps."""
    from autoseg import api

    with user_errors():
        result = api.dti_regions(labels_dir, output, white, gray)
    kind = "dataset" if result.dataset else "label folder"
    out.print(f"wrote {result.maps} region map(s): {kind} [bold]{result.out_dir}[/]", highlight=False)


@app.command("dti-metrics")
def dti_metrics(
    dwi_dir: Path = typer.Option(..., "--dwi", "-i", help="4D DWI files with .bval/.bvec (a folder, or a dataset with dwi/)"),
    predictions: Path = typer.Option(..., "--pred", "-p", help="Label maps to measure in, named by case"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for dti_metrics.csv (and the FA-error CSVs)"),
    references: Optional[Path] = typer.Option(None, "--ref", "-r", help="Reference label maps: adds the FA-index error per region"),
    b0_threshold: float = B0ThresholdOption,
    fit: str = FitOption,
) -> None:
    """Mean FA, MD, AD, RD per case and region (sct_extract_metric-shaped CSV); FA-index error with -r."""
    from autoseg import api

    with user_errors():
        with progress_bars() as progress:
            result = api.dti_metrics(dwi_dir, predictions, output, references, fit, b0_threshold, progress)
    if result.summary:
        out.print(fa_error_table(result.summary))
    written = [p for p in (result.metrics_csv, result.error_csv, result.summary_csv) if p is not None]
    out.print(f"{result.cases} case(s): " + ", ".join(f"[bold]{p}[/]" for p in written), highlight=False)


def fa_error_table(summary: list[dict]):
    """The FA-index error per region, left and right (mean +- SD over cases, %)."""
    from rich import box
    from rich.table import Table

    table = Table("region", "left %", "right %", "both %", title="FA-index error |FA(pred)-FA(ref)|/FA(ref)",
                  box=box.SIMPLE)
    for row in summary:
        cells = [_mean_sd(row.get(f"{side}_mean"), row.get(f"{side}_sd")) for side in ("left", "right")]
        table.add_row(row["region"], *cells, _mean_sd(row.get("both_mean"), None))
    return table


def _mean_sd(mean, sd) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" + (f" +- {sd:.1f}" if sd is not None else "")
