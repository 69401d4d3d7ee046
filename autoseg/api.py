"""The Python API. The CLI is a thin layer over these functions; they take plain values and paths,
return documents, and report long work through an optional progress factory."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from autoseg import schema
from autoseg.config import Fingerprint, Plan
from autoseg.dataset import Dataset, validate_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.progress import ProgressFactory, task
from autoseg.task_api import (  # noqa: F401  re-exported: the tasks' commands are part of this API
    dti_metrics, dti_prepare, dti_regions, evaluate_dose, predict_localized, qc, qc_evaluate, remove_table,
    simulate_dose, tasks,
)
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)


def validate(dataset_dir: str | Path, workers: int = 2, progress: ProgressFactory | None = None) -> Dataset:
    """Check a dataset folder; raises DatasetError listing every problem."""
    from autoseg.dataset import load_dataset
    from autoseg.errors import DatasetError

    try:
        found = load_dataset(dataset_dir)
        total = len(found.cases) + len(found.test_cases)
    except DatasetError:
        total = 0  # structural problems: validate_dataset reports them together with the rest
    return validate_dataset(dataset_dir, workers=workers, progress=task(progress, "Validating", total))


def fingerprint(dataset: Dataset, workers: int = 2, progress: ProgressFactory | None = None) -> Fingerprint:
    return compute_fingerprint(dataset, workers=workers, progress=task(progress, "Fingerprinting", len(dataset.cases)))


def plan(
    dataset_dir: str | Path,
    workdir: str | Path | None = None,
    gpu_memory_gb: float = 8.0,
    configs: Sequence[str] | None = None,
    network: str = "unet",
    workers: int = 2,
    progress: ProgressFactory | None = None,
    time_budget_s: float | None = None,
    device: str = "auto",
    task: str | None = None,
    task_options: dict | None = None,
) -> tuple[Plan, Path]:
    """Validate, fingerprint and plan a dataset; writes fingerprint.json and plan.json.

    With `time_budget_s` every configuration is sized to learn the most within that training time on
    `device` (step times measured here, cached in the workdir; see planners/time_budget.py).
    `task` (a registered clinical task, see `tasks()`; else dataset.json's "task", if any) is
    recorded in every configuration, with its default configurations unless `configs` are given.
    Nothing is written unless validation passes. Returns the plan and the plan.json path.
    """
    from autoseg.planners import plan_dataset
    from autoseg.tasks import apply_task, task_plan
    from autoseg.workdir import check_folder

    wd = Workdir.at(workdir)
    check_folder(wd.root, "workdir (--workdir)")  # before the work whose results it must hold
    chosen = task_plan(task, task_options, "--task options") if task is not None else None
    dataset = validate(dataset_dir, workers=workers, progress=progress)
    chosen = chosen or _dataset_task(dataset)
    if chosen is not None and not configs:
        from autoseg.tasks import TASKS

        configs = list(TASKS.get(chosen.name).configurations) or None
    facts = fingerprint(dataset, workers=workers, progress=progress)
    decided = plan_dataset(facts, gpu_memory_gb=gpu_memory_gb, configs=configs, network=network)
    if time_budget_s is not None:
        from autoseg.planners.budget_setup import plan_for_budget

        decided = plan_for_budget(decided, facts, time_budget_s, device, gpu_memory_gb, wd.step_time_cache, network)
    decided = apply_task(decided, chosen)
    schema.write_json_atomic(wd.fingerprint_path(dataset.name), facts)
    path = schema.write_json_atomic(wd.plan_path(dataset.name), decided)
    log.info("plan written to %s", path)
    return decided, path


def _dataset_task(dataset: Dataset):
    """The task dataset.json names, checked (an unknown name or option names the file)."""
    from autoseg.errors import ConfigError, RegistryError
    from autoseg.tasks import task_plan

    if dataset.task is None:
        return None
    where = f"{dataset.root / 'dataset.json'}: task"
    try:
        return task_plan(dataset.task["name"], dataset.task["options"], f"{where} options")
    except RegistryError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- task lumbar-ct
def train_localized(dataset_dir: str | Path, fold: str | int = 0, workdir: str | Path | None = None,
                    localizer: str | None = None, margin_mm: float | None = None,
                    progress: ProgressFactory | None = None, on_event=None, **options) -> Path:
    """Train a localize -> crop -> segment model (e.g. task lumbar-ct): the localizer configuration
    (default: the task's, 3d_lowres), a crop dataset cut to the labels plus `margin_mm`, and
    3d_fullres on the crops; returns the folder holding layout.json (autoseg/localized_training.py)."""
    from autoseg.localized_training import Stages
    from autoseg.localized_training import train_localized as run

    stages = Stages(train=train, plan=plan, load_or_make_plan=load_or_make_plan)
    return run(stages, dataset_dir, fold, workdir, localizer, margin_mm, progress, on_event, **options)


def example(name: str, out_dir: str | Path, cases: int | None = None, seed: int = 0, overwrite: bool = False, **size_options) -> Path:
    """Write a synthetic phantom dataset for one of the five clinical tasks; returns its folder.
    `size_options`: `scale` (all phantoms: finer grid, same anatomy) and phantom-specific ones."""
    from autoseg.phantoms import write_example

    return write_example(name, out_dir, cases=cases, seed=seed, overwrite=overwrite, **size_options)


def load_or_make_plan(dataset: Dataset, workdir: Workdir, workers: int, progress: ProgressFactory | None,
                      time_budget_s: float | None = None, device: str = "auto") -> Plan:
    """The dataset's plan.json, planning first when there is none yet (for `time_budget_s` on
    `device` when given, else with defaults). An existing plan is kept as it is."""
    from autoseg.config import load_plan

    path = workdir.plan_path(dataset.name)
    if not path.is_file():
        made_for = f"a {time_budget_s / 60:g}-minute budget on {device}" if time_budget_s else "defaults"
        log.info("no plan for %s yet: planning for %s (run `autoseg plan` to choose options)", dataset.name, made_for)
        plan(dataset.root, workdir.root, workers=workers, progress=progress, time_budget_s=time_budget_s, device=device)
    decided = load_plan(path)
    if time_budget_s and not any(c.budget for c in decided.configurations.values()):
        log.info("%s was planned without a time budget; `autoseg plan --time-budget` sizes it for one", path)
    return decided


def preprocess(
    dataset_dir: str | Path,
    config: str,
    workdir: str | Path | None = None,
    workers: int = 2,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> Path:
    """Preprocess every training case for one configuration (skipped when already up to date)."""
    return _prepare(dataset_dir, config, Workdir.at(workdir), workers, progress, force)[2]


def _prepare(dataset_dir, config: str, wd: Workdir, workers: int, progress, force: bool = False,
             time_budget_s: float | None = None, device: str = "auto") -> tuple[Dataset, Plan, Path]:
    """The dataset, its plan (made first if missing) and the configuration's preprocessed folder."""
    from autoseg.dataset import load_dataset
    from autoseg.preprocessing import preprocess_dataset

    dataset = load_dataset(dataset_dir)
    decided = load_or_make_plan(dataset, wd, workers, progress, time_budget_s, device)
    cascade = decided.config(config).previous_stage is not None  # unknown configuration: a PlanError naming the planned ones
    if cascade:  # refused before any work when the first stage's out-of-fold predictions are missing
        from autoseg.cascade import add_previous_stage, out_of_fold_predictions
        out_of_fold_predictions(dataset, decided, config, wd.root)
    folder = preprocess_dataset(
        dataset, decided, config, wd.preprocessed_dir(dataset.name, config), workers=workers,
        progress=task(progress, f"Preprocessing {config}", len(dataset.cases)), force=force,
    )
    if cascade:
        add_previous_stage(folder, dataset, decided, config, wd.root)
    return dataset, decided, folder


def train(
    dataset_dir: str | Path,
    config: str,
    fold: str | int,
    workdir: str | Path | None = None,
    resume: bool = False,
    run_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
    on_event=None,
    num_folds: int | None = None,
    group_by: str | None = None,
    rebuild_splits: bool = False,
    **options,
) -> Path:
    """Train one fold ("0".."k-1", or "full" for every case) of one configuration; returns the run
    folder. `options` are TrainConfig fields. Folds: see `cross_validate`.

    Options, fold and devices are checked before any work; the run folder is locked for the whole
    run (a second training of it is refused), and temporaries a killed run left there are removed.
    """
    from autoseg.atomic import sweep_stale_temporaries
    from autoseg.config import TrainConfig
    from autoseg.dataset import load_dataset
    from autoseg.devices import resolve_device, resolve_precision
    from autoseg.registry import TRAINERS
    from autoseg.tasks.profile import case_weights
    from autoseg.trainers.distributed import joined
    from autoseg.trainers.run_folder import check_not_in_use, check_run_cases, run_lock, run_log
    from autoseg.trainers.splits import fold_cases

    import autoseg.trainers  # noqa: F401  (registers trainers)

    wd, dataset = Workdir.at(workdir), load_dataset(dataset_dir)
    train_config = TrainConfig(dataset_name=dataset.name, config=config, fold=str(fold), **options)
    trainer_cls = TRAINERS.get(train_config.trainer)
    resolve_precision(train_config.precision, resolve_device(train_config.device))  # e.g. cuda without a GPU
    with joined(train_config.device) as ranks:  # the ranks torchrun started train together; else one process
        with ranks.main_first():  # rank 0 alone checks the run folder and writes splits, plan, preprocessed data
            train_ids, val_ids = fold_cases(dataset, wd.splits_path(dataset.name), str(fold), num_folds, group_by, rebuild_splits)
            run = Path(run_dir) if run_dir else wd.run_dir(dataset.name, config, fold)
            if ranks.is_main:
                check_not_in_use(run)  # at once, not after preprocessing
                if resume:
                    check_run_cases(run, train_ids, val_ids)
            workers = max(1, train_config.workers)  # process pools; the loader itself may run in-process (0)
            dataset, decided, folder = _prepare(dataset_dir, config, wd, workers, progress if ranks.is_main else None,
                                                time_budget_s=train_config.time_budget_s, device=train_config.device)
        train_config = _with_planned_budget(train_config, decided.config(config), length_given="epochs" in options)
        with ranks.main_only(run_lock(run)), ranks.main_only(run_log(run)):  # the run folder is rank 0's
            if ranks.is_main:
                sweep_stale_temporaries(run)
            weights = case_weights(decided.config(config).task, dataset.root, train_ids)
            trainer = trainer_cls(decided, decided.config(config), train_config, folder, run, train_ids, val_ids,
                                  on_event if ranks.is_main else None, dist=ranks, case_weights=weights)
            trainer.fit(resume=resume)
    return run


def _with_planned_budget(options, config_plan, length_given: bool):
    """A run of a budget-aware plan given no length (--time-budget or --epochs) trains for the plan's
    budget: its patch, batch and network were sized for that time, not for 1000 epochs."""
    from dataclasses import replace

    if options.time_budget_s is None and not length_given and config_plan.budget is not None:
        log.info("training for the plan's time budget of %g min (--time-budget sets another)", config_plan.budget.time_budget_s / 60)
        return replace(options, time_budget_s=config_plan.budget.time_budget_s)
    return options


def cross_validate(dataset_dir: str | Path, config: str, folds: Sequence[str] | None = None,
                   workdir: str | Path | None = None, num_folds: int | None = None, group_by: str | None = None,
                   progress: ProgressFactory | None = None, on_event=None, rebuild_splits: bool = False,
                   parallel: int = 1, devices: Sequence[str] = (), **options) -> Path:
    """Train every fold (or `folds`) in turn, resumably, then predict each fold's validation cases and
    write <config>/crossval/crossval.json. Folds come from the dataset's splits_final.json, else groups
    (dataset.json "groups" or the `group_by` regex on case ids), else seeded `num_folds`-fold splits
    (5 unless given), recorded in the workdir; options that disagree with recorded folds are refused
    unless `rebuild_splits`. Every requested fold is checked before the first one trains.
    `parallel` > 1 trains that many folds at once, each in its own process, on `devices` in turn
    (default: the `device` option, the CPU cores split between the folds)."""
    from autoseg.crossval import FoldSteps, cross_validate as run

    return run(FoldSteps(train=train, prepare=_prepare), dataset_dir, config, folds, workdir, num_folds, group_by,
               progress, on_event, rebuild_splits=rebuild_splits, parallel=parallel, devices=devices, **options)


def resolve_models(models: Sequence[str | Path] = (), dataset: str | None = None, config: str | None = None,
                   folds: Sequence[str] = (), workdir: str | Path | None = None) -> list[Path]:
    """Run folders or checkpoint files given directly, or found in the workdir by dataset/config/folds."""
    from autoseg.errors import ConfigError

    paths = [Path(m) for m in models]
    if dataset or config:
        if not (dataset and config):
            raise ConfigError("give both --dataset and --config to find trained runs in the workdir")
        wd = Workdir.at(workdir)
        paths += [wd.run_dir(dataset, config, f) for f in (folds or _trained_folds(wd, dataset, config))]
    if not paths:
        raise ConfigError("no model given: pass --model RUN_FOLDER (repeatable) or --dataset NAME --config CONFIG [--folds 0,1]")
    return paths


def _trained_folds(wd: Workdir, dataset: str, config: str) -> list[str]:
    """Default ensemble: every cross-validation fold trained, else the model trained on every case."""
    folder = wd.run_dir(dataset, config, 0).parent
    numbered = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.name[len("fold_"):].isdigit())
    return numbered or ["full"]


