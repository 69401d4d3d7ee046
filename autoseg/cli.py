"""Command line: parse, call autoseg.api, render with rich. Heavy imports stay inside commands so
`autoseg --help` is instant. The app and its error/progress plumbing live in autoseg/cli_app.py."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from autoseg.cli_app import (  # noqa: F401  (EXIT_PROBLEM: the exit code for user errors, part of this module's face)
    EXIT_PROBLEM, WorkdirOption, WorkersOption, app, console, out, progress_bars, under_torchrun, user_errors,
)
from autoseg.errors import ConfigError


@app.command()
def validate(dataset: Path = typer.Argument(..., help="Dataset folder (nnU-Net v2 raw layout)"), workers: int = WorkersOption) -> None:
    """Check a dataset folder and report every problem, one line each (exit code 2 on problems)."""
    from autoseg import api

    with user_errors(), progress_bars() as progress:
        ds = api.validate(dataset, workers=workers, progress=progress)
    out.print(f"[green]OK[/] {ds.name}: {len(ds.cases)} training cases, {len(ds.channel_names)} channel(s), {len(ds.labels)} labels")


@app.command()
def plan(
    dataset: Path = typer.Argument(..., help="Dataset folder (nnU-Net v2 raw layout)"),
    workdir: Optional[Path] = WorkdirOption,
    gpu_memory_gb: float = typer.Option(8.0, "--gpu-memory-gb", help="GPU memory budget for training, in GB"),
    configs: Optional[List[str]] = typer.Option(None, "--configs", "-c", help="Only these configurations (2d, 3d_fullres, 3d_lowres)"),
    network: str = typer.Option("unet", "--network", help="Registered network name (unet, resenc_unet)"),
    workers: int = WorkersOption,
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Size the plan to learn the most in this much training time on --device, e.g. 30m (step times are measured here)"),
    device: str = typer.Option("auto", "--device", help="With --time-budget: the device that will train (auto, cpu, cuda, cuda:N)"),
    task: Optional[str] = typer.Option(None, "--task", help="Clinical task profile (`autoseg tasks`), recorded in the plan [default: dataset.json's \"task\", if any]"),
    task_option: Optional[List[str]] = typer.Option(None, "--task-option", help="With --task: one of its options as KEY=VALUE (JSON or plain text, e.g. opening_mm=8, clip_hu=[-200,1500]); repeatable"),
    normalization: Optional[str] = typer.Option(None, "--normalization", help="With --task: its intensity normalization option, e.g. inter (dataset-wide) or intra (per patient) for skeleton-ct"),
) -> None:
    """Validate, fingerprint and plan a dataset; print the plan of every configuration."""
    from autoseg import api
    from autoseg.render import budget_reasons, plan_table
    from autoseg.tasks.option_pairs import parse_option_pairs
    from autoseg.trainers.schedule import parse_duration

    with user_errors():
        budget_s = parse_duration(time_budget) if time_budget else None
        task_options = parse_option_pairs(task_option or [], {"normalization": normalization})
        if task_options and task is None:
            raise ConfigError("--task-option and --normalization set options of a task; name it with --task")
        with progress_bars() as progress:
            decided, path = api.plan(dataset, workdir, gpu_memory_gb, configs, network, workers, progress,
                                     time_budget_s=budget_s, device=device, task=task, task_options=task_options or None)
    out.print(plan_table(decided))
    for line in budget_reasons(decided):
        out.print(line, highlight=False)
    out.print(f"plan written to [bold]{path}[/]")


@app.command()
def example(
    name: str = typer.Argument(..., help="cervical-xray, lumbar-xray, lumbar-ct, skeleton-ct or dti-cord"),
    out_dir: Path = typer.Argument(..., help="Folder to create the dataset in"),
    cases: Optional[int] = typer.Option(None, "--cases", help="Number of cases [default: the phantom's own]"),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same data)"),
    scale: Optional[float] = typer.Option(None, "--scale", help="Grid refinement (e.g. 2.5 gives clinical CT spacing); anatomy stays the same"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing phantom dataset in OUT_DIR"),
    option: Optional[List[str]] = typer.Option(None, "--option", help="A phantom option as KEY=VALUE, e.g. large_field=true (lumbar-ct: abdomen/trunk fields of view); repeatable"),
) -> None:
    """Generate a synthetic phantom dataset for one of the five clinical tasks."""
    from autoseg import api

    size = {"scale": scale} if scale is not None else {}
    with user_errors():
        size.update(_phantom_options(option or []))
        path = api.example(name, out_dir, cases=cases, seed=seed, overwrite=overwrite, **size)
    out.print(f"wrote [bold]{path}[/]")


def _phantom_options(pairs: List[str]) -> dict:
    """KEY=VALUE pairs, values read as JSON (true, 2.5) where they parse; the phantom checks them."""
    import json

    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option '{pair}': expected KEY=VALUE, e.g. large_field=true")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


@app.command()
def preprocess(
    dataset: Path = typer.Argument(..., help="Dataset folder"),
    config: str = typer.Argument(..., help="Configuration: 2d, 3d_fullres or 3d_lowres"),
    workdir: Optional[Path] = WorkdirOption,
    workers: int = WorkersOption,
    force: bool = typer.Option(False, "--force", help="Redo even when up to date"),
) -> None:
    """Preprocess a configuration's training cases (train does this itself when needed)."""
    from autoseg import api

    with user_errors(), progress_bars() as progress:
        folder = api.preprocess(dataset, config, workdir, workers, force, progress)
    out.print(f"preprocessed cases in [bold]{folder}[/]")


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder"),
    config: str = typer.Argument(..., help="Configuration: 2d, 3d_fullres or 3d_lowres"),
    fold: Optional[str] = typer.Argument(None, help="Fold number; 'all' for every fold in turn (cross-validation); 'full' for one model on every case"),
    workdir: Optional[Path] = WorkdirOption,
    folds: Optional[str] = typer.Option(None, "--folds", help="Cross-validate only these folds, e.g. 0,2,4"),
    num_folds: Optional[int] = typer.Option(None, "--num-folds", help="Folds to make when the dataset has no splits_final.json [default: 5, or the folds already made]"),
    group_by: Optional[str] = typer.Option(None, "--group-by", help="Regex on case ids naming the patient (first group), so a patient's images share a fold"),
    rebuild_splits: bool = typer.Option(False, "--rebuild-splits", help="Make new folds in the workdir from --num-folds/--group-by (runs of the old folds are then not comparable)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum number of epochs [default: 1000, or the time budget of a budget-aware plan]"),
    iters_per_epoch: int = typer.Option(250, "--iters-per-epoch", help="Training iterations per epoch"),
    val_iters: int = typer.Option(50, "--val-iters", help="Validation batches per epoch"),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall-clock budget per fold, e.g. 30m or 2h; the lr schedule follows it"),
    early_stop: Optional[int] = typer.Option(None, "--early-stop", help="Stop after this many epochs without a better EMA pseudo-Dice"),
    lr: float = typer.Option(1e-2, "--lr", help="Initial learning rate"),
    warmup: float = typer.Option(0.0, "--warmup", help="Fraction of the run over which the learning rate rises linearly to --lr (0: none)"),
    deep_supervision_ratio: float = typer.Option(0.5, "--deep-supervision-ratio", help="Loss weight of each coarser deep-supervision output relative to the next finer one (nnU-Net: 0.5; 1: equal)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Override the plan's batch size"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    deterministic: bool = typer.Option(False, "--deterministic", help="Reproducible results (slower)"),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(2, "--workers", help="Data loader processes (0: in-process)"),
    checkpoint_every: int = typer.Option(5, "--checkpoint-every", help="Epochs between 'latest' checkpoints"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint (cross-validation resumes by itself)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder [default: <workdir>/runs/<dataset>/<config>/fold_<k>]"),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel training on N processes of this machine (one GPU each on CUDA; they split the plan's batch); starts torchrun for you"),
    parallel: int = typer.Option(1, "--parallel", help="Cross-validation: train up to N folds at once, each in its own process"),
    devices: Optional[str] = typer.Option(None, "--devices", help="With --parallel: devices the folds take in turn, e.g. cuda:0,cuda:1 [default: --device]"),
) -> None:
    """Train a U-Net for one configuration: one fold, or every fold in turn (preprocessing first when needed)."""
    from autoseg import api
    from autoseg.live import TrainingDisplay
    from autoseg.trainers.schedule import parse_duration

    with user_errors():
        cross_validation = _is_cross_validation(fold, folds)
        fold_names = _split_folds(folds)
        _check_scale_out(nproc, parallel, devices, cross_validation)
        if nproc > 1:
            from autoseg.trainers.launch import check_launch, launch

            check_launch(nproc, device, batch_size)
            raise typer.Exit(launch(nproc, sys.argv[1:]))
        options = dict(
            iters_per_epoch=iters_per_epoch, val_iters=val_iters, early_stop=early_stop, lr=lr, warmup=warmup,
            deep_supervision_ratio=deep_supervision_ratio, batch_size=batch_size, precision=precision, device=device,
            time_budget_s=parse_duration(time_budget) if time_budget is not None else None, deterministic=deterministic,
            seed=seed, workers=workers, checkpoint_every=checkpoint_every, **({"epochs": epochs} if epochs is not None else {}),
        )
        with progress_bars() as progress, TrainingDisplay(console) as display:
            if cross_validation:
                result = api.cross_validate(dataset, config, fold_names, workdir, num_folds, group_by,
                                            progress=progress, on_event=display.update, rebuild_splits=rebuild_splits,
                                            parallel=parallel, devices=_split_devices(devices), **options)
            else:
                result = api.train(dataset, config, fold, workdir, resume=resume, run_dir=run_dir, progress=progress,
                                   on_event=display.update, num_folds=num_folds, group_by=group_by,
                                   rebuild_splits=rebuild_splits, **options)
    _report_training(result, cross_validation)


