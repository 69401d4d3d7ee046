"""`autoseg simulate-dose`: reduced-dose copies of a dataset or image folder, with their image quality.

For each dose f, every image is simulated (autoseg.modalities.xray_dose) with a seed derived from
(seed, file name, f), so one image's result depends on nothing else and the same seed gives
byte-identical files. A dataset folder (nnU-Net layout) becomes one dataset folder per dose,
`<name>_dose<f>`: imagesTr/imagesTs simulated, labels and the other files copied unchanged, and
dataset.json noting the dose. A plain image folder becomes `dose<f>/` with the same file names.
`dose_quality.csv` holds PSNR (dB) and SSIM of every simulated image against its original,
`dose_quality_summary.csv` their mean and SD per dose.

Everything is checked before anything is written (doses, the input, every image non-negative, no
output folder in the way); each dose folder is assembled under a hidden name and renamed into place.
"""
from __future__ import annotations

import csv
import io as text_io
import json
import logging
import math
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import io, schema
from autoseg.atomic import atomic_write
from autoseg.errors import ConfigError
from autoseg.modalities.image_quality import psnr, ssim
from autoseg.modalities.xray_dose import LowDoseProtocol, check_dose, check_image, check_protocol, simulate_low_dose
from autoseg.progress import ProgressFactory, task

log = logging.getLogger(__name__)

QUALITY_CSV = "dose_quality.csv"
QUALITY_SUMMARY_CSV = "dose_quality_summary.csv"
IMAGE_FOLDERS = ("imagesTr", "imagesTs")


@dataclass(frozen=True)
class DoseQuality:
    dose: float
    image: str  # path relative to the input folder
    psnr_db: float  # inf for an unchanged image
    ssim: float


@dataclass(frozen=True)
class SimulationResult:
    folders: dict[float, Path]  # dose -> the folder written
    quality_csv: Path
    summary_csv: Path
    summary: list[dict]  # per dose: dose, n, psnr_db mean/sd, ssim mean/sd


# ---------------------------------------------------------------- one image
def image_seed(seed: int, name: str, dose: float) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), int(round(dose * 1e6))])


def simulate_image(image: np.ndarray, spacing: Sequence[float], dose: float, protocol: LowDoseProtocol,
                   seed: np.random.SeedSequence) -> np.ndarray:
    """Every channel of `image` (C, *spatial) at `dose`; same shape and dtype."""
    rng = np.random.default_rng(seed)
    return np.stack([simulate_low_dose(channel, dose, rng, protocol, spacing) for channel in image])


def image_quality(original: np.ndarray, simulated: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of a (C, *spatial) image, averaged over channels."""
    pairs = list(zip(original, simulated))
    return (float(np.mean([psnr(a, b) for a, b in pairs])), float(np.mean([ssim(a, b) for a, b in pairs])))


# ---------------------------------------------------------------- checks before any work
def check_doses(doses: Sequence[float]) -> tuple[float, ...]:
    """Doses as given, each in (0, 1] and none twice."""
    if not doses:
        raise ConfigError("--doses: expected at least one dose fraction, e.g. 0.5,0.25,0.1,0.075")
    for dose in doses:
        try:
            check_dose(dose)
        except ConfigError as exc:
            raise ConfigError(f"--doses: {exc}") from None
    if len(set(doses)) != len(doses):
        raise ConfigError(f"--doses {','.join(f'{d:g}' for d in doses)}: a dose is listed twice")
    return tuple(float(d) for d in doses)


def parse_doses(text: str) -> tuple[float, ...]:
    """'0.5,0.25' -> (0.5, 0.25); a non-number names itself."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(item))
        except ValueError:
            raise ConfigError(f"--doses '{text}': '{item.strip()}' is not a number; expected fractions separated "
                              "by commas, e.g. 0.5,0.25,0.1,0.075") from None
    return check_doses(values)


def input_images(root: Path) -> tuple[bool, list[Path]]:
    """(is a dataset, its image files): imagesTr/imagesTs of a dataset folder, else the folder's images."""
    if not root.is_dir():
        raise ConfigError(f"{root}: input folder not found; pass a dataset folder (nnU-Net layout) or a folder of images")
    is_dataset = (root / "dataset.json").is_file()
    if is_dataset:
        from autoseg.dataset import load_dataset

        load_dataset(root)  # the structure, every problem at once
        files = [p for folder in IMAGE_FOLDERS if (root / folder).is_dir() for p in _images_in(root / folder)]
    else:
        files = _images_in(root)
    if not files:
        raise ConfigError(f"{root}: holds no images ({', '.join(io.IMAGE_ENDINGS)}); pass a dataset folder or a folder of images")
    return is_dataset, files


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and io.file_ending(p) in io.IMAGE_ENDINGS)


