"""Cross-validation: train each fold in turn, predict its validation cases, summarise.

    <workdir>/runs/<dataset>/<config>/fold_<k>/                  one run folder per fold
    <workdir>/runs/<dataset>/<config>/crossval/predictions/       out-of-fold label maps + .npz probabilities
    <workdir>/runs/<dataset>/<config>/crossval/crossval.json      per-class mean Dice over every out-of-fold case

Re-running the same command continues: finished folds are skipped, interrupted ones resume from
their last checkpoint. `autoseg find-best` reads the crossval folders of every configuration.
With `parallel` > 1 up to that many folds train at once, each in its own process
(trainers/parallel_folds.py); under torchrun every fold trains on all ranks, and rank 0 alone
predicts and summarises.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from autoseg import schema
from autoseg.checkpoint import BEST, FINAL, LATEST
from autoseg.config import TrainConfig
from autoseg.dataset import Dataset, load_dataset
from autoseg.errors import ConfigError
from autoseg.progress import ProgressFactory
from autoseg.trainers.run_folder import FINISHED, KILLED, check_run_cases, run_status
from autoseg.trainers.splits import FULL, cases_for_fold, splits_for
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)


def crossval_dir(wd: Workdir, dataset: str, config: str) -> Path:
    return wd.run_dir(dataset, config, 0).parent / "crossval"


@dataclass(frozen=True)
class FoldSteps:
    """The pipeline steps cross-validation runs, handed in by autoseg.api (which this module must not
    import): `train` trains one fold (api.train), `prepare` plans and preprocesses once (api._prepare)."""

    train: Callable[..., Path]
    prepare: Callable[..., object]


def cross_validate(
    steps: FoldSteps,
    dataset_dir: str | Path,
    config: str,
    folds: Sequence[str] | None = None,
    workdir: str | Path | None = None,
    num_folds: int | None = None,
    group_by: str | None = None,
    progress: ProgressFactory | None = None,
    on_event=None,
    rebuild_splits: bool = False,
    parallel: int = 1,
    devices: Sequence[str] = (),
    **options,
) -> Path:
    """Train `folds` (default: every fold) of `config`, predict each fold's validation cases with its
    final checkpoint, and write crossval.json. Returns the crossval folder. `parallel`: folds
    trained at once, on `devices` in turn (default: options' device, CPU threads split between them).

    Options, folds and the runs already there are checked before the first fold trains."""
    from autoseg.trainers.distributed import joined

    with joined(options.get("device", "auto")) as ranks:
        with ranks.main_first():  # rank 0 writes the splits
            wd, dataset = Workdir.at(workdir), load_dataset(dataset_dir)
            TrainConfig(dataset_name=dataset.name, config=config, fold="0", **options)  # refuses invalid options now
            _check_parallel(parallel, devices, ranks.world_size)
            splits = splits_for(dataset, wd.splits_path(dataset.name), num_folds, group_by, rebuild_splits)
            wanted = requested_folds(folds, splits, [c.case_id for c in dataset.cases])
            for k, split in enumerate(splits):  # after --rebuild-splits, runs of the old folds must not be mixed in
                check_run_cases(wd.run_dir(dataset.name, config, k), split["train"], split["val"])
        out = crossval_dir(wd, dataset.name, config)
        if parallel > 1:
            trained = _train_in_parallel(steps, dataset, config, wanted, wd, num_folds, group_by, progress, on_event,
                                         parallel, devices, options)
        for fold in wanted:
            if parallel > 1:
                run, trained_now = wd.run_dir(dataset.name, config, fold), fold in trained
            else:
                log.info("cross-validation of %s: fold %s of %d", config, fold, len(splits))
                run, trained_now = _train_fold(steps, dataset, config, fold, wd, num_folds, group_by, progress, on_event,
                                               options, ranks)
            ranks.on_main(partial(_predict_out_of_fold, run, dataset, splits[int(fold)]["val"], out / "predictions",
                                  not trained_now, options, progress))
        return ranks.on_main(partial(_summarise, dataset, config, splits, wd, out))


def _check_parallel(parallel: int, devices: Sequence[str], ranks: int) -> None:
    from autoseg.devices import resolve_device

    if parallel < 1:
        raise ConfigError(f"--parallel: expected a number of folds >= 1, found {parallel}")
    if parallel > 1 and ranks > 1:
        raise ConfigError("--parallel under torchrun: every fold already trains on all ranks; drop --parallel")
    for device in devices:
        resolve_device(device)  # a missing GPU is refused before any fold starts


def requested_folds(folds: Sequence[str] | None, splits: list, case_ids: list[str]) -> list[str]:
    """The folds to train (default: all), each checked against the splits before any fold trains."""
    if not folds:
        return [str(k) for k in range(len(splits))]
    wanted = [str(int(f)) if str(f).strip().isdigit() else str(f) for f in folds]
    unknown = [f for f in wanted if not (f.isdigit() and int(f) < len(splits))]
    if unknown:
        hint = f"; '{FULL}' is no cross-validation fold: train it alone (FOLD '{FULL}')" if FULL in unknown else ""
        raise ConfigError(f"--folds: fold(s) {', '.join(unknown)} do not exist; this dataset has folds "
                          f"0-{len(splits) - 1}{hint}")
    for fold in wanted:
        cases_for_fold(splits, fold, case_ids)  # a fold without train or val cases
    return list(dict.fromkeys(wanted))


def _train_fold(steps: FoldSteps, dataset: Dataset, config: str, fold: str, wd: Workdir, num_folds, group_by, progress,
                on_event, options, ranks) -> tuple[Path, bool]:
    """Skip a finished fold, resume an interrupted or killed one, else train it; returns (run folder, trained now)."""
    run = wd.run_dir(dataset.name, config, fold)
    finished, resume = ranks.on_main(partial(_fold_state, run, fold))  # what rank 0 sees in the run folder
    if finished:
        return run, False
    steps.train(dataset.root, config, fold, wd.root, resume=resume, progress=progress, on_event=on_event,
                num_folds=num_folds, group_by=group_by, **options)
    return run, True


def _fold_state(run: Path, fold: str) -> tuple[bool, bool]:
    """(finished, resume): a finished fold is skipped, an interrupted or killed one resumed."""
    status = run_status(run)
    if status == FINISHED and (run / FINAL).is_file():
        log.info("fold %s already finished: %s", fold, run)
        return True, False
    if status == KILLED:
        log.info("fold %s was killed while training (run.json says running, no process holds it)", fold)
    return False, any((run / name).is_file() for name in (LATEST, BEST))  # the trainer takes the newer


def _train_in_parallel(steps: FoldSteps, dataset: Dataset, config: str, wanted: list[str], wd: Workdir, num_folds,
                       group_by, progress, on_event, parallel: int, devices: Sequence[str], options: dict) -> set[str]:
    """Train the unfinished folds of `wanted`, up to `parallel` at once; returns the folds trained now."""
    from autoseg.trainers.parallel_folds import plan_jobs, train_folds

    # plan and preprocess here, once: fold processes doing it at the same time would race for the files
    steps.prepare(dataset.root, config, wd, max(1, options.get("workers", 2)), progress,
                 time_budget_s=options.get("time_budget_s"), device=options.get("device", "auto"))
    states = {fold: _fold_state(wd.run_dir(dataset.name, config, fold), fold) for fold in wanted}
    todo = [(fold, resume) for fold, (finished, resume) in states.items() if not finished]
    jobs = plan_jobs(todo, parallel, options.get("device", "auto"), list(devices))
    train_folds(steps.train, jobs, parallel, {"dataset_dir": dataset.root, "config": config, "workdir": wd.root, "num_folds": num_folds,
                                 "group_by": group_by, **options}, on_event)
    return {fold for fold, _ in todo}


def _predict_out_of_fold(run: Path, dataset: Dataset, val_ids: list[str], out: Path, keep_existing: bool, options: dict, progress) -> None:
    from autoseg.inference.inputs import CaseInput
    from autoseg.devices import resolve_device
    from autoseg.inference.predictor import Predictor, load_models

    device = resolve_device(options.get("device", "auto"))
    predictor = Predictor(load_models([run], device), device, options.get("precision", "auto"))
    wanted = set(val_ids)
    cases = [CaseInput(c.case_id, c.images, dataset.file_ending) for c in dataset.cases if c.case_id in wanted]
    predictor.predict_folder(cases, out, save_probabilities=True, skip_existing=keep_existing, progress=progress)


def _summarise(dataset: Dataset, config: str, splits: list, wd: Workdir, out: Path) -> Path:
    """Score every out-of-fold case of the finished folds; `complete` once every fold is finished."""
    from autoseg.evaluation import evaluate_folders

    done = [str(i) for i in range(len(splits)) if run_status(wd.run_dir(dataset.name, config, i)) == FINISHED]
    cases = sorted(c for i in done for c in splits[int(i)]["val"])
    summary = evaluate_folders(out / "predictions", dataset.root / "labelsTr", labels=dataset.labels,
                               file_ending=dataset.file_ending, case_ids=cases)
    document = {
        "config": config, "dataset_dir": str(dataset.root.resolve()), "folds": done, "num_folds": len(splits),
        "cases": cases, "complete": len(done) == len(splits),
        "mean_foreground_dice": summary.mean_foreground_dice, "mean_per_class": summary.mean_per_class,
    }
    schema.write_json_atomic(out / "crossval.json", schema.json_safe(document))
    log.info("cross-validation of %s: %d of %d folds, mean foreground Dice %.4f over %d cases",
             config, len(done), len(splits), summary.mean_foreground_dice, len(cases))
    return out