def predict_folder(
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    models: Sequence[str | Path],
    save_probabilities: bool = False,
    skip_existing: bool = False,
    tta: bool = True,
    step_fraction: float = 0.5,
    device: str = "auto",
    precision: str = "auto",
    keep_largest: bool = False,
    progress: ProgressFactory | None = None,
    max_tile_growth: float = 1.0,
    slicewise: bool = False,
) -> list[Path]:
    """Predict every case of a folder (nnU-Net naming), a list of files, or DICOM series folders.
    `max_tile_growth`: tiles may grow up to this factor of the patch per axis where that computes
    fewer voxels than overlapping patches (1.0: always patch-sized tiles, nnU-Net's tiling).
    `slicewise`: let a model trained on 2D images predict 3D volumes slice by slice (else refused)."""
    from autoseg.devices import resolve_device
    from autoseg.inference.predictor import OUTPUT_FOLDER, Predictor, check_options, load_models
    from autoseg.workdir import check_folder

    check_options(step_fraction, max_tile_growth, precision)  # before the models are loaded
    check_folder(output_dir, OUTPUT_FOLDER)
    resolved = resolve_device(device)
    predictor = Predictor(load_models(models, resolved), resolved, precision, tta, step_fraction,
                          keep_largest=keep_largest, max_tile_growth=max_tile_growth, slicewise=slicewise)
    return predictor.predict_folder(inputs, output_dir, save_probabilities, skip_existing, progress)


