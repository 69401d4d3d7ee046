"""The skeleton-ct task end to end on the skeleton phantom (about 8 minutes on 2 busy CPU cores).

    python examples/skeleton_ct.py [--budget 6m] [--cases 12] [--workdir skeleton_work]

1. writes a training phantom and an unseen test phantom (different seeds; each case knows its table),
2. plans the 2d configuration with the task (table removal, clip window from the dataset,
   inter-patient normalization, bone-weighted slices) and trains it for a short budget,
3. predicts the test images and prints Dice and IoU of bone,
4. scores table removal on the test images against the phantom's true table and body, and draws
   it (sagittal and axial slice, removed matter in red, body outline green, predicted bone yellow)
   into table_removal.png.
The same steps on the command line are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.logging import RichHandler

from autoseg import api
from autoseg.io import read_image
from autoseg.modalities.ct_body import body_mask
from autoseg.phantoms import generate_case
from autoseg.tasks.skeleton_figure import write_table_removal_png
from autoseg.trainers.schedule import parse_duration

console = Console()
TASK, PHANTOM = "skeleton-ct", "skeleton-ct"
TEST_SEED = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="6m", help="training time budget, e.g. 3m")
    parser.add_argument("--cases", type=int, default=12, help="training phantom cases")
    parser.add_argument("--workdir", type=Path, default=Path("skeleton_work"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the example's own folder: always a fresh start
    work = args.workdir

    console.rule("1. phantom datasets (skeleton-ct: trunk to thighs on a scanner table)")
    train_dir = api.example(PHANTOM, work / "data", cases=args.cases, seed=0)
    test_dir = api.example(PHANTOM, work / "test_data", cases=3, seed=TEST_SEED)

    console.rule(f"2. plan and train 2d with the task, budget {args.budget}")
    plan, _ = api.plan(train_dir, work, task=TASK, workers=1)
    console.print(f"task options recorded in the plan: {plan.configurations['2d'].task.options}")
    run = api.train(train_dir, "2d", 0, work, time_budget_s=parse_duration(args.budget), val_iters=10, workers=1)

    console.rule("3. predict the test phantom and evaluate")
    predictions = work / "predictions"
    api.predict_folder(test_dir / "imagesTr", predictions, [run], tta=False)
    summary = api.evaluate(predictions, test_dir / "labelsTr", workers=1)
    bone = summary.mean_per_class["bone"]
    console.print(f"bone on {len(summary.per_case)} unseen cases: Dice {bone['dice']:.4f}  IoU {bone['iou']:.4f}")

    console.rule("4. table removal against the phantom's truth")
    removal_report(test_dir, predictions, work / "table_removal.png")
    console.print(
        "\nThe same on the command line:\n"
        f"  autoseg example skeleton-ct {work}/data --cases {args.cases}\n"
        f"  autoseg plan {train_dir} -w {work} --task {TASK} --normalization inter\n"
        f"  autoseg train {train_dir} 2d 0 -w {work} --time-budget {args.budget}\n"
        f"  autoseg predict -i {test_dir}/imagesTr -o {predictions} -m {run} --no-tta\n"
        f"  autoseg evaluate {predictions} {test_dir}/labelsTr"
    )


def removal_report(test_dir: Path, predictions: Path, png: Path) -> None:
    """Per test case: share of table voxels removed and of body voxels kept, the time taken; one picture."""
    for index in range(3):
        case = generate_case(PHANTOM, index, seed=TEST_SEED)
        hu = case.image.astype(np.float32)
        start = time.perf_counter()
        body = body_mask(hu, case.geometry.spacing_zyx)
        seconds = time.perf_counter() - start
        table, truth = case.extras["table_mask"], case.extras["body_mask"]
        removed = 1 - np.count_nonzero(body & table) / np.count_nonzero(table)
        kept = np.count_nonzero(body & truth) / np.count_nonzero(truth)
        console.print(f"case {index}: table removed {removed:.4%}, body kept {kept:.4%} ({seconds:.2f} s, shape {hu.shape})")
        if index == 0:
            predicted, _ = read_image(next(predictions.glob("skel_000*")))
            write_table_removal_png(png, hu, body, case.geometry.spacing_zyx, predicted[0] > 0)
            console.print(f"table removal picture: [bold]{png}[/]")


if __name__ == "__main__":
    main()
