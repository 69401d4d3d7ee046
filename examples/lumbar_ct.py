"""The lumbar-ct task end to end on the large-field phantom.

Time: two 3-minute training budgets plus the rest; measured 6 min 25 s on 2 quiet cores (23 minutes
on a 2-core machine shared with four other jobs). The short budgets leave the segmenter untrained
(on the quiet run: sacrum Dice 0.46, no lumbar vertebra identified): raise --budget for useful figures.

    python examples/lumbar_ct.py [--budget 3m] [--cases 10] [--workdir lumbar_ct_work]

1. writes a training phantom and an unseen test phantom (different seeds) of trunk-sized CT
   volumes (`autoseg example lumbar-ct --option large_field=true`): the lumbar spine fills a few
   percent of each volume, at a varying height, some spines scoliotic, some with a sixth lumbar
   vertebra or a sacralised L5;
2. plans with the task (a small memory budget, so these CPU-sized volumes are large for their
   patch: 3d_lowres, the localizer, is planned, and with it 3d_cascade_fullres);
3. trains both stages of localize -> crop -> segment (`autoseg train-localized`): 3d_lowres on the
   whole volumes, then 3d_fullres on crops around the lumbar spine, each for the same short budget;
4. predicts the test volumes (`autoseg predict-localized`): crop boxes, level check, labels on
   each input's grid;
5. evaluates them (`autoseg evaluate`): per-vertebra Dice and HD95, identification rate and mean
   centroid distance.
The same steps on the command line are printed at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from autoseg import api
from autoseg.render import evaluation_table, task_metrics_table
from autoseg.trainers.schedule import parse_duration

console = Console()
TASK = "lumbar-ct"
GPU_MEMORY_GB = 1.2  # scales the patch to these small volumes as 8 GB does for a clinical trunk CT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="3m", help="training time budget of each stage, e.g. 3m")
    parser.add_argument("--cases", type=int, default=10, help="training phantom cases")
    parser.add_argument("--workdir", type=Path, default=Path("lumbar_ct_work"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the example's own folder: always a fresh start
    work = args.workdir

    console.rule("1. large-field phantom datasets (lumbar-ct)")
    train_dir = api.example("lumbar-ct", work / "data", cases=args.cases, seed=0, large_field=True)
    test_dir = api.example("lumbar-ct", work / "test_data", cases=4, seed=1, large_field=True)

    console.rule("2. plan with the task")
    plan, _ = api.plan(train_dir, work / "autoseg", gpu_memory_gb=GPU_MEMORY_GB, task=TASK, workers=1)
    console.print("configurations: " + ", ".join(plan.configurations))

    console.rule(f"3. train localize -> crop -> segment, {args.budget} per stage")
    options = {"time_budget_s": parse_duration(args.budget), "iters_per_epoch": 25, "val_iters": 4, "workers": 1}
    layout = api.train_localized(train_dir, "full", work / "autoseg", **options)

    console.rule("4. predict the test volumes")
    predictions = work / "predictions"
    api.predict_localized(test_dir / "imagesTr", predictions, layout, tta=False)
    for report in sorted(predictions.glob("*.report.json")):
        found = json.loads(report.read_text())
        console.print(f"{found['case_id']}: levels {found['level_status']}, crop box {found['crop_box_zyx']}",
                      highlight=False)

    console.rule("5. evaluate")
    summary = api.evaluate(predictions, test_dir / "labelsTr", workers=1)
    console.print(evaluation_table(summary))
    console.print(task_metrics_table(summary.task_metrics))
    console.print(_headline(summary))
    console.print(_commands(args.budget))


def _headline(summary) -> Table:
    table = Table(title="per-vertebra Dice and identification (test phantom)")
    for column in ("vertebra", "Dice", "HD95 (mm)", "identified"):
        table.add_column(column, justify="right" if column != "vertebra" else "left")
    rates = summary.task_metrics["identification_rate_per_level"]
    for name, means in summary.mean_per_class.items():
        rate = rates.get(name)
        table.add_row(name, f"{means['dice']:.3f}", f"{means['hd95']:.1f}", "-" if rate is None else f"{rate:.0%}")
    metrics = summary.task_metrics
    table.caption = (f"identification rate {metrics['identification_rate']:.0%} of {metrics['vertebrae']} vertebrae, "
                     f"mean centroid distance {metrics['mean_centroid_distance_mm']:.1f} mm")
    return table


def _commands(budget: str) -> str:
    return f"""
On the command line:
  autoseg example lumbar-ct data --cases 10 --option large_field=true
  autoseg example lumbar-ct test_data --cases 4 --seed 1 --option large_field=true
  autoseg plan data/Dataset903_LumbarCT --task {TASK} --gpu-memory-gb {GPU_MEMORY_GB}
  autoseg train-localized data/Dataset903_LumbarCT full --time-budget {budget}
  autoseg predict-localized -i test_data/Dataset903_LumbarCT/imagesTr -o predictions -m autoseg_work/runs/Dataset903_LumbarCT/localize-crop-segment/fold_full --no-tta
  autoseg evaluate predictions test_data/Dataset903_LumbarCT/labelsTr"""


if __name__ == "__main__":
    main()
