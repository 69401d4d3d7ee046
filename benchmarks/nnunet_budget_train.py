"""nnU-Net v2 trained for a fixed wall time on this machine, the reference for benchmarks/budget_training.py.

    NNUNET_PYTHON benchmarks/nnunet_budget_train.py --dataset RAW_DATASET --config 2d --fold 0 \
        --budget-s 600 --work DIR --images VAL_IMAGES_DIR --out PRED_DIR --result JSON

Runs under nnU-Net's own interpreter (nnU-Net is not an autoseg dependency; see plan_vs_nnunet.py for
the venv) and imports nothing from autoseg. Three steps, all with nnU-Net's defaults:

1. nnU-Net's folders under WORK (raw with RAW_DATASET linked in, preprocessed, results, as
   nnunet_predict.py lays them out); fingerprint, default ExperimentPlanner and default
   preprocessing of CONFIG (reused on a rerun). The dataset's own splits_final.json is used for
   the folds (nnU-Net copies it while planning; copied here if it did not).
2. nnU-Net's default nnUNetTrainer (default plan, loss, deep supervision, augmentation, sampling, LR
   schedule) trains FOLD on the CPU until BUDGET_S seconds have passed, counted from the creation of
   the trainer (its setup, data loader start and dataset unpacking count). The only change is a
   subclass that checks the clock after every training step and then ends training as nnU-Net does
   (`on_train_end` saves checkpoint_final.pth); the per-epoch validation and the final full
   validation are skipped (not what is compared; predictions are made separately). The step that
   crosses the budget is finished, so training overruns by at most one iteration; `train_wall_s`
   reports the real time.
3. `nnUNetPredictor` with the CLI's defaults for `-device cpu` (mirroring TTA, step 0.5, Gaussian, 3
   preprocessing and 3 export processes) predicts every CASE_0000.<ext> in VAL_IMAGES_DIR into
   PRED_DIR/CASE.<ext>, written by nnU-Net's own writer (same geometry as the input; nnU-Net also
   leaves its dataset.json, plans.json and predict_from_raw_data_args.json there).

Writes JSON with nnU-Net's version, its plan, iterations done, training and prediction times.
Environment: nnUNet_n_proc_DA defaults to 2 here (data augmentation workers; set it to override).
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from nnunet_predict import point_nnunet_at  # noqa: E402  (nnU-Net's folders, shared with the prediction benchmark)

log = logging.getLogger("nnunet_budget_train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="raw training dataset (DatasetXXX_Name)")
    parser.add_argument("--config", default="2d", help="nnU-Net configuration (2d, 3d_fullres, ...)")
    parser.add_argument("--fold", default="0", help="fold of the dataset's splits_final.json (or 'all')")
    parser.add_argument("--budget-s", type=float, required=True, help="training wall time in seconds")
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net's raw/preprocessed/results folders (reused)")
    parser.add_argument("--images", type=Path, required=True, help="folder of CASE_0000.<ext> images to predict")
    parser.add_argument("--out", type=Path, required=True, help="folder for the predictions CASE.<ext>")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--preprocess-processes", type=int, default=2, help="nnUNetv2_plan_and_preprocess -np")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    fold = args.fold if args.fold == "all" else int(args.fold)
    stdout = os.dup(1)
    os.dup2(2, 1)  # nnU-Net prints its progress (also from worker processes): to stderr, stdout is for the JSON

    dataset_id = point_nnunet_at(args.work.resolve(), args.dataset)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")  # augmentation workers: this machine has 2 cores
    import torch  # after nnU-Net's paths are set (its imports read them)
    from importlib.metadata import version

    torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train -device cpu
    started = time.perf_counter()
    preprocessed = _plan_and_preprocess(dataset_id, args.dataset, args.config, args.work.resolve(),
                                        args.preprocess_processes)
    preprocess_s = time.perf_counter() - started
    log.info("planning and preprocessing: %.1f s", preprocess_s)

    trainer, training = _train(preprocessed, args.config, fold, args.budget_s)
    model = Path(trainer.output_folder_base)

    images = sorted(p for p in args.images.iterdir() if re.search(r"_0000\.", p.name))
    if not images:
        raise SystemExit(f"{args.images}: no CASE_0000.<ext> images")
    predict_s = _predict(model, fold, images, args.out)
    log.info("prediction: %.1f s per case", predict_s / len(images))

    configuration = trainer.configuration_manager
    arch = configuration.network_arch_init_kwargs
    result = {
        "nnunetv2_version": version("nnunetv2"),
        "torch_version": torch.__version__,
        "dataset": str(args.dataset),
        "config": args.config,
        "fold": args.fold,
        "trainer": "nnUNetTrainer (default; stopped by wall time, no validation)",
        "plan": {"patch_size": list(configuration.patch_size), "batch_size": configuration.batch_size,
                 "spacing": list(configuration.spacing), "n_stages": arch.get("n_stages"),
                 "features_per_stage": list(arch.get("features_per_stage", [])),
                 "base_features": (arch.get("features_per_stage") or [None])[0],
                 "network": configuration.network_arch_class_name},
        "budget_s": args.budget_s,
        "preprocess_s": preprocess_s,
        **training,
        "predict_s_per_case": predict_s / len(images),
        "predict_cases": len(images),
        "paths": {"work": str(args.work), "preprocessed": str(preprocessed), "model": str(model),
                  "checkpoint": str(model / f"fold_{fold}" / "checkpoint_final.pth"),
                  "images": str(args.images), "predictions": str(args.out)},
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2))
    sys.stdout.flush()
    os.dup2(stdout, 1)
    print(json.dumps(result, indent=2))


def _plan_and_preprocess(dataset_id: int, dataset: Path, config: str, work: Path, processes: int) -> Path:
    """nnUNetv2_plan_and_preprocess -d ID -c CONFIG -np PROCESSES, each step skipped when its output exists."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                       plan_experiment_dataset, preprocess_dataset)
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / convert_id_to_dataset_name(dataset_id)
    if not (preprocessed / "dataset_fingerprint.json").exists():
        log.info("extracting nnU-Net's dataset fingerprint")
        extract_fingerprint_dataset(dataset_id, num_processes=processes, check_dataset_integrity=False,
                                    clean=True, verbose=False)
    if not (preprocessed / "nnUNetPlans.json").exists():
        log.info("planning with nnU-Net's default ExperimentPlanner")
        plan_experiment_dataset(dataset_id)
    splits = preprocessed / "splits_final.json"
    if not splits.exists() and (dataset / "splits_final.json").exists():
        shutil.copyfile(dataset / "splits_final.json", splits)
    done = work / f".preprocessed_{config}"  # preprocessing empties its folder first: mark a finished run
    if not done.exists():
        log.info("preprocessing %s", config)
        preprocess_dataset(dataset_id, configurations=(config,), num_processes=(processes,))
        done.write_text("done\n")
    return preprocessed