def _report_training(result: Path, cross_validation: bool) -> None:
    """The run folder, or the cross-validation's table and folder."""
    from autoseg import schema
    from autoseg.render import crossval_table

    if under_torchrun() and os.environ.get("RANK") != "0":  # rank 0 reports for all
        return
    if not cross_validation:
        out.print(f"run folder: [bold]{result}[/] (checkpoints, run.json, progress.png, train.log)")
        return
    summary = schema.read_json(result / "crossval.json")
    out.print(crossval_table(summary))
    state = "complete" if summary["complete"] else f"{len(summary['folds'])} of {summary['num_folds']} folds"
    out.print(f"cross-validation ({state}): [bold]{result}[/]; next: `autoseg find-best DATASET_NAME`")


def _is_cross_validation(fold: Optional[str], folds: Optional[str]) -> bool:
    """FOLD 'all' or --folds trains folds in turn; otherwise FOLD names the one fold to train."""
    if fold is None and folds is None:
        raise ConfigError("give a FOLD (a number, 'all' or 'full') or --folds 0,1,...")
    if folds is not None and fold not in (None, "all"):
        raise ConfigError(f"--folds goes with FOLD 'all' or no FOLD, not '{fold}'")
    return fold == "all" or folds is not None


def _check_scale_out(nproc: int, parallel: int, devices: Optional[str], cross_validation: bool) -> None:
    if nproc < 1:
        raise ConfigError(f"--nproc: expected a number of processes >= 1, found {nproc}")
    if parallel < 1:
        raise ConfigError(f"--parallel: expected a number of folds >= 1, found {parallel}")
    if parallel > 1 and not cross_validation:
        raise ConfigError("--parallel trains cross-validation folds at once: use it with FOLD 'all' or --folds")
    if parallel > 1 and nproc > 1:
        raise ConfigError("--parallel and --nproc together: train folds side by side (--parallel) or each fold on "
                          "several processes (--nproc), not both")
    if devices is not None and parallel == 1:
        raise ConfigError("--devices names the devices of --parallel folds; pass --parallel N too (or --device for one run)")


