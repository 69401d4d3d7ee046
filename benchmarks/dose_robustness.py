"""Dose robustness (issue 12): Dice per simulated dose for a model trained with and one without dose augmentation.

    .venv/bin/python benchmarks/dose_robustness.py [--budget 30m] [--dataset ../shared/data/Dataset601_SpineXrayAP] \
        [--work /tmp/dose_bench] [--device cpu] [--results benchmarks/results/dose_robustness.md]
    .venv/bin/python benchmarks/dose_robustness.py --phantom --budget 1m --work /tmp/dose_smoke   # a tiny end-to-end check

One budget-aware plan (`autoseg plan --time-budget B --device D --task cervical-lowdose`) is made
and copied with the dose augmentation share set to 0, so the two models differ in nothing else.
Each trains fold 0 of the dataset's folds (splits_final.json: trains on folds 1-4) for the same
budget, in a fresh subprocess, then `autoseg evaluate-dose` simulates the fold-0 validation cases at
each dose (same seed for both models), predicts them and scores them. The results file holds both
models' Dice and IoU per dose, the simulated images' PSNR/SSIM beside the study's figures, and the
verdict on the targets: with augmentation, Dice at 7.5% dose within 0.02 of its own full-dose Dice,
and its full-dose Dice within 0.01 of the model trained without. Run nothing else meanwhile: the
budget is wall time. `--phantom` runs on a small cervical phantom instead (folds made in the workdir).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "Dataset601_SpineXrayAP"
RESULTS = ROOT / "benchmarks" / "results" / "dose_robustness.md"
TASK = "cervical-lowdose"
DOSES = (1.0, 0.5, 0.25, 0.1, 0.075)
MODELS = {"augmented": 0.5, "plain": 0.0}  # dose augmentation share
# The low-dose cervical study (issue 12): simulated images and segmentation at 7.5 % dose.
STUDY = {"ultra-low PSNR (dB)": 27.7, "ultra-low SSIM": 0.27, "diagnostic threshold PSNR (dB)": 38.0,
         "diagnostic threshold SSIM": 0.65, "Dice at 7.5%": 0.98, "IoU at 7.5%": 0.97,
         "manual Dice at 7.5%": 0.80, "manual IoU at 7.5%": 0.67}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--phantom", action="store_true", help="use a small generated cervical phantom instead")
    parser.add_argument("--budget", default="30m", help="training time per model, e.g. 30m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dose_bench"))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", nargs=2, metavar=("MODEL", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:  # one model, in its own process
        train_one(Path(args.train[1]), args.work / args.train[0], args.budget, args.device)
        return
    started = time.monotonic()
    dataset = make_phantom(args.work) if args.phantom else args.dataset
    plan_both(dataset, args.work, args.budget, args.device)
    for model in MODELS:
        subprocess.run([sys.executable, __file__, "--work", str(args.work), "--budget", args.budget, "--device", args.device,
                        "--train", model, str(dataset)], check=True)
    images, labels = fold0_validation(dataset, args.work)
    evaluations = {model: evaluate(args.work / model, dataset, images, labels, args.seed, args.device) for model in MODELS}
    report = summarize(evaluations, dataset, args, time.monotonic() - started)
    (args.work / "dose_robustness.json").write_text(json.dumps(report, indent=1) + "\n")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(markdown(report))
    print(args.results.read_text())


def make_phantom(work: Path) -> Path:
    from autoseg import api

    shutil.rmtree(work / "phantom", ignore_errors=True)
    return api.example("cervical-xray", work / "phantom", cases=10, seed=0, scale=0.5)


def plan_both(dataset: Path, work: Path, budget: str, device: str) -> None:
    """The budget-aware task plan in work/augmented, and the same plan without dose augmentation in work/plain."""
    from autoseg import api, schema
    from autoseg.tasks import apply_task, task_of, task_plan
    from autoseg.trainers.schedule import parse_duration

    plan, _ = api.plan(dataset, work / "augmented", configs=["2d"], time_budget_s=parse_duration(budget), device=device,
                       task=TASK, task_options={"dose_augmentation_p": MODELS["augmented"]})
    options = {**task_of(plan).options, "dose_augmentation_p": MODELS["plain"]}
    source, target = work / "augmented" / "plans" / plan.dataset_name, work / "plain" / "plans" / plan.dataset_name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "fingerprint.json", target / "fingerprint.json")
    schema.write_json_atomic(target / "plan.json", apply_task(plan, task_plan(TASK, options)))


def train_one(dataset: Path, workdir: Path, budget: str, device: str) -> None:
    from autoseg import api
    from autoseg.trainers.schedule import parse_duration

    api.train(dataset, "2d", 0, workdir, time_budget_s=parse_duration(budget), device=device)


def fold0_validation(dataset: Path, work: Path) -> tuple[Path, Path]:
    """Copies of the fold-0 validation cases' images and labels (the folds the models were trained with)."""
    from autoseg.dataset import load_dataset
    from autoseg.trainers.splits import fold_cases
    from autoseg.workdir import Workdir

    ds = load_dataset(dataset)
    _, val_ids = fold_cases(ds, Workdir.at(work / "augmented").splits_path(ds.name), "0")
    images, labels = work / "fold0_val" / "imagesTr", work / "fold0_val" / "labelsTr"
    shutil.rmtree(work / "fold0_val", ignore_errors=True)
    images.mkdir(parents=True), labels.mkdir(parents=True)
    for case in (c for c in ds.cases if c.case_id in set(val_ids)):
        for path in case.images:
            shutil.copy2(path, images / path.name)
        shutil.copy2(case.label, labels / case.label.name)
    return images, labels