def check_images(files: Sequence[Path], progress: ProgressFactory | None = None) -> None:
    """Every image readable, real-valued and non-negative; the error names the file."""
    advance = task(progress, "Checking images", len(files))
    for path in files:
        try:
            check_image(io.read_image(path)[0])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        advance(1)


def output_folder(out_dir: Path, root: Path, is_dataset: bool, dose: float) -> Path:
    return out_dir / (f"{root.resolve().name}_dose{dose:g}" if is_dataset else f"dose{dose:g}")


# ---------------------------------------------------------------- the command
def simulate_dataset(input_dir: str | Path, out_dir: str | Path, doses: Sequence[float], seed: int = 0,
                     protocol: LowDoseProtocol | None = None, progress: ProgressFactory | None = None) -> SimulationResult:
    """Write one simulated copy of `input_dir` per dose into `out_dir`, and the quality CSVs."""
    root, out_dir = Path(input_dir), Path(out_dir)
    doses, protocol = check_doses(list(doses)), protocol or LowDoseProtocol()
    check_protocol(protocol)
    is_dataset, files = input_images(root)
    targets = {dose: output_folder(out_dir, root, is_dataset, dose) for dose in doses}
    in_the_way = [str(t) for t in [*targets.values(), out_dir / QUALITY_CSV, out_dir / QUALITY_SUMMARY_CSV] if t.exists()]
    if in_the_way:
        raise ConfigError(f"{', '.join(in_the_way)}: already exist(s); choose another output folder (-o) or remove them")
    check_images(files, progress)
    rows: list[DoseQuality] = []
    advance = task(progress, "Simulating", len(files) * len(doses))
    for dose, target in targets.items():
        rows += _write_dose_folder(root, files, is_dataset, dose, target, seed, protocol, advance)
    quality_csv, summary_csv, summary = write_quality(out_dir, rows)
    return SimulationResult(targets, quality_csv, summary_csv, summary)


def _write_dose_folder(root: Path, files: list[Path], is_dataset: bool, dose: float, target: Path, seed: int,
                       protocol: LowDoseProtocol, advance) -> list[DoseQuality]:
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    rows = []
    for path in files:
        relative = path.relative_to(root)
        image, geometry = io.read_image(path)
        simulated = simulate_image(image, geometry.spacing_zyx, dose, protocol, image_seed(seed, relative.as_posix(), dose))
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        io.write_image(staging / relative, simulated[0] if simulated.shape[0] == 1 else simulated, geometry)
        rows.append(DoseQuality(dose, relative.as_posix(), *image_quality(image, simulated)))
        advance(1)
    if is_dataset:
        _copy_unsimulated(root, staging, dose)
    staging.rename(target)
    log.info("dose %g: %d image(s) in %s", dose, len(files), target)
    return rows


def _copy_unsimulated(root: Path, staging: Path, dose: float) -> None:
    """Labels and every other file unchanged; dataset.json notes the simulated dose."""
    for entry in root.iterdir():
        if entry.name in IMAGE_FOLDERS or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        elif entry.name == "dataset.json":
            meta = json.loads(entry.read_text())
            meta["simulated_dose_fraction"] = dose
            meta["simulated_from"] = str(root.resolve())
            (staging / entry.name).write_text(json.dumps(meta, indent=2) + "\n")
        else:
            shutil.copy2(entry, staging / entry.name)


# ---------------------------------------------------------------- quality files
def summarize_quality(rows: Sequence[DoseQuality]) -> list[dict]:
    summary = []
    for dose in dict.fromkeys(r.dose for r in rows):
        group = [r for r in rows if r.dose == dose]
        summary.append({"dose": dose, "n": len(group), **_mean_sd("psnr_db", [r.psnr_db for r in group]),
                        **_mean_sd("ssim", [r.ssim for r in group])})
    return summary


def _mean_sd(name: str, values: Sequence[float]) -> dict[str, float]:
    """Mean and sample SD; an unchanged image's infinite PSNR makes the mean inf (SD then nan)."""
    array = np.asarray(values, dtype=float)
    if np.isinf(array).any():
        return {f"{name}_mean": math.inf, f"{name}_sd": math.nan}
    return {f"{name}_mean": float(array.mean()), f"{name}_sd": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def write_quality(out_dir: Path, rows: Sequence[DoseQuality]) -> tuple[Path, Path, list[dict]]:
    summary = summarize_quality(rows)
    per_image = [{"dose": r.dose, "image": r.image, "psnr_db": r.psnr_db, "ssim": r.ssim} for r in rows]
    return write_csv(out_dir / QUALITY_CSV, per_image), write_csv(out_dir / QUALITY_SUMMARY_CSV, summary), summary


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Rows of plain values as CSV (floats to 6 significant digits), written atomically."""
    buffer = text_io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def protocol_document(protocol: LowDoseProtocol) -> dict:
    return schema.to_dict(protocol)
