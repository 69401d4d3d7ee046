"""Commands of the localize -> crop -> segment layout (task lumbar-ct): `train-localized`,
`predict-localized` (registered on autoseg.cli_app's app; parse, call autoseg.api, render)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autoseg.cli_app import app, out, progress_bars, user_errors


@app.command("train-localized")
def train_localized(
    dataset: Path = typer.Argument(..., help="Dataset folder"),
    fold: str = typer.Argument("0", help="Fold number, or 'full' for one model on every case"),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Work folder [default: ./autoseg_work]"),
    localizer: Optional[str] = typer.Option(None, "--localizer", help="Configuration that finds the region [default: the task's, 3d_lowres]"),
    margin: Optional[float] = typer.Option(None, "--margin", help="Millimetres added around the region before cropping [default: the task's, 20]"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs per stage"),
    iters_per_epoch: int = typer.Option(250, "--iters-per-epoch", help="Training iterations per epoch"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget per stage, e.g. 10m"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    workers: int = typer.Option(2, "--workers", help="Data loader processes (0: in-process)"),
) -> None:
    """Train both stages of a localize -> crop -> segment model (localizer, then 3d_fullres on crops)."""
    from autoseg import api
    from autoseg.trainers.schedule import parse_duration

    with user_errors():
        options = {"iters_per_epoch": iters_per_epoch, "device": device, "workers": workers}
        if epochs is not None:
            options["epochs"] = epochs
        if time_budget is not None:
            options["time_budget_s"] = parse_duration(time_budget)
        with progress_bars() as progress:
            folder = api.train_localized(dataset, fold, workdir, localizer, margin, progress, **options)
    out.print(f"localize-crop-segment model: [bold]{folder}[/]")


@app.command("predict-localized")
def predict_localized(
    inputs: Path = typer.Option(..., "--input", "-i", help="Folder of images (nnU-Net naming) or one image"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for label maps, crop boxes and task reports"),
    model: Path = typer.Option(..., "--model", "-m", help="Folder holding layout.json (from train-localized)"),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirror test-time augmentation"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    skip_existing: bool = typer.Option(False, "--continue", help="Leave cases whose output exists"),
) -> None:
    """Localize, crop, segment and paste back; labels keep each input's exact geometry."""
    from autoseg import api

    with user_errors(), progress_bars() as progress:
        written = api.predict_localized(inputs if inputs.is_dir() else [inputs], output, model, tta=tta, device=device,
                                        skip_existing=skip_existing, progress=progress)
    out.print(f"wrote {len(written)} label map(s) to [bold]{output}[/]")
