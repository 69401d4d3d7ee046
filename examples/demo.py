"""The whole pipeline on a generated phantom, in a few minutes on a laptop CPU.

    python examples/demo.py [--phantom cervical-xray] [--budget 4m] [--workdir demo_work]

1. writes a training dataset and a separate test set of the phantom (different seeds),
2. plans it (`autoseg plan`), 3. trains the 2d configuration within the time budget,
4. predicts the unseen test images, 5. evaluates them and writes overlay PNGs.
The same steps on the command line are printed at the end.
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from autoseg import api
from autoseg.render import evaluation_table, plan_table
from autoseg.trainers.schedule import parse_duration

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", default="cervical-xray")
    parser.add_argument("--budget", default="4m", help="training time budget, e.g. 4m")
    parser.add_argument("--workdir", type=Path, default=Path("demo_work"))
    parser.add_argument("--cases", type=int, default=24)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the demo's own folder: always a fresh start

    console.rule(f"1. phantom datasets ({args.phantom})")
    train_dir = api.example(args.phantom, args.workdir / "data", cases=args.cases, seed=0)
    test_dir = api.example(args.phantom, args.workdir / "test_data", cases=4, seed=1)

    console.rule("2. plan")
    plan, _ = api.plan(train_dir, args.workdir)
    console.print(plan_table(plan))

    console.rule(f"3. train 2d, fold 0, budget {args.budget}")
    run = api.train(train_dir, "2d", 0, args.workdir, time_budget_s=parse_duration(args.budget), val_iters=10, workers=1)
    console.print(f"run folder: {run}")

    console.rule("4. predict unseen test images")
    predictions = args.workdir / "predictions"
    api.predict_folder(test_dir / "imagesTr", predictions, [run])

    console.rule("5. evaluate")
    summary = api.evaluate(predictions, test_dir / "labelsTr", overlays=4, images_dir=test_dir / "imagesTr")
    console.print(evaluation_table(summary))
    console.print(f"overlays: [bold]{predictions / 'overlays'}[/]   summary: [bold]{summary.summary_json}[/]")
    console.print(
        "\nThe same on the command line:\n"
        f"  autoseg example {args.phantom} {args.workdir}/data\n"
        f"  autoseg plan {train_dir} -w {args.workdir}\n"
        f"  autoseg train {train_dir} 2d 0 -w {args.workdir} --time-budget {args.budget}\n"
        f"  autoseg predict -i {test_dir}/imagesTr -o {predictions} -m {run}\n"
        f"  autoseg evaluate {predictions} {test_dir}/labelsTr --overlays 4"
    )


if __name__ == "__main__":
    main()
