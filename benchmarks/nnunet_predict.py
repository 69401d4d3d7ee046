"""nnU-Net v2's prediction time on this machine, the reference for benchmarks/predict_speed.py.

    NNUNET_PYTHON benchmarks/nnunet_predict.py --dataset RAW_DATASET --config 3d_fullres --work DIR \
        --out DIR --result JSON [--tta] FILE...

Runs under nnU-Net's own interpreter (nnU-Net is not an autoseg dependency; see plan_vs_nnunet.py for
the venv) and imports nothing from autoseg. nnU-Net plans RAW_DATASET itself (fingerprint and
ExperimentPlanner, cached under WORK), then predicts FILES with a network of the architecture it
planned and random weights: the time does not depend on the weights, and training nnU-Net on this CPU
would take hours. The clock covers what autoseg's figures cover: creating the predictor and loading
the checkpoint, then `predict_from_files` with the CLI's settings for `-device cpu` (all cores, step
0.5, Gaussian weighting, 3 preprocessing and 3 export processes; `--sequential`: none). Writes JSON
with seconds per case and the planned patch size.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="raw training dataset (DatasetXXX_Name) nnU-Net plans")
    parser.add_argument("--config", required=True, help="nnU-Net configuration: 2d or 3d_fullres")
    parser.add_argument("--work", type=Path, required=True, help="nnU-Net's raw/preprocessed/results folders (reused)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation (nnU-Net's default)")
    parser.add_argument("--sequential", action="store_true", help="no worker processes (nnUNetv2_predict -npp 0 -nps 0)")
    parser.add_argument("--patch-size", type=lambda text: [int(v) for v in text.split(",")],
                        help="predict with this patch (e.g. autoseg's plan's, for the same tiles) instead of nnU-Net's")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    dataset_id = point_nnunet_at(args.work, args.dataset)
    model = _random_model(dataset_id, args.config, args.patch_size)  # imports nnU-Net: after its paths are set
    seconds = _timed_prediction(model, args.files, args.out, args.tta, args.sequential)
    patch = json.loads((model / "plans.json").read_text())["configurations"][args.config]["patch_size"]
    args.result.write_text(json.dumps({"seconds_per_case": seconds / len(args.files), "cases": len(args.files),
                                       "patch_size": patch}))


def point_nnunet_at(work: Path, dataset: Path) -> int:
    """nnU-Net reads its folders from the environment at import; the dataset is linked into its raw folder."""
    match = re.fullmatch(r"Dataset(\d{3})_\w+", dataset.name)
    if not match:
        raise SystemExit(f"{dataset}: not an nnU-Net dataset folder name (DatasetXXX_Name)")
    for name in ("raw", "preprocessed", "results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[f"nnUNet_{name}"] = str(work / name)
    link = work / "raw" / dataset.name
    if not link.exists():
        link.symlink_to(dataset.resolve())
    return int(match.group(1))


def _random_model(dataset_id: int, config: str, patch_size: list[int] | None) -> Path:
    """nnU-Net's plan for the dataset (its patch replaced if asked) and a checkpoint of that network with random weights."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, plan_experiment_dataset
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = convert_id_to_dataset_name(dataset_id)
    planned = Path(os.environ["nnUNet_preprocessed"]) / name
    if not (planned / "nnUNetPlans.json").exists():
        extract_fingerprint_dataset(dataset_id, check_dataset_integrity=False, clean=True, verbose=False)
        plan_experiment_dataset(dataset_id)
    model = Path(os.environ["nnUNet_results"]) / name / f"nnUNetTrainer__nnUNetPlans__{config}"
    (model / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = json.loads((planned / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((planned / "dataset.json").read_text())
    if patch_size:
        plans["configurations"][config]["patch_size"] = patch_size
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps(dataset_json))
    manager = PlansManager(plans)
    configuration = manager.get_configuration(config)
    network = nnUNetTrainer.build_network_architecture(
        manager, configuration, determine_num_input_channels(manager, configuration, dataset_json),
        manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": config},
                "inference_allowed_mirroring_axes": tuple(range(len(configuration.patch_size)))},
               model / "fold_0" / "checkpoint_final.pth")
    return model


def _timed_prediction(model: Path, files: list[Path], out: Path, tta: bool, sequential: bool) -> float:
    import multiprocessing

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict -device cpu
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta, perform_everything_on_device=True,
                                device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    inputs, outputs = [[str(f)] for f in files], [str(out / f.name.split("_0000")[0]) for f in files]
    if sequential:
        predictor.predict_from_files_sequential(inputs, outputs, save_probabilities=False, overwrite=True)
    else:
        predictor.predict_from_files(inputs, outputs, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=3, num_processes_segmentation_export=3)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
