"""Accuracy per CPU-hour: Dice on unseen cases after a fixed training time, per plan.

    .venv/bin/python benchmarks/budget_training.py --budget 30m [--budget 10m ...] \
        [--variant budget --variant default] [--dataset ../shared/data/Dataset601_SpineXrayAP] \
        [--config 2d] [--fold 0] [--warmup 0.05] [--work /tmp/budget_bench] \
        [--variant nnunet --nnunet-python /tmp/nnvenv/bin/python]

Each row, in a fresh subprocess: plan the dataset (`budget`: `autoseg plan --time-budget B --device
cpu`; `default`: the default plan), train one fold of the dataset's splits_final.json for the
budget (`autoseg train DATASET CONFIG FOLD --time-budget B --device cpu`, precision auto: the plan's
bf16 where it recorded one, else fp32), predict that fold's validation cases (mirror TTA, as
`autoseg predict` does by default) and score them with `autoseg evaluate --only-predicted`. The
row records the plan, the iterations trained, the time-to-Dice curve (run.json) and the Dice per
class; results are appended to benchmarks/results/budget_training.md and kept as JSON in WORK.
`nnunet`: nnU-Net v2's default plan and trainer for the same wall time and fold, in its own venv
(benchmarks/nnunet_budget_train.py; see plan_vs_nnunet.py for the venv), its predictions scored by
`autoseg evaluate` like the others; it needs the dataset's splits_final.json (nnU-Net's own random
split would hold out other cases).
Run nothing else on the machine meanwhile: the budget is wall time.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "Dataset601_SpineXrayAP"
RESULTS = ROOT / "benchmarks" / "results" / "budget_training.md"


def _every_axis_mirrored(cfg):
    return replace(cfg, mirror_axes=tuple(range(len(cfg.patch_size))))


def _no_deep_supervision(cfg):
    return replace(cfg, network=replace(cfg.network, deep_supervision=False))


# Variants that train the budget row's plan with one thing changed, to measure that one thing:
# budget-all-mirrors: every axis mirrored (nnU-Net's rule), for the label-order rule of planners/mirroring.py;
# budget-no-deep-supervision: the loss on the full-resolution output only, for whether deep
# supervision helps or slows learning in a short budget; budget-equal-deep-supervision: every
# output weighted alike instead of halving the weight per coarser output (the loss weighting).
PLAN_CHANGES = {"budget-all-mirrors": _every_axis_mirrored, "budget-no-deep-supervision": _no_deep_supervision}
TRAIN_CHANGES = {"budget-equal-deep-supervision": {"deep_supervision_ratio": 1.0}}
VARIANTS = ("budget", "default", *PLAN_CHANGES, *TRAIN_CHANGES, "nnunet")
DEFAULT_NNUNET_PYTHON = Path("/tmp/nnvenv/bin/python")
ITERS_PER_EPOCH = 250


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--config", default="2d")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--budget", action="append", required=True, help="e.g. 10m, 30m, 1h (repeatable)")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="plans to compare [default: budget]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/budget_bench"))
    parser.add_argument("--iterations", type=int, help="train this many iterations instead of for the budget (the plan "
                        "is still made for it): compares variants at equal work on a machine that is not quiet")
    parser.add_argument("--warmup", type=float, default=0.0, help="linear lr warm-up over this fraction of the run "
                        "(`autoseg train --warmup`); rows with and without it are the warm-up A/B")
    parser.add_argument("--nnunet-python", type=Path, default=DEFAULT_NNUNET_PYTHON,
                        help="interpreter of a venv with nnunetv2, for the nnunet variant")
    parser.add_argument("--row", nargs=3, metavar=("VARIANT", "BUDGET", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        variant, budget, out_json = args.row
        result = _nnunet_row(args.dataset, args.config, args.fold, budget, args.work, args.nnunet_python) \
            if variant == "nnunet" else run_row(args.dataset, args.config, args.fold, variant, budget, args.work, args.iterations, args.warmup)
        Path(out_json).write_text(json.dumps(result, indent=1))
        return
    rows = []
    for budget in args.budget:
        for variant in args.variant or ["budget"]:
            out_json = args.work / f"{variant}_{budget}{_warmup_tag(args.warmup)}.json"
            out_json.parent.mkdir(parents=True, exist_ok=True)
            row_options = ["--iterations", str(args.iterations)] if args.iterations else []
            row_options += ["--warmup", str(args.warmup), "--nnunet-python", str(args.nnunet_python)]
            subprocess.run([sys.executable, __file__, "--dataset", str(args.dataset), "--config", args.config, "--fold",
                            args.fold, "--work", str(args.work), "--budget", budget, *row_options,
                            "--row", variant, budget, str(out_json)], check=True)
            rows.append(json.loads(out_json.read_text()))
            print(json.dumps(_summary_line(rows[-1])), flush=True)
    _append_markdown(rows, args)


def run_row(dataset: Path, config: str, fold: str, variant: str, budget: str, work: Path, iterations: int | None = None,
            warmup: float = 0.0) -> dict:
    from autoseg import api, schema
    from autoseg.config import load_plan
    from autoseg.trainers.schedule import parse_duration
    from autoseg.trainers.splits import fold_cases
    from autoseg.dataset import load_dataset

    budget_s = parse_duration(budget)
    workdir = work / (f"{variant}_{budget}" if not iterations else f"{variant}_{budget}_{iterations}it")
    workdir = workdir.with_name(workdir.name + _warmup_tag(warmup))
    ds = load_dataset(dataset)
    run = workdir / "runs" / ds.name / config / f"fold_{fold}"
    if _finished(run):  # a row whose scoring failed is scored again, not retrained
        plan, plan_s, train_wall_s = load_plan(workdir / "plans" / ds.name / "plan.json"), None, None
    else:
        started = time.monotonic()
        twin = workdir.with_name(workdir.name.replace(variant, "budget", 1).removesuffix(_warmup_tag(warmup)))
        plan = _plan(dataset, workdir, config, variant, budget_s, twin)
        plan_s = time.monotonic() - started
        length = dict(epochs=-(-iterations // ITERS_PER_EPOCH), iters_per_epoch=ITERS_PER_EPOCH) if iterations \
            else dict(time_budget_s=budget_s)
        api.train(dataset, config, fold, workdir, device="cpu", warmup=warmup, **length, **TRAIN_CHANGES.get(variant, {}))
        train_wall_s = time.monotonic() - started - plan_s
    _, val_ids = fold_cases(ds, workdir / "plans" / ds.name / "splits.json", fold)
    images = _validation_folder(ds, val_ids, workdir / "validation_images")
    predictions = workdir / "predictions"
    t0 = time.monotonic()
    api.predict_folder(images, predictions, [run], device="cpu", skip_existing=True)
    predict_s = time.monotonic() - t0
    summary = api.evaluate(predictions, dataset / "labelsTr", only_predicted=True)
    record = schema.read_json(run / "run.json")
    return {
        "variant": variant + (f", warm-up {warmup:.0%}" if warmup else ""),
        "budget": budget if not iterations else f"{budget} plan, {iterations} it",
        "dataset": ds.name, "config": config, "fold": fold, "val_cases": len(val_ids),
        "plan_s": plan_s and round(plan_s, 1), "train_wall_s": train_wall_s and round(train_wall_s, 1),
        "predict_s_per_case": round(predict_s / max(len(val_ids), 1), 2),
        **_plan_fields(plan.config(config)),
        "epochs": record["epochs_done"], "elapsed_s": record["elapsed_s"], "time_to_dice": record.get("time_to_dice"),
        **_scores(summary),
    }


def _plan_fields(cfg) -> dict:
    """What a row reports of the configuration it trained."""
    return {
        "spacing": cfg.spacing, "patch": cfg.patch_size, "batch": cfg.batch_size, "features": cfg.network.features[0],
        "mirror_axes": cfg.mirror_axes, "precision": cfg.budget.precision if cfg.budget else "fp32 (auto)",
        "expected_iterations": cfg.budget.expected_iterations if cfg.budget else None,
    }


def _nnunet_row(dataset: Path, config: str, fold: str, budget: str, work: Path, nnunet_python: Path) -> dict:
    """nnU-Net v2 trained for the budget on the same fold, predicting the same validation cases."""
    from autoseg import api
    from autoseg.dataset import load_dataset
    from autoseg.trainers.schedule import parse_duration

    splits = dataset / "splits_final.json"
    if not splits.is_file():
        raise SystemExit(f"{splits}: missing; the nnunet row needs the dataset's own folds to hold out the same cases")
    val_ids = json.loads(splits.read_text())[int(fold)]["val"]
    workdir = work / f"nnunet_{budget}"
    images = _validation_folder(load_dataset(dataset), val_ids, workdir / "validation_images")
    predictions, result_json = workdir / "predictions", workdir / "nnunet.json"
    if not result_json.is_file():  # a row whose scoring failed is scored again, not retrained
        subprocess.run([str(nnunet_python), str(ROOT / "benchmarks" / "nnunet_budget_train.py"), "--dataset", str(dataset),
                        "--config", config, "--fold", fold, "--budget-s", str(parse_duration(budget)),
                        "--work", str(workdir / "nnunet_folders"), "--images", str(images), "--out", str(predictions),
                        "--result", str(result_json)], check=True, stdout=subprocess.DEVNULL)
    trained = json.loads(result_json.read_text())
    summary = api.evaluate(predictions, dataset / "labelsTr", only_predicted=True)
    plan = trained["plan"]
    return {
        "variant": f"nnU-Net v2 {trained['nnunetv2_version']} (default plan, nnUNetTrainer)", "budget": budget,
        "dataset": dataset.name, "config": config, "fold": fold, "val_cases": len(val_ids),
        "plan_s": round(trained["preprocess_s"], 1), "train_wall_s": round(trained["train_wall_s"], 1),
        "predict_s_per_case": round(trained["predict_s_per_case"], 2),
        "spacing": plan["spacing"], "patch": plan["patch_size"], "batch": plan["batch_size"],
        "features": plan["base_features"], "mirror_axes": "all", "precision": "fp32",
        "expected_iterations": None, "epochs": f"{trained['epochs_started']} ({trained['iterations']} it)",
        "elapsed_s": trained["train_wall_s"], "time_to_dice": None,
        **_scores(summary),
    }


def _plan(dataset: Path, workdir: Path, config: str, variant: str, budget_s: float, twin: Path):
    """The variant's plan. A row that differs from the budget row only in how it trains (all mirrors,
    deep supervision off or reweighted, a warm-up) takes that row's plan when there is one: the same
    measured choice, so the A/B compares the one change."""
    from autoseg import api, schema
    from autoseg.config import load_plan
    from autoseg.dataset import load_dataset

    twin_plan = twin / "plans" / load_dataset(dataset).name / "plan.json"
    reuse = variant != "default" and twin != workdir and twin_plan.is_file()
    # a reused plan needs only the dataset checked and fingerprinted here, not its step times measured again
    measure = variant != "default" and not reuse
    plan, path = api.plan(dataset, workdir, configs=[config], time_budget_s=budget_s if measure else None, device="cpu")
    if reuse:
        plan = load_plan(twin_plan)
    if variant in PLAN_CHANGES:
        plan = replace(plan, configurations={**plan.configurations, config: PLAN_CHANGES[variant](plan.config(config))})
    schema.write_json_atomic(path, plan)
    return plan


def _warmup_tag(warmup: float) -> str:
    return f"_warmup{warmup:g}" if warmup else ""


def _validation_folder(ds, val_ids, folder: Path) -> Path:
    """The fold's validation images as a folder in nnU-Net naming (links), so predictions are named by case."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in ds.cases:
        if case.case_id in set(val_ids):
            for image in case.images:
                link = folder / image.name
                if not link.exists():
                    link.symlink_to(image.resolve())
    return folder