def evaluate(workdir: Path, dataset: Path, images: Path, labels: Path, seed: int, device: str) -> dict:
    from autoseg import api
    from autoseg.dataset import load_dataset
    from autoseg.workdir import Workdir

    run = Workdir.at(workdir).run_dir(load_dataset(dataset).name, "2d", 0)
    out = workdir / "dose_eval"
    shutil.rmtree(out, ignore_errors=True)
    result = api.evaluate_dose([run], images, labels, out, DOSES, seed=seed, device=device)
    run_json = json.loads((run / "run.json").read_text())
    return {"run": str(run), "groups": result.groups, "epochs": run_json.get("epochs_done"),
            "elapsed_s": run_json.get("elapsed_s"), "summary": str(result.summary_json)}


def summarize(evaluations: dict, dataset: Path, args, wall_s: float) -> dict:
    by_dose = {m: {g["dose"]: g for g in e["groups"]} for m, e in evaluations.items()}
    aug, plain = by_dose["augmented"], by_dose["plain"]
    low = min(DOSES)
    drop = aug[1.0]["dice_mean"] - aug[low]["dice_mean"]
    gap = plain[1.0]["dice_mean"] - aug[1.0]["dice_mean"]
    return {"dataset": str(dataset), "budget": args.budget, "device": args.device, "seed": args.seed,
            "wall_minutes": round(wall_s / 60, 1), "models": evaluations, "study": STUDY,
            "targets": {"augmented Dice drop, full dose to 7.5%": {"value": drop, "target": 0.02, "met": drop <= 0.02},
                        "augmented full-dose Dice below plain": {"value": gap, "target": 0.01, "met": gap <= 0.01}}}


def markdown(report: dict) -> str:
    models = report["models"]
    by_dose = {m: {g["dose"]: g for g in e["groups"]} for m, e in models.items()}
    lines = [
        "# Dose robustness (issue 12)",
        "",
        f"Produced by `benchmarks/dose_robustness.py --budget {report['budget']} --device {report['device']}` on "
        f"`{report['dataset']}` ({report['wall_minutes']} min in all). Both models: the same budget-aware plan with the "
        "cervical-lowdose task, fold 0 (trained on folds 1-4), evaluated with `autoseg evaluate-dose` on the fold-0 "
        f"validation cases (seed {report['seed']}); `augmented` simulates half its training samples at a dose in "
        "[0.075, 1], `plain` none. Dice/IoU: mean ± SD over images of the per-image mean over classes present; "
        "p: paired Wilcoxon of per-image Dice against full dose.",
        "",
        "| dose | PSNR (dB) | SSIM | Dice augmented | Dice plain | IoU augmented | IoU plain | p augmented | p plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dose in DOSES:
        a, p = by_dose["augmented"][dose], by_dose["plain"][dose]
        psnr = "inf" if a["psnr_db_mean"] is None else f"{a['psnr_db_mean']:.1f}"
        lines.append(f"| {dose:g} | {psnr} | {a['ssim_mean']:.3f} | {_pm(a, 'dice')} | {_pm(p, 'dice')} | "
                     f"{_pm(a, 'iou')} | {_pm(p, 'iou')} | {_p(a)} | {_p(p)} |")
    study = report["study"]
    lines += ["", f"Study: ultra-low dose PSNR {study['ultra-low PSNR (dB)']} dB, SSIM {study['ultra-low SSIM']}; "
              f"diagnostic threshold PSNR {study['diagnostic threshold PSNR (dB)']} dB, SSIM {study['diagnostic threshold SSIM']}; "
              f"at 7.5% dose Dice {study['Dice at 7.5%']} / IoU {study['IoU at 7.5%']} (manual {study['manual Dice at 7.5%']} / "
              f"{study['manual IoU at 7.5%']}).", "",
              f"Training: augmented {models['augmented']['epochs']} epochs in {models['augmented']['elapsed_s']} s, "
              f"plain {models['plain']['epochs']} epochs in {models['plain']['elapsed_s']} s.", "", "Targets:"]
    for name, target in report["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        lines.append(f"- {name}: {target['value']:+.4f} (target <= {target['target']}): **{verdict}**")
    return "\n".join(lines) + "\n"


def _pm(group: dict, metric: str) -> str:
    return f"{group[f'{metric}_mean']:.4f} ± {group[f'{metric}_sd']:.4f}"


def _p(group: dict) -> str:
    return "-" if group["wilcoxon_p"] is None else f"{group['wilcoxon_p']:.3g}"


if __name__ == "__main__":
    main()
