"""Command of the skeleton-ct task: `remove-table` (registered on autoseg.cli_app's app; parse, call
autoseg.api, render with rich)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg.cli_app import app, out, user_errors


@app.command("remove-table")
def remove_table(
    image: Path = typer.Argument(..., help="CT volume in HU (.nii.gz, .nrrd, .mha, ...)"),
    output: Path = typer.Argument(..., help="The CT without table: outside the body set to -1000 HU, same geometry"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Also write the body mask (0/1) here"),
    picture: Optional[Path] = typer.Option(None, "--picture", help="Also write a PNG: sagittal and axial slice, removed matter in red"),
    threshold_hu: float = typer.Option(-500.0, "--threshold-hu", help="Tissue lies above this (air and foam pads below)"),
    opening_mm: float = typer.Option(6.0, "--opening-mm", help="Contacts with the table thinner than about twice this are cut"),
) -> None:
    """Remove the scanner table from a CT as task skeleton-ct does before training and prediction."""
    from autoseg import api

    with user_errors():
        result = api.remove_table(image, output, mask, picture, threshold_hu, opening_mm)
    out.print(f"body: {result.body_fraction:.1%} of the volume (found in {result.seconds:.1f} s); removed "
              f"{result.voxels_removed} non-air voxels, {result.dense_voxels_removed} of them denser than fat")
    for path in (result.output, result.mask, result.picture):
        if path is not None:
            out.print(f"wrote [bold]{path}[/]")