def _train(preprocessed: Path, config: str, fold, budget_s: float):
    """nnU-Net's default trainer, stopped after the train step that uses up the budget."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class BudgetedTrainer(nnUNetTrainer):
        """nnUNetTrainer, whose `run_training` stops on a wall clock and skips validation."""

        def run_training(self) -> None:
            self.step_seconds: list[float] = []
            self.first_step_at = None
            self.on_train_start()
            spent = False
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                train_outputs = []
                for _ in range(self.num_iterations_per_epoch):
                    step_started = time.perf_counter()
                    if self.first_step_at is None:
                        self.first_step_at = step_started
                    train_outputs.append(self.train_step(next(self.dataloader_train)))
                    now = time.perf_counter()
                    self.step_seconds.append(now - step_started)
                    log.info("iteration %d: %.1f s, loss %.4f, %.0f s of %.0f s",
                             len(self.step_seconds), now - step_started, float(train_outputs[-1]["loss"]),
                             now - self.clock_started, self.budget_s)
                    if now - self.clock_started >= self.budget_s:
                        spent = True
                        break
                self.on_train_epoch_end(train_outputs)
                # no validation epoch; as on_epoch_end (which needs validation values) for the bookkeeping
                self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
                self.current_epoch += 1
                if spent:
                    break
            self.on_train_end()  # nnU-Net's: saves checkpoint_final.pth, stops the data loaders

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # as nnUNetv2_train without --c (nnU-Net 2.8 reads it from the plans)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    clock_started = time.perf_counter()
    trainer = BudgetedTrainer(plans, config, fold, dataset_json, device=torch.device("cpu"))
    trainer.clock_started, trainer.budget_s = clock_started, budget_s
    log.info("training %s fold %s for %.0f s (%d iterations per epoch, batch %d)", config, fold, budget_s,
             trainer.num_iterations_per_epoch, trainer.configuration_manager.batch_size)
    trainer.run_training()
    train_wall_s = time.perf_counter() - clock_started
    # The checkpoint names the trainer class for prediction to rebuild the network: the network is
    # nnUNetTrainer's (BudgetedTrainer inherits it), and nnU-Net finds only classes in its own package.
    checkpoint_path = Path(trainer.output_folder) / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    torch.save(checkpoint, checkpoint_path)
    steps = trainer.step_seconds
    training = {
        "iterations": len(steps),
        "epochs_started": trainer.current_epoch,
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "train_wall_s": train_wall_s,
        "setup_s": trainer.first_step_at - clock_started,
        "s_per_iteration": sum(steps) / len(steps),
        "s_per_iteration_after_first": sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else None,
        "final_checkpoint_s": train_wall_s - (trainer.first_step_at - clock_started) - sum(steps),
        "augmentation_workers": int(os.environ["nnUNet_n_proc_DA"]),
        "torch_threads": torch.get_num_threads(),
    }
    log.info("trained %d iterations in %.1f s (%.1f s per iteration)", len(steps), train_wall_s,
             training["s_per_iteration"])
    return trainer, training


def _predict(model: Path, fold, images: list[Path], out: Path) -> float:
    """nnUNetv2_predict -f FOLD -chk checkpoint_final.pth -device cpu, with its defaults; returns seconds."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=True,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (fold,), "checkpoint_final.pth")
    inputs = [[str(f)] for f in images]
    outputs = [str(out / re.sub(r"_0000\..*$", "", f.name)) for f in images]
    predictor.predict_from_files(inputs, outputs, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=3, num_processes_segmentation_export=3)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