def predict(image, models, spacing=None, **options):
    """Predict one in-memory image: a SimpleITK image (returns a label image with its geometry) or a
    numpy array (*spatial) / (C, *spatial) with `spacing` in numpy order (returns a label array)."""
    from autoseg.inference.predictor import predict as predict_image

    return predict_image(image, models, spacing=spacing, **options)


def evaluate(pred_dir: str | Path, ref_dir: str | Path, overlays: int = 0, images_dir: str | Path | None = None,
             workers: int = 2, progress: ProgressFactory | None = None, case_ids: Sequence[str] | None = None,
             only_predicted: bool = False, task: str | None = None):
    """Score predictions against references (every reference case, or only `case_ids`; with
    `only_predicted` the reference cases that have a prediction); writes summary.json and
    summary.csv into pred_dir. A clinical task's own metrics (`task`, else the one the predictions'
    reports or dataset.json name) go under summary.json's "task_metrics"."""
    from autoseg.evaluation import evaluate_folders

    return evaluate_folders(pred_dir, ref_dir, workers=workers, progress=progress, overlays=overlays,
                            images_dir=images_dir, case_ids=case_ids, only_predicted=only_predicted, task_name=task)


def find_best(dataset: str, workdir: str | Path | None = None, dataset_dir: str | Path | None = None,
              configs: Sequence[str] | None = None, progress: ProgressFactory | None = None):
    """Pick the best configuration or pair of configurations from cross-validation, decide
    postprocessing, and write <workdir>/runs/<dataset>/best.json (a model bundle)."""
    from autoseg.model_selection import find_best as select

    return select(dataset, workdir, dataset_dir, configs, progress)


