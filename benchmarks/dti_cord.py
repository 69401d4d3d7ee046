"""dti-cord (issue 16): Dice and FA-index error per region on the phantom; cord and gray-matter Dice by
cross-validation on Dataset631_CordGM; DTI_cord_raw prepared, predicted and summarized by region.

    .venv/bin/python benchmarks/dti_cord.py phantom [--budget 8m] [--cases 24] [--test-cases 8] \
        [--b-value 800] [--snr 20] [--work /tmp/dti_bench]
    .venv/bin/python benchmarks/dti_cord.py cordgm [--budget 10m] [--folds 0] [--work /tmp/dti_bench]
    .venv/bin/python benchmarks/dti_cord.py raw --model /tmp/dti_bench/phantom/model/runs/.../2d/fold_0 \
        [--work /tmp/dti_bench]

phantom: a training and an unseen test phantom (different seeds; Rician noise at the given b-value
and white-matter b=0 SNR), the task planned (2d on the mean b=0 image), fold 0 trained for the
budget (wall time), the test DWI folder predicted directly, then Dice per region (`autoseg
evaluate`) and the FA-index error |FA(pred) - FA(ref)| / FA(ref) per region (`autoseg dti-metrics`,
FA from dipy's WLS fit of the noisy DWI), against the study's targets (at most 10 % in every region,
6 % on average).
cordgm: Dataset631 (T2*-weighted, manual white/gray matter) planned with the task and the given
folds of its splits_final.json (one subject per fold) trained for the budget each and predicted
(`autoseg train` cross-validation); cord (white + gray matter) and gray-matter Dice per validation
case.
raw: DTI_cord_raw prepared (`dti-prepare`), its DWI predicted by the given 8-region model, its
approximate white/gray labels turned into the eight regions (`dti-regions`), then FA/MD per region
of prediction and reference (`dti-metrics`). A smoke check: the labels were carried over from
another scan, 1-2 voxels off.
Each part writes <work>/<part>.json and prints a Markdown block for benchmarks/results/dti_cord.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASK = "dti-cord"
SIDES = ("left", "right")
COLUMNS = ("wm_dorsal", "wm_lateral", "wm_ventral", "gm")
TARGET_REGION, TARGET_MEAN = 10.0, 6.0  # FA-index error, %: the study's range was 4.6-10.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("phantom", "cordgm", "raw"))
    parser.add_argument("--budget", default=None, help="training budget (phantom 8m, cordgm 10m per fold)")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--b-value", type=float, default=800.0)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--folds", default="0", help="cordgm: comma-separated folds of splits_final.json")
    parser.add_argument("--model", type=Path, help="raw: an 8-region model (run folder)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dti_bench"))
    args = parser.parse_args()
    work = args.work / args.part
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.time()
    result = {"phantom": phantom, "cordgm": cordgm, "raw": raw}[args.part](args, work)
    result["wall_s"] = round(time.time() - started, 1)
    (work / f"{args.part}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])


# ---------------------------------------------------------------- phantom
def phantom(args, work: Path) -> dict:
    from autoseg import api
    from autoseg.trainers.schedule import parse_duration

    options = {"b_value": args.b_value, "snr": args.snr}
    train_dir = api.example("dti-cord", work / "data", cases=args.cases, seed=0, **options)
    test_dir = api.example("dti-cord", work / "test", cases=args.test_cases, seed=1, **options)
    budget = args.budget or "8m"
    # sized for the budget on this machine (README "Plans for a time budget"), as the cordgm part
    plan, _ = api.plan(train_dir, work / "model", task=TASK, workers=1, time_budget_s=parse_duration(budget), device="cpu")
    config = plan.configurations["2d"]
    run = api.train(train_dir, "2d", 0, work / "model", time_budget_s=parse_duration(budget), val_iters=10, workers=1)
    predictions = work / "predictions"
    api.predict_folder(test_dir / "dwi", predictions, [run], tta=False)
    summary = api.evaluate(predictions, test_dir / "labelsTr", workers=1)
    metrics = api.dti_metrics(test_dir, predictions, work / "metrics", test_dir / "labelsTr")
    dice = {name: values.get("dice") for name, values in summary.mean_per_class.items()}
    errors = {row["region"]: row for row in metrics.summary}
    epochs = json.loads((run / "run.json").read_text()).get("epochs_done") if (run / "run.json").is_file() else None
    lines = [f"Phantom: {args.cases} training / {args.test_cases} test cases, b={args.b_value:g} s/mm^2, 12 directions, "
             f"white-matter b=0 SNR {args.snr:g} (Rician); planned for the budget (patch {list(config.patch_size)}, "
             f"batch {config.batch_size}); fold 0 trained {budget} wall time"
             + (f" ({epochs} epochs)" if epochs else "") + f"; run {run}.", "",
             "| region | Dice left | Dice right | FA error left % | FA error right % |", "|---|---|---|---|---|"]
    for column in COLUMNS:
        row = errors.get(column, {})
        lines.append(f"| {column} | " + " | ".join(_num(dice.get(f"{column}_{s}"), 3) for s in SIDES) + " | "
                     + " | ".join(_mean_sd(row.get(f"{s}_mean"), row.get(f"{s}_sd")) for s in SIDES) + " |")
    mean_error = errors.get("all", {}).get("both_mean")
    # a region never predicted has no FA error: it cannot meet the per-region target
    per_region = [errors.get(c, {}).get(f"{s}_mean") for c in COLUMNS for s in SIDES]
    worst = None if None in per_region else max(per_region)
    lines += ["", f"Mean foreground Dice {summary.mean_foreground_dice:.3f}; FA-index error mean over regions and cases "
              f"{_num(mean_error, 1)} % (target <= {TARGET_MEAN:g}: {'met' if mean_error is not None and mean_error <= TARGET_MEAN else 'missed'}), "
              f"worst region mean {_num(worst, 1)} % (target <= {TARGET_REGION:g} in every region: "
              f"{'met' if worst is not None and worst <= TARGET_REGION else 'missed'})."]
    return {"dice": dice, "fa_error": metrics.summary, "run": str(run), "markdown": "\n".join(lines)}


# ---------------------------------------------------------------- Dataset631 cross-validation
def cordgm(args, work: Path) -> dict:
    from autoseg import api
    from autoseg.io import read_label
    from autoseg.trainers.schedule import parse_duration

    dataset = SHARED / "Dataset631_CordGM"
    if not dataset.is_dir():
        sys.exit(f"{dataset}: not found")
    budget = args.budget or "10m"
    folds = [f.strip() for f in args.folds.split(",")]
    # sized for the budget (coarser grid, smaller patch and network): the default plan's 320 x 384
    # patches take seconds per step on 2 CPU cores, too few steps in minutes
    api.plan(dataset, work / "model", task=TASK, workers=1, time_budget_s=parse_duration(budget), device="cpu")
    crossval = api.cross_validate(dataset, "2d", folds, work / "model", time_budget_s=parse_duration(budget),
                                  val_iters=10, workers=1)
    cases = []
    folder = crossval if crossval.is_dir() else crossval.parent  # the crossval folder (or its crossval.json)
    for prediction in sorted((folder / "predictions").glob("*.nii.gz")):
        case_id = prediction.name[: -len(".nii.gz")]
        pred, _ = read_label(prediction)
        ref, _ = read_label(dataset / "labelsTr" / prediction.name)
        cases.append({"case": case_id, "cord_dice": _dice(pred > 0, ref > 0), "gm_dice": _dice(pred == 2, ref == 2),
                      "wm_dice": _dice(pred == 1, ref == 1)})
    config = json.loads((work / "model" / "plans" / dataset.name / "plan.json").read_text())["configurations"]["2d"]
    lines = [f"Dataset631_CordGM, 2d with the task planned for the budget (patch {config['patch_size']}, batch "
             f"{config['batch_size']}, spacing {[round(s, 3) for s in config['spacing']]} mm), folds {', '.join(folds)} of splits_final.json (one subject "
             f"each) trained {budget} wall time per fold; validation cases predicted without TTA.", "",
             "| case | cord Dice | gray matter Dice | white matter Dice |", "|---|---|---|---|"]
    lines += [f"| {c['case']} | {c['cord_dice']:.3f} | {c['gm_dice']:.3f} | {c['wm_dice']:.3f} |" for c in cases]
    if cases:
        lines.append(f"| mean | {np.mean([c['cord_dice'] for c in cases]):.3f} | {np.mean([c['gm_dice'] for c in cases]):.3f} "
                     f"| {np.mean([c['wm_dice'] for c in cases]):.3f} |")
    return {"cases": cases, "crossval": str(crossval), "markdown": "\n".join(lines)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


# ---------------------------------------------------------------- DTI_cord_raw smoke check
def raw(args, work: Path) -> dict:
    from autoseg import api

    if args.model is None:
        sys.exit("raw: --model RUN (an 8-region dti-cord model, e.g. from the phantom part) is needed")
    source = SHARED / "DTI_cord_raw"
    prepared = api.dti_prepare(source, work / "prepared", channels=("b0", "fa", "md"))
    regions = api.dti_regions(work / "prepared", work / "regions")
    predictions = work / "predictions"
    api.predict_folder([source / "dmri.nii.gz"], predictions, [args.model], tta=False)
    metrics = api.dti_metrics(work / "prepared", predictions, work / "metrics", regions.out_dir / "labelsTr")
    rows = list(_csv(metrics.metrics_csv))
    lines = [f"DTI_cord_raw ({prepared.training} case, b=750, 6 directions, 0.84 x 0.84 x 17.5 mm) predicted from its "
             f"4D DWI by the phantom model {args.model}; reference = its approximate white/gray labels turned into "
             "eight regions by dti-regions (carried over from another scan, 1-2 voxels off).", "",
             "| region | voxels pred | voxels ref | FA pred | FA ref | MD pred (um^2/ms) | FA error % |", "|---|---|---|---|---|---|---|"]
    by = {(r["Metric"], r["Label"]): r for r in rows}
    errors = {r["region"]: r for r in _csv(metrics.error_csv)} if metrics.error_csv else {}
    for column in COLUMNS:
        for side in SIDES:
            name = f"{column}_{side}"
            fa, md, err = by.get(("FA", name), {}), by.get(("MD", name), {}), errors.get(name, {})
            md_value = f"{float(md['BIN()']) * 1000:.2f}" if md.get("BIN()") else "-"
            lines.append(f"| {name} | {fa.get('Size [vox]', '-')} | {err.get('voxels_ref', '-')} | {fa.get('BIN()') or '-'} | "
                         f"{err.get('FA_ref') or '-'} | {md_value} | {err.get('FA_error_percent') or '-'} |")
    return {"metrics_csv": str(metrics.metrics_csv), "markdown": "\n".join(lines)}


def _csv(path):
    import csv

    with open(path) as stream:
        yield from csv.DictReader(stream)


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_sd(mean, sd) -> str:
    return "-" if mean is None else f"{mean:.1f} +- {sd:.1f}"


if __name__ == "__main__":
    main()
