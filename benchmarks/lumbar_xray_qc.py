"""lumbar-xray-qc benchmark (issue 13, item 8): Dice per position and QC accuracy, sensitivity and
specificity per position on a 300-image phantom test set, and on Dataset601's real AP X-rays the
agreement of the field-of-view and centring criteria computed from predicted and from reference
labels (fold-0 validation cases).

    python benchmarks/lumbar_xray_qc.py [--workdir lumbar_qc_bench] [--train-cases 90] [--test-cases 300]
        [--budget 8m] [--dataset601 ../shared/data/Dataset601_SpineXrayAP] [--budget601 10m]
        [--model601 RUN ...] [--skip-phantom] [--skip-601]

Phantom: a training phantom (seed 0) and a test phantom (seed 11; a third deliberately not
qualified), the task planned and 2d fold 0 trained for --budget; the test set predicted without
TTA; `autoseg qc` on the predictions and on the reference labels with the recorded positions;
qc-evaluate against cases.json; position inference accuracy from predicted and reference labels.
Dataset601: 2d fold 0 (splits_final.json) trained with the task for --budget601 (and any
--model601 runs given, e.g. an earlier fold-0 model), its 86 validation images predicted, qc run
with every position AP on predictions and reference labels, and each criterion's agreement.
Writes <workdir>/results.json and <workdir>/figures.md (the tables of benchmarks/results/lumbar_xray_qc.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from autoseg import api
from autoseg.tasks.qc_criteria import infer_position
from autoseg.tasks.qc_evaluation import dice_by_position
from autoseg.tasks.xray_positions import dataset_positions
from autoseg.trainers.schedule import parse_duration

TASK = "lumbar-xray-qc"
log = logging.getLogger("benchmark")


def phantom(args) -> dict:
    work = args.workdir / "phantom"
    started = time.monotonic()
    train_dir = api.example("lumbar-xray", work / "data", cases=args.train_cases, seed=0)
    test_dir = api.example("lumbar-xray", work / "test", cases=args.test_cases, seed=11)
    api.plan(train_dir, work, task=TASK, workers=1)
    run = api.train(train_dir, "2d", 0, work, time_budget_s=parse_duration(args.budget), val_iters=10, workers=1)
    trained = time.monotonic()
    api.predict_folder(test_dir / "imagesTr", work / "pred", [run], tta=False)
    summary = api.evaluate(work / "pred", test_dir / "labelsTr", workers=1)
    api.qc(test_dir / "imagesTr", work / "pred", work / "qc")
    api.qc(test_dir / "imagesTr", test_dir / "labelsTr", work / "qc_reference")
    truth = test_dir / "cases.json"
    positions = dataset_positions(test_dir)
    return {
        "train_cases": args.train_cases, "test_cases": args.test_cases, "budget": args.budget, "run": str(run),
        "unqualified_share": _unqualified_share(truth),
        "dice_per_position": dice_by_position(summary.per_case, positions),
        "qc_predicted_vs_truth": api.qc_evaluate(work / "qc" / "qc.json", truth),
        "qc_reference_labels_vs_truth": api.qc_evaluate(work / "qc_reference" / "qc.json", truth),
        "qc_predicted_vs_reference_labels": api.qc_evaluate(work / "qc" / "qc.json", work / "qc_reference" / "qc.json"),
        "position_inference": {"from_predictions": inference_accuracy(work / "pred", test_dir, positions),
                               "from_reference_labels": inference_accuracy(test_dir / "labelsTr", test_dir, positions)},
        "minutes": {"to_trained": round((trained - started) / 60, 1), "total": round((time.monotonic() - started) / 60, 1)},
    }


def _unqualified_share(cases_json: Path) -> float:
    cases = json.loads(cases_json.read_text())
    return round(sum(c["qc"]["verdict"] == "not qualified" for c in cases.values()) / len(cases), 3)


def inference_accuracy(label_dir: Path, dataset_dir: Path, positions: dict[str, str]) -> dict:
    """Share of images whose position inferred from the label map is the recorded one, per position."""
    from autoseg import io
    from autoseg.tasks.qc_report import label_names, pixel_spacings, radiograph_from

    names, spacings = label_names(dataset_dir / "imagesTr", label_dir), pixel_spacings(dataset_dir / "imagesTr")
    hits: dict[str, list[bool]] = {}
    for case_id, position in positions.items():
        labels, geometry = io.read_label(label_dir / f"{case_id}.png")
        guess = infer_position(radiograph_from(labels, geometry, names, None, spacings.get(case_id)))
        hits.setdefault(position, []).append(guess == position)
    every = [h for v in hits.values() for h in v]
    return {"overall": round(sum(every) / len(every), 4),
            **{p: round(sum(v) / len(v), 4) for p, v in sorted(hits.items())}}


def dataset601(args) -> dict:
    source = Path(args.dataset601)
    splits = json.loads((source / "splits_final.json").read_text())
    val_ids = sorted(splits[0]["val"])
    work = args.workdir / "d601"
    images = work / "val_images"
    labels = work / "val_labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case_id in val_ids:  # the fold-0 validation cases as their own folders (copies; inputs untouched)
        shutil.copy(source / "imagesTr" / f"{case_id}_0000.png", images / f"{case_id}_0000.png")
        shutil.copy(source / "labelsTr" / f"{case_id}.png", labels / f"{case_id}.png")
    shutil.copy(source / "dataset.json", labels / "dataset.json")  # label names for qc
    positions = work / "positions.json"
    positions.write_text(json.dumps({c: "AP" for c in val_ids}))
    api.qc(images, labels, work / "qc_reference", positions)
    models = {}
    if args.budget601 != "0":
        started = time.monotonic()
        api.plan(source, work / "train", task=TASK, workers=1)
        run = api.train(source, "2d", 0, work / "train", time_budget_s=parse_duration(args.budget601), val_iters=10,
                        workers=1)
        models[f"2d fold 0, task plan, {args.budget601} here"] = (run, round((time.monotonic() - started) / 60, 1))
    for i, run in enumerate(args.model601 or []):
        models[f"given run {i}: {run}"] = (Path(run), None)
    rows = {}
    for name, (run, minutes) in models.items():
        out = work / f"model_{len(rows)}"
        api.predict_folder(images, out / "pred", [run], tta=False)
        (out / "pred" / "dataset.json").write_text((source / "dataset.json").read_text())
        summary = api.evaluate(out / "pred", labels, workers=1, only_predicted=True)
        api.qc(images, out / "pred", out / "qc", positions)
        agreement = api.qc_evaluate(out / "qc" / "qc.json", work / "qc_reference" / "qc.json")
        rows[name] = {"run": str(run), "minutes_to_train": minutes, "mean_fg_dice": round(summary.mean_foreground_dice, 4),
                      "dice_per_class": {k: round(v["dice"], 4) for k, v in summary.mean_per_class.items()},
                      "criteria_agreement": agreement["criteria_agreement"],
                      "verdict_agreement": agreement["overall"]["accuracy"],
                      "reference_failures": _failures(work / "qc_reference" / "qc.json"),
                      "predicted_failures": _failures(out / "qc" / "qc.json")}
    return {"val_cases": len(val_ids), "models": rows}


def _failures(qc_json: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in json.loads(qc_json.read_text())["cases"].values():
        for name in entry["failed"]:
            counts[name] = counts.get(name, 0) + 1
    return counts


def markdown(results: dict) -> str:
    lines = ["# lumbar-xray-qc benchmark figures (written by benchmarks/lumbar_xray_qc.py)", ""]
    ph = results.get("phantom")
    if ph:
        lines += [f"Phantom: {ph['train_cases']} training cases (fold 0 of 5 trains on 80%), {ph['test_cases']} test "
                  f"images ({ph['unqualified_share']:.0%} not qualified), budget {ph['budget']}, "
                  f"{ph['minutes']['total']} min in all.", "",
                  "| position | cases | " + " | ".join(k for k in next(iter(ph["dice_per_position"].values())) if k not in ("cases",)) + " |",
                  "|---|---|" + "---|" * (len(next(iter(ph["dice_per_position"].values()))) - 1)]
        for position, row in ph["dice_per_position"].items():
            lines.append(f"| {position} | {row['cases']} | " + " | ".join(f"{v:.3f}" for k, v in row.items() if k != "cases") + " |")
        for key, title in (("qc_predicted_vs_truth", "QC from predicted labels vs the true verdicts"),
                           ("qc_reference_labels_vs_truth", "QC from reference labels vs the true verdicts"),
                           ("qc_predicted_vs_reference_labels", "QC from predicted vs from reference labels")):
            lines += ["", f"**{title}**", "", "| position | n | accuracy | sensitivity | specificity | caught | missed | false alarms |",
                      "|---|---|---|---|---|---|---|---|"]
            scores = ph[key]
            for position, s in [*scores["positions"].items(), ("overall", scores["overall"])]:
                c = s["confusion"]
                lines.append(f"| {position} | {s['n']} | {s['accuracy']} | {s['sensitivity']} | {s['specificity']} | "
                             f"{c['not_qualified_caught']} | {c['not_qualified_passed']} | {c['qualified_failed']} |")
        lines += ["", f"Position inference accuracy: {json.dumps(ph['position_inference'])}"]
    d6 = results.get("dataset601")
    if d6:
        lines += ["", f"Dataset601 fold-0 validation: {d6['val_cases']} AP images", "",
                  "| model | mean fg Dice | field_of_view agreement | centring agreement | tilt agreement | exposure agreement | verdict agreement |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in d6["models"].items():
            agree = row["criteria_agreement"]
            cells = [str(agree.get(c, {}).get("agreement", "-")) for c in ("field_of_view", "centring", "tilt", "exposure")]
            lines.append(f"| {name} | {row['mean_fg_dice']} | " + " | ".join(cells) + f" | {row['verdict_agreement']} |")
        for name, row in d6["models"].items():
            lines.append(f"\n{name}: failures from reference labels {row['reference_failures']}, "
                         f"from predicted labels {row['predicted_failures']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("lumbar_qc_bench"))
    parser.add_argument("--train-cases", type=int, default=90)
    parser.add_argument("--test-cases", type=int, default=300)
    parser.add_argument("--budget", default="8m")
    parser.add_argument("--dataset601", default=str(Path(__file__).resolve().parents[2] / "shared/data/Dataset601_SpineXrayAP"))
    parser.add_argument("--budget601", default="10m", help="0: train nothing (use --model601)")
    parser.add_argument("--model601", action="append", help="an already trained Dataset601 fold-0 run to evaluate too")
    parser.add_argument("--skip-phantom", action="store_true")
    parser.add_argument("--skip-601", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    if not args.skip_phantom:
        results["phantom"] = phantom(args)
        path.write_text(json.dumps(results, indent=2))
    if not args.skip_601:
        results["dataset601"] = dataset601(args)
        path.write_text(json.dumps(results, indent=2))
    (args.workdir / "figures.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
