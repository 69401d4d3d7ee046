"""The cervical-lowdose task end to end on the cervical spine phantom (under 10 minutes on 2 CPU cores).

    python examples/cervical_lowdose.py [--budget 3m] [--cases 24] [--workdir lowdose_work]

1. writes a training phantom and an unseen test phantom (different seeds),
2. simulates the test images at reduced dose and prints their PSNR/SSIM (`autoseg simulate-dose`),
3. trains the 2d configuration twice for the same short budget with the task: once with dose
   augmentation (half the samples at a dose drawn in [7.5%, 100%]) and once without (share 0),
4. evaluates both on the test images at each dose (`autoseg evaluate-dose`) and prints the tables
   and their Dice side by side.
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
from autoseg.render import dose_evaluation_table, dose_quality_table
from autoseg.trainers.schedule import parse_duration

console = Console()
TASK = "cervical-lowdose"
DOSES = (1.0, 0.5, 0.25, 0.1, 0.075)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="3m", help="training time budget of each model, e.g. 3m")
    parser.add_argument("--cases", type=int, default=24, help="training phantom cases")
    parser.add_argument("--workdir", type=Path, default=Path("lowdose_work"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the example's own folder: always a fresh start
    work = args.workdir

    console.rule("1. phantom datasets (cervical-xray)")
    train_dir = api.example("cervical-xray", work / "data", cases=args.cases, seed=0)
    test_dir = api.example("cervical-xray", work / "test_data", cases=6, seed=1)

    console.rule("2. simulate reduced dose")
    simulated = api.simulate_dose(test_dir, work / "simulated", DOSES[1:], seed=0)
    console.print(dose_quality_table(simulated.summary))

    results = {}
    for name, share in (("with dose augmentation", 0.5), ("without", 0.0)):
        console.rule(f"3. train 2d {name}, budget {args.budget}")
        model_work = work / ("augmented" if share else "plain")
        api.plan(train_dir, model_work, task=TASK, task_options={"dose_augmentation_p": share}, workers=1)
        run = api.train(train_dir, "2d", 0, model_work, time_budget_s=parse_duration(args.budget), val_iters=10, workers=1)
        console.rule(f"4. evaluate-dose, model {name}")
        evaluation = api.evaluate_dose([run], test_dir / "imagesTr", test_dir / "labelsTr", model_work / "dose_eval",
                                       DOSES, seed=0, tta=False)
        console.print(dose_evaluation_table(evaluation.groups))
        results[name] = (run, evaluation)

    console.print(side_by_side(results))
    augmented_run = results["with dose augmentation"][0]
    console.print(
        "\nThe same on the command line:\n"
        f"  autoseg example cervical-xray {work}/data --cases {args.cases}\n"
        f"  autoseg simulate-dose {test_dir} -o {work}/simulated --doses 0.5,0.25,0.1,0.075\n"
        f"  autoseg plan {train_dir} -w {work}/augmented --task {TASK}\n"
        f"  autoseg train {train_dir} 2d 0 -w {work}/augmented --time-budget {args.budget}\n"
        f"  autoseg evaluate-dose -m {augmented_run} -i {test_dir}/imagesTr -r {test_dir}/labelsTr -o {work}/augmented/dose_eval"
    )


def side_by_side(results: dict) -> Table:
    table = Table(title="mean Dice per dose: with and without dose augmentation")
    table.add_column("dose", justify="right")
    for name in results:
        table.add_column(name, justify="right")
    groups = {name: {g["dose"]: g for g in evaluation.groups} for name, (_, evaluation) in results.items()}
    for dose in DOSES:
        table.add_row(f"{dose:g}", *(f"{groups[name][dose]['dice_mean']:.4f}" for name in results))
    return table


if __name__ == "__main__":
    main()
