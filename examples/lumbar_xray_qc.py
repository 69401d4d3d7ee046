"""The lumbar-xray-qc task end to end on the lumbar X-ray phantom (under 10 minutes on 2 CPU cores).

    python examples/lumbar_xray_qc.py [--budget 6m] [--cases 36] [--test-cases 18] [--workdir lumbar_qc_work]

1. writes a training phantom and an unseen test phantom (different seeds; AP, LAT and OBL in turn,
   a third of them deliberately not qualified, the true verdicts in cases.json),
2. plans with the task and trains the 2d configuration for a short time budget (positions balanced),
3. predicts the test images: with a model of this task, predict runs the QC over the folder it
   wrote (qc.json, qc.csv, overlays; positions from the test set's cases.json),
4. runs `autoseg qc` on the reference labels, for comparison,
5. prints Dice per position, then `autoseg qc-evaluate` against the true verdicts (accuracy,
   sensitivity, specificity per position) and against the verdicts from the reference labels.
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
from autoseg.tasks.qc_evaluation import dice_by_position
from autoseg.tasks.qc_tables import agreement_table, qc_scores_table
from autoseg.tasks.xray_positions import dataset_positions
from autoseg.trainers.schedule import parse_duration

console = Console()
TASK = "lumbar-xray-qc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="6m", help="training time budget, e.g. 6m")
    parser.add_argument("--cases", type=int, default=36, help="training phantom cases")
    parser.add_argument("--test-cases", type=int, default=18, help="test phantom cases")
    parser.add_argument("--workdir", type=Path, default=Path("lumbar_qc_work"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)  # the example's own folder: always a fresh start
    work = args.workdir

    console.rule("1. phantom datasets (lumbar-xray)")
    train_dir = api.example("lumbar-xray", work / "data", cases=args.cases, seed=0)
    test_dir = api.example("lumbar-xray", work / "test_data", cases=args.test_cases, seed=1)

    console.rule(f"2. plan with the task and train 2d for {args.budget}")
    # the default plan (32 base features) learns the small pedicles and spinous processes sooner
    # in a few minutes than a budget-sized one (16), which first learns the bodies only
    api.plan(train_dir, work, task=TASK, workers=1)
    run = api.train(train_dir, "2d", 0, work, time_budget_s=parse_duration(args.budget), val_iters=10, workers=1)

    console.rule("3. predict the test phantom")
    api.predict_folder(test_dir / "imagesTr", work / "pred", [run], tta=False)
    summary = api.evaluate(work / "pred", test_dir / "labelsTr", workers=1)

    console.rule("4. quality control: of the predictions (written by predict), of the reference labels")
    verdicts = [c["verdict"] for c in json.loads((work / "pred" / "qc.json").read_text())["cases"].values()]
    failed = sum(v != "qualified" for v in verdicts)
    console.print(f"{len(verdicts) - failed} qualified, {failed} not qualified; overlays in {work / 'pred' / 'overlays'}")
    api.qc(test_dir / "imagesTr", test_dir / "labelsTr", work / "qc_reference")

    console.rule("5. results")
    console.print(dice_table(dice_by_position(summary.per_case, dataset_positions(test_dir))))
    truth = api.qc_evaluate(work / "pred" / "qc.json", test_dir / "cases.json", work / "qc_evaluation.json")
    console.print(qc_scores_table(truth))
    agreement = api.qc_evaluate(work / "pred" / "qc.json", work / "qc_reference" / "qc.json")
    console.print("verdicts from predicted vs from reference labels: agreement "
                  f"{agreement['overall']['accuracy']:.3f} over {agreement['overall']['n']} images")
    console.print(agreement_table(agreement["criteria_agreement"]))
    overall = truth["overall"]
    console.print(f"QC against the true verdicts: accuracy {overall['accuracy']}, sensitivity {overall['sensitivity']}, "
                  f"specificity {overall['specificity']}")
    console.print(
        "\nThe same on the command line:\n"
        f"  autoseg example lumbar-xray {work}/data --cases {args.cases}\n"
        f"  autoseg plan {train_dir} -w {work} --task {TASK}\n"
        f"  autoseg train {train_dir} 2d 0 -w {work} --time-budget {args.budget}\n"
        f"  autoseg predict -i {test_dir}/imagesTr -o {work}/pred -m {run} --no-tta   # + qc.json, qc.csv, overlays\n"
        f"  autoseg qc -i {test_dir}/imagesTr -p {test_dir}/labelsTr -o {work}/qc_reference\n"
        f"  autoseg qc-evaluate {work}/pred/qc.json {test_dir}/cases.json"
    )
    (work / "example_result.json").write_text(json.dumps({"dice_per_position": dice_by_position(
        summary.per_case, dataset_positions(test_dir)), "qc": truth, "agreement_with_reference": agreement}, indent=2))


def dice_table(table: dict) -> Table:
    out = Table(title="Dice per position (test phantom)")
    labels = [k for k in next(iter(table.values()), {}) if k not in ("mean", "cases")]
    for column in ("position", "cases", *labels, "mean"):
        out.add_column(column, justify="left" if column == "position" else "right")
    for position, row in table.items():
        out.add_row(position, str(row["cases"]), *(f"{row[label]:.3f}" for label in labels), f"{row['mean']:.3f}")
    return out


if __name__ == "__main__":
    main()
