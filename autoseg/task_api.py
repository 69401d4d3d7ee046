"""The clinical tasks' own commands (autoseg/tasks) as Python functions: the list of task profiles,
dose simulation and evaluation, lumbar radiograph QC, localized prediction, table removal, DTI
preparation, regions and metrics. `autoseg.api` re-exports every one, so the API is one
namespace; this module imports nothing of the generic API, which keeps the house one-directional."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoseg.progress import ProgressFactory, task


def tasks() -> list:
    """Every registered clinical task profile (autoseg/tasks), by name."""
    from autoseg.tasks import TASKS

    return [TASKS.get(name) for name in TASKS.names()]


# ---------------------------------------------------------------- task cervical-lowdose
def simulate_dose(input_dir: str | Path, out_dir: str | Path, doses: Sequence[float], seed: int = 0, protocol=None,
                  progress: ProgressFactory | None = None):
    """Reduced-dose copies of a dataset folder or image folder, one folder per dose, with
    dose_quality.csv (PSNR/SSIM per image) and dose_quality_summary.csv; see autoseg/tasks/dose_study.py."""
    from autoseg.tasks.dose_study import simulate_dataset

    return simulate_dataset(input_dir, out_dir, doses, seed, protocol, progress)


def evaluate_dose(models: Sequence[str | Path], images_dir: str | Path, labels_dir: str | Path, out_dir: str | Path,
                  doses: Sequence[float] | None = None, seed: int = 0, device: str = "auto", tta: bool = True,
                  progress: ProgressFactory | None = None):
    """Dice/IoU per simulated dose group beside PSNR/SSIM, with a Wilcoxon test against full dose;
    writes dose_summary.json/.csv, dose_cases.csv and dose_curve.png (autoseg/tasks/dose_evaluation.py)."""
    from autoseg.tasks.dose_evaluation import DEFAULT_DOSES
    from autoseg.tasks.dose_evaluation import evaluate_dose as run

    return run(models, images_dir, labels_dir, out_dir, doses or DEFAULT_DOSES, seed, device, tta, progress)


# ---------------------------------------------------------------- task lumbar-xray-qc
def qc(images_dir: str | Path, predictions_dir: str | Path, out_dir: str | Path,
       positions: str | Path | None = None, rules: str | Path | None = None):
    """Lumbar radiograph quality control from label maps: qc.json, qc.csv and an overlay PNG per
    not-qualified image in out_dir (autoseg/tasks/qc_report.py); everything is checked first."""
    from autoseg.tasks.qc_report import run_qc

    return run_qc(images_dir, predictions_dir, out_dir, positions, rules)


def qc_evaluate(qc_json: str | Path, reference_json: str | Path, out_json: str | Path | None = None) -> dict:
    """Accuracy, sensitivity and specificity of QC verdicts per position and overall, and criterion
    agreement with a reference qc.json (autoseg/tasks/qc_evaluation.py); written to out_json if given."""
    from autoseg.schema import write_json_atomic
    from autoseg.tasks.qc_evaluation import evaluate_qc

    result = evaluate_qc(qc_json, reference_json)
    if out_json is not None:
        write_json_atomic(out_json, result)
    return result


# ---------------------------------------------------------------- task lumbar-ct
def predict_localized(inputs, output_dir: str | Path, layout: str | Path, tta: bool = True, step_fraction: float = 0.5,
                      device: str = "auto", precision: str = "auto", skip_existing: bool = False,
                      progress: ProgressFactory | None = None) -> list[Path]:
    """Predict with a localize -> crop -> segment model: labels on each input's grid, a crop box
    (<case>.crop_box.json) and the task's report per case; an empty prediction and a warning when
    the localizer finds nothing (autoseg/inference/localized.py)."""
    from autoseg.inference.localized import LocalizedPredictor
    from autoseg.inference.predictor import OUTPUT_FOLDER, check_options
    from autoseg.localized_training import read_layout
    from autoseg.workdir import check_folder

    check_options(step_fraction, precision=precision)
    check_folder(output_dir, OUTPUT_FOLDER)
    predictor = LocalizedPredictor(read_layout(layout), device, precision, tta, step_fraction)
    return predictor.predict_folder(inputs, output_dir, skip_existing, progress)


# ---------------------------------------------------------------- task skeleton-ct
def remove_table(image: str | Path, output: str | Path, mask: str | Path | None = None, picture: str | Path | None = None,
                 threshold_hu: float = -500.0, opening_mm: float = 6.0):
    """Write a CT without its scanner table (outside the body -> -1000 HU, same geometry), as task
    skeleton-ct's case step does; optionally the body mask and a PNG (autoseg/tasks/table_removal.py)."""
    from autoseg.tasks.table_removal import remove_table_file

    return remove_table_file(image, output, mask, picture, threshold_hu, opening_mm)


# ---------------------------------------------------------------- task dti-cord
def dti_prepare(raw_dir: str | Path, out_dir: str | Path, channels: Sequence[str] = ("b0",),
                labels_dir: str | Path | None = None, regions: bool = False, b0_threshold: float = 50.0,
                align_b0: bool = False, fit_method: str = "WLS", progress: ProgressFactory | None = None):
    """Raw 4D DWI cases -> an nnU-Net-layout dti-cord dataset (b=0 and optional tensor-map channels,
    labels, dwi/ copies, dataset.json naming the task); see autoseg/tasks/dti_prepare.py."""
    from autoseg.modalities.dwi import find_dwi_files
    from autoseg.tasks.dti_prepare import prepare_dataset

    advance = task(progress, "Preparing", len(find_dwi_files(raw_dir)))
    return prepare_dataset(raw_dir, out_dir, channels, labels_dir, regions, b0_threshold, align_b0, fit_method, advance)


def dti_regions(labels_dir: str | Path, out_dir: str | Path, white: int = 1, gray: int = 2):
    """White/gray matter label maps (a folder, or a dataset's labelsTr) -> the eight cord regions."""
    from autoseg.tasks.region_maps import convert_folder

    return convert_folder(labels_dir, out_dir, white, gray)


def dti_metrics(dwi_dir: str | Path, pred_dir: str | Path, out_dir: str | Path, ref_dir: str | Path | None = None,
                fit_method: str = "WLS", b0_threshold: float = 50.0, progress: ProgressFactory | None = None):
    """Mean FA, MD, AD, RD per case and region (sct_extract_metric-shaped CSV) and, with references,
    the FA-index error per region; see autoseg/tasks/dti_metrics.py."""
    from autoseg.tasks.dti_metrics import label_files, run_dti_metrics

    advance = task(progress, "Measuring", len(label_files(Path(pred_dir), "prediction (-p)")))
    return run_dti_metrics(dwi_dir, pred_dir, out_dir, ref_dir, fit_method, b0_threshold, advance)