def _split_devices(devices: Optional[str]) -> list[str]:
    names = [d.strip() for d in devices.split(",")] if devices is not None else []
    if not all(names):
        raise ConfigError(f"--devices '{devices}': expected devices separated by commas, e.g. cuda:0,cuda:1; found an empty one")
    return names


def _split_folds(folds: Optional[str]) -> list[str]:
    """'0,2,4' -> ['0', '2', '4']; None -> [] (all). An empty list or item is a mistake, not 'all'."""
    if folds is None:
        return []
    names = [f.strip() for f in folds.split(",")]
    if not all(names):
        raise ConfigError(f"--folds '{folds}': expected names separated by commas, e.g. 0,2,4; found an empty one")
    return names


@app.command()
def predict(
    inputs: List[Path] = typer.Option(..., "--input", "-i", help="Folder (nnU-Net naming), image files, or DICOM series folders"),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (never the input folder)"),
    model: Optional[List[Path]] = typer.Option(None, "--model", "-m", help="Run folder or checkpoint; repeat for an ensemble"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Find runs in the workdir: dataset name"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="... and configuration"),
    folds: Optional[str] = typer.Option(None, "--folds", "-f", help="... and folds, e.g. 0,1,2 [default: all]"),
    workdir: Optional[Path] = WorkdirOption,
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write <case>.npz with class probabilities"),
    resume: bool = typer.Option(False, "--continue", help="Skip cases whose output exists"),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirror test-time augmentation"),
    step: float = typer.Option(0.5, "--step", help="Tile step as a fraction of the patch"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, bf16 or fp16"),
    keep_largest: bool = typer.Option(False, "--keep-largest", help="Keep only the largest component of each class"),
    max_tile_growth: float = typer.Option(1.0, "--max-tile-growth", help="Let tiles grow up to this factor of the patch (e.g. 1.5) where that computes fewer voxels; faster, but can cost Dice (see README). 1: patch-sized tiles, as nnU-Net"),
    slicewise: bool = typer.Option(False, "--slicewise", help="Let a model trained on 2D images predict 3D volumes slice by slice (refused otherwise)"),
) -> None:
    """Predict label maps that carry each input's exact geometry."""
    from autoseg import api

    with user_errors():
        models = _model_sources(model or [], dataset, config, _split_folds(folds), workdir)
        source = inputs[0] if len(inputs) == 1 and inputs[0].is_dir() else inputs
        with progress_bars() as progress:
            if len(models) == 1 and api.is_bundle(models[0]):
                if keep_largest:
                    raise ConfigError("--keep-largest does not apply to a model bundle: its postprocessing was decided by find-best")
                written = api.predict_bundle_folder(source, output, models[0], save_probabilities, resume, tta, step, device, precision,
                                                    progress, slicewise=slicewise)
            else:
                written = api.predict_folder(source, output, models, save_probabilities, resume, tta, step, device, precision,
                                             keep_largest, progress, max_tile_growth, slicewise=slicewise)
    out.print(f"wrote {len(written)} prediction(s) to [bold]{output}[/]")


def _model_sources(models: list[Path], dataset, config, folds, workdir) -> list[Path]:
    """`--model best` means the dataset's best.json from find-best; anything else is a path."""
    from autoseg import api

    if [str(m) for m in models] == ["best"]:
        if not dataset:
            raise ConfigError("--model best needs --dataset NAME (the dataset whose find-best result to use)")
        from autoseg.model_selection import best_bundle_path

        path = best_bundle_path(workdir, dataset)
        if not path.is_file():
            raise ConfigError(f"{path} not found: run `autoseg find-best {dataset}` first")
        return [path]
    return api.resolve_models(models, dataset, config, folds, workdir)


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted label maps"),
    ref_dir: Path = typer.Argument(..., help="Folder of reference label maps (e.g. labelsTr)"),
    overlays: int = typer.Option(0, "--overlays", help="Write overlay PNGs for this many (worst) cases"),
    images_dir: Optional[Path] = typer.Option(None, "--images", help="Images for overlays [default: imagesTr beside ref_dir]"),
    workers: int = WorkersOption,
    only_predicted: bool = typer.Option(False, "--only-predicted", help="Score only the reference cases that have a prediction (e.g. a few test images against a full labelsTr)"),
    task: Optional[str] = typer.Option(None, "--task", help="Add this clinical task's own metrics [default: the task the predictions' reports or dataset.json name]"),
) -> None:
    """Dice, IoU, precision, recall, HD95 and ASSD per case and class (and a task's own metrics); writes summary.json/.csv."""
    from autoseg import api
    from autoseg.render import evaluation_table

    if overlays and images_dir is None and (ref_dir.parent / "imagesTr").is_dir():
        images_dir = ref_dir.parent / "imagesTr"
    with user_errors(), progress_bars() as progress:
        summary = api.evaluate(pred_dir, ref_dir, overlays, images_dir, workers, progress, only_predicted=only_predicted,
                               task=task)
    out.print(evaluation_table(summary))
    if summary.task_metrics:
        from autoseg.render import task_metrics_table

        out.print(task_metrics_table(summary.task_metrics))
    out.print(f"summary: [bold]{summary.summary_json}[/], [bold]{summary.summary_csv}[/]")
    if summary.overlays:
        out.print(f"overlays: [bold]{summary.overlays[0].parent}[/]")


@app.command("find-best")
def find_best(
    dataset: str = typer.Argument(..., help="Dataset name (as in <workdir>/runs/<dataset>)"),
    dataset_dir: Optional[Path] = typer.Option(None, "--dataset-dir", help="Dataset folder with labelsTr [default: recorded by cross-validation]"),
    configs: Optional[str] = typer.Option(None, "--configs", help="Only these, e.g. 2d,3d_fullres"),
    workdir: Optional[Path] = WorkdirOption,
) -> None:
    """Rank cross-validated configurations and their pairwise ensembles, decide postprocessing, write best.json."""
    from autoseg import api
    from autoseg.render import ranking_table

    with user_errors(), progress_bars() as progress:
        bundle = api.find_best(dataset, workdir, dataset_dir, _split_folds(configs) or None, progress)
    out.print(ranking_table(bundle))
    out.print(f"postprocessing: {bundle.postprocessing}")
    out.print(f"predict with: [bold]{bundle.predict_command}[/]")


@app.command()
def ensemble(
    folders: List[Path] = typer.Argument(..., help="Prediction folders written with --save-probabilities"),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder"),
    postprocessing: Optional[Path] = typer.Option(None, "--postprocessing", help="Apply the postprocessing of this best.json / model.json"),
) -> None:
    """Average saved probabilities of several prediction folders into one label map per case."""
    from autoseg import api

    with user_errors():
        written = api.ensemble(folders, output, postprocessing)
    out.print(f"wrote {len(written)} ensembled prediction(s) to [bold]{output}[/]")


@app.command("export-model")
def export_model(
    source: Path = typer.Argument(..., help="Run folder, checkpoint, folder with model.json, or best.json"),
    output: Path = typer.Option(..., "--output", "-o", help="Zip to write, or a folder to write <name>.zip into"),
    name: Optional[str] = typer.Option(None, "--name", help="Zip name when --output is a folder [default: dataset name]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing zip"),
) -> None:
    """Pack a trained model (weights and plans, no training state) into one zip to share."""
    from autoseg import api

    with user_errors():
        written = api.export_model(source, output, name, overwrite)
    out.print(f"model zip: [bold]{written}[/] ({written.stat().st_size / 1e6:.1f} MB); import it with `autoseg import-model {written}`")


@app.command("import-model")
def import_model(
    zip_path: Path = typer.Argument(..., help="Model zip written by `autoseg export-model`"),
    workdir: Optional[Path] = WorkdirOption,
    name: Optional[str] = typer.Option(None, "--name", help="Folder name under <workdir>/models [default: the zip's name]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an imported model of the same name"),
) -> None:
    """Check a model zip and unpack it into <workdir>/models/<name>, ready for `autoseg predict -m`."""
    from autoseg import api

    with user_errors():
        folder = api.import_model(zip_path, workdir, name, overwrite)
    out.print(f"imported into [bold]{folder}[/]; predict with `autoseg predict -i INPUT -o OUTPUT -m {folder}`")


@app.command("export-onnx")
def export_onnx(
    model: Path = typer.Argument(..., help="Run folder or checkpoint file (one network)"),
    output: Path = typer.Option(..., "--output", "-o", help="ONNX file to write (.onnx)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version"),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare onnxruntime with PyTorch on a random input"),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Largest allowed absolute logit difference"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file"),
) -> None:
    """Export one network to ONNX (dynamic batch, spatial size fixed to the plan's patch)."""
    from autoseg import api

    with user_errors():
        result = api.export_onnx(model, output, opset, check, tolerance, overwrite)
    checked = "not checked" if result["max_abs_diff"] is None else f"max |ONNX - PyTorch| = {result['max_abs_diff']:.2e}"
    out.print(f"wrote [bold]{result['path']}[/] (input {result['input_shape']}, batch dynamic; opset {result['opset']}; {checked})")


# The task wing's commands register on the same app, listed after the core ones.
from autoseg import cli_tasks  # noqa: E402,F401
from autoseg import cli_dti  # noqa: E402,F401
from autoseg import cli_qc  # noqa: E402,F401
from autoseg import cli_lumbar  # noqa: E402,F401
from autoseg import cli_skeleton  # noqa: E402,F401