def _scores(summary) -> dict:
    return {"mean_foreground_dice": summary.mean_foreground_dice,
            "dice_per_class": {name: values.get("dice") for name, values in summary.mean_per_class.items()}}


def _finished(run: Path) -> bool:
    return (run / "run.json").is_file() and json.loads((run / "run.json").read_text()).get("status") == "finished"


def _summary_line(row: dict) -> dict:
    return {k: row[k] for k in ("variant", "budget", "patch", "batch", "elapsed_s", "mean_foreground_dice")}


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def _append_markdown(rows: list[dict], args) -> None:
    classes = list(rows[0]["dice_per_class"])
    lines = [f"\n### {time.strftime('%Y-%m-%d')}, {rows[0]['dataset']} {rows[0]['config']}, fold {rows[0]['fold']} "
             f"({rows[0]['val_cases']} validation cases), 2-core CPU\n",
             "| plan | budget | spacing | patch | batch | base features | mirrored axes | precision | epochs | trained (min) "
             "| iterations expected | mean fg Dice | " + " | ".join(classes) + " |",
             "|" + "---|" * (12 + len(classes))]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['budget']} | {'x'.join(f'{s:g}' for s in r['spacing'])} | {'x'.join(map(str, r['patch']))} "
                     f"| {r['batch']} | {r['features']} | {r.get('mirror_axes', '-')} | {r['precision']} | {r['epochs']} "
                     f"| {r['elapsed_s'] / 60:.1f} "
                     f"| {r['expected_iterations'] or '-'} | {_fmt(r['mean_foreground_dice'])} | "
                     + " | ".join(_fmt(r["dice_per_class"][c]) for c in classes) + " |")
    lines.append("\nTime to Dice (mean validation pseudo-Dice of the epoch ending at that minute of training):\n")
    for r in rows:
        curve = ", ".join(f"{p['minutes']:.0f}': {p['pseudo_dice']:.2f}" for p in r.get("time_to_dice") or [])
        lines.append(f"- {r['variant']} {r['budget']}: {curve or 'not recorded (no validation within the budget)'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