def ensemble(prediction_dirs: Sequence[str | Path], out_dir: str | Path, postprocessing_from: str | Path | None = None) -> list[Path]:
    """Average the probabilities saved in several prediction folders (predict --save-probabilities)."""
    from autoseg.ensembling import ensemble_folders
    from autoseg.inference.bundle import load_bundle

    postprocessing = load_bundle(postprocessing_from)[0].postprocessing if postprocessing_from else None
    return ensemble_folders(prediction_dirs, out_dir, postprocessing)


def predict_bundle_folder(inputs, output_dir: str | Path, bundle: str | Path, save_probabilities: bool = False,
                          skip_existing: bool = False, tta: bool = True, step_fraction: float = 0.5,
                          device: str = "auto", precision: str = "auto", progress: ProgressFactory | None = None,
                          slicewise: bool = False) -> list[Path]:
    """Predict with a model bundle (best.json, or a folder holding model.json): its members'
    probabilities are averaged and its postprocessing applied. `slicewise`: as in predict_folder."""
    from autoseg.inference.bundle_predictor import BundlePredictor
    from autoseg.inference.predictor import OUTPUT_FOLDER, check_options
    from autoseg.workdir import check_folder

    check_options(step_fraction, precision=precision)  # before the models are loaded
    check_folder(output_dir, OUTPUT_FOLDER)
    predictor = BundlePredictor(bundle, device, precision, tta, step_fraction, slicewise=slicewise)
    return predictor.predict_folder(inputs, output_dir, save_probabilities, skip_existing, progress)


def is_bundle(path: str | Path) -> bool:
    from autoseg.inference.bundle import BUNDLE_FILE

    path = Path(path)
    return path.suffix == ".json" or (path / BUNDLE_FILE).is_file()


def export_model(source: str | Path, out_zip: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Pack a run folder, model folder or best.json into one zip: weights and plans, no training state."""
    from autoseg.sharing import export_model as export

    return export(source, out_zip, name, overwrite)


def import_model(zip_path: str | Path, workdir: str | Path | None = None, name: str | None = None, overwrite: bool = False) -> Path:
    """Check a model zip and unpack it into <workdir>/models/<name>; returns that folder."""
    from autoseg.sharing import import_model as unpack

    return unpack(zip_path, workdir, name, overwrite)


def export_onnx(run_or_checkpoint: str | Path, out_onnx: str | Path, opset: int = 17, check: bool = True,
                tolerance: float = 1e-3, overwrite: bool = False) -> dict:
    """Export one network to ONNX, checked against PyTorch with onnxruntime (max |diff| <= tolerance)."""
    from autoseg.onnx_export import export_onnx as export

    return export(run_or_checkpoint, out_onnx, opset, check, tolerance, overwrite)
