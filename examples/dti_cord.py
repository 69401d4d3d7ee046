"""The dti-cord task end to end on the DTI cord phantom (under 10 minutes on 2 CPU cores).

    python examples/dti_cord.py [--budget 7m] [--cases 24] [--test-cases 8] [--workdir dti_work]

1. writes a training phantom and an unseen test phantom (different seeds; b=800 s/mm^2, 12
   directions, white-matter b=0 SNR 20, Rician noise),
2. plans the task (2d on the mean b=0 image) and trains fold 0 for a short time budget,
3. predicts the test phantom's 4D DWI folder directly (each series reduced to its b=0 image, the
   report giving FA/MD per predicted region),
4. scores Dice per region and the FA-index error |FA(pred) - FA(ref)| / FA(ref) per region
   against the phantom's labels (`autoseg evaluate`, `autoseg dti-metrics`) and prints both.
The same steps on the command line are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from autoseg import api
from autoseg.cli_dti import fa_error_table
from autoseg.trainers.schedule import parse_duration

console = Console()
TASK = "dti-cord"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="7m", help="training time budget, e.g. 7m")
    parser.add_argument("--cases", type=int, default=24, help="training phantom cases")
    parser.add_argument("--test-cases", type=int, default=8, help="test phantom cases")
    parser.add_argument("--workdir", type=Path, default=Path("dti_work"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the example's own folder: always a fresh start
    work = args.workdir

    console.rule("1. phantom datasets (dti-cord)")
    train_dir = api.example("dti-cord", work / "data", cases=args.cases, seed=0)
    test_dir = api.example("dti-cord", work / "test_data", cases=args.test_cases, seed=1)

    console.rule(f"2. plan --task {TASK}, train 2d fold 0 for {args.budget}")
    api.plan(train_dir, work / "model", task=TASK, workers=1)
    run = api.train(train_dir, "2d", 0, work / "model", time_budget_s=parse_duration(args.budget), val_iters=10,
                    workers=1)

    console.rule("3. predict the test DWI series directly")
    predictions = work / "predictions"
    api.predict_folder(test_dir / "dwi", predictions, [run], tta=False)

    console.rule("4. Dice and FA-index error per region")
    summary = api.evaluate(predictions, test_dir / "labelsTr", workers=1)
    metrics = api.dti_metrics(test_dir, predictions, work / "metrics", test_dir / "labelsTr")
    console.print(dice_table(summary))
    console.print(fa_error_table(metrics.summary))
    console.print(
        "\nThe same on the command line:\n"
        f"  autoseg example dti-cord {work}/data --cases {args.cases}\n"
        f"  autoseg plan {train_dir} -w {work}/model --task {TASK}\n"
        f"  autoseg train {train_dir} 2d 0 -w {work}/model --time-budget {args.budget}\n"
        f"  autoseg predict -i {test_dir}/dwi -o {predictions} -m {run} --no-tta\n"
        f"  autoseg evaluate {predictions} {test_dir}/labelsTr\n"
        f"  autoseg dti-metrics -i {test_dir} -p {predictions} -r {test_dir}/labelsTr -o {work}/metrics"
    )


def dice_table(summary) -> Table:
    table = Table(title=f"Dice per region (mean over test cases; mean foreground {summary.mean_foreground_dice:.3f})")
    table.add_column("region")
    table.add_column("left", justify="right")
    table.add_column("right", justify="right")
    for region in ("wm_dorsal", "wm_lateral", "wm_ventral", "gm"):
        cells = [summary.mean_per_class.get(f"{region}_{side}", {}).get("dice") for side in ("left", "right")]
        table.add_row(region, *("-" if d is None else f"{d:.3f}" for d in cells))
    return table


if __name__ == "__main__":
    main()
