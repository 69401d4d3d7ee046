"""Commands of the clinical tasks wing: `tasks`, `simulate-dose`, `evaluate-dose` (registered on
autoseg.cli_app's app; same rules: parse, call autoseg.api, render with rich, heavy imports inside)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from autoseg.cli_app import app, out, progress_bars, user_errors

DosesOption = typer.Option(..., "--doses", help="Dose fractions in (0, 1], e.g. 0.5,0.25,0.1,0.075")
SeedOption = typer.Option(0, "--seed", help="Random seed (same seed, byte-identical images)")


@app.command("tasks")
def tasks() -> None:
    """List the registered clinical task profiles, one line each (use with `autoseg plan --task NAME`)."""
    from autoseg import api

    for profile in api.tasks():
        out.print(f"[bold]{profile.name}[/]  {profile.summary}", highlight=False, soft_wrap=True)


@app.command("simulate-dose")
def simulate_dose(
    input_dir: Path = typer.Argument(..., help="Dataset folder (nnU-Net layout) or folder of images"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for one dataset (or image) folder per dose and the quality CSVs"),
    doses: str = DosesOption,
    seed: int = SeedOption,
    encoding: str = typer.Option("log", "--encoding", help="How stored values relate to quanta: log (radiographs for presentation, bone bright) or linear (raw detector data)"),
    full_dose_photons: Optional[float] = typer.Option(None, "--full-dose-photons", help="Quanta per pixel at full dose where unattenuated [default: estimated from each image's noise]"),
) -> None:
    """Simulate reduced-dose copies (quantum noise, scatter, blur), labels copied unchanged; PSNR/SSIM per image."""
    from autoseg import api
    from autoseg.render import dose_quality_table
    from autoseg.tasks.dose_study import parse_doses

    with user_errors():
        protocol = _protocol(encoding, full_dose_photons)
        with progress_bars() as progress:
            result = api.simulate_dose(input_dir, output, parse_doses(doses), seed, protocol, progress)
    out.print(dose_quality_table(result.summary))
    for dose, folder in result.folders.items():
        out.print(f"dose {dose:g}: [bold]{folder}[/]", highlight=False)
    out.print(f"image quality: [bold]{result.quality_csv}[/], [bold]{result.summary_csv}[/]")


@app.command("evaluate-dose")
def evaluate_dose(
    model: List[Path] = typer.Option(..., "--model", "-m", help="Run folder or checkpoint; repeat for an ensemble"),
    images: Path = typer.Option(..., "--images", "-i", help="Full-dose images (nnU-Net naming or plain files)"),
    labels: Path = typer.Option(..., "--labels", "-r", help="Reference labels, named like the cases"),
    output: Path = typer.Option(..., "--output", "-o", help="New or empty folder for the results"),
    doses: str = typer.Option("1,0.5,0.25,0.1,0.075", "--doses", help="Dose fractions in (0, 1]; full dose (1) is always included"),
    seed: int = SeedOption,
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirror test-time augmentation"),
) -> None:
    """Dice/IoU per simulated dose group beside PSNR/SSIM, Wilcoxon against full dose, dose_curve.png."""
    from autoseg import api
    from autoseg.render import dose_evaluation_table
    from autoseg.tasks.dose_study import parse_doses

    with user_errors():
        dose_list = parse_doses(doses)
        with progress_bars() as progress:
            result = api.evaluate_dose(model, images, labels, output, dose_list, seed, device, tta, progress)
    out.print(dose_evaluation_table(result.groups))
    out.print(f"summary: [bold]{result.summary_json}[/], [bold]{result.summary_csv}[/]; per image: "
              f"[bold]{result.cases_csv}[/]; curve: [bold]{result.curve_png}[/]")


def _protocol(encoding: str, full_dose_photons: Optional[float]):
    from dataclasses import replace

    from autoseg.errors import ConfigError
    from autoseg.modalities.xray_dose import LowDoseProtocol, check_protocol

    if encoding not in ("log", "linear"):
        raise ConfigError(f"--encoding '{encoding}': expected log or linear")
    protocol = LowDoseProtocol()
    protocol = replace(protocol, detector=replace(protocol.detector, encoding=encoding, full_dose_photons=full_dose_photons))
    check_protocol(protocol)
    return protocol
