"""Lumbar CT on the large-field phantom: three model layouts at equal training time (issue 14, item 7).

    python benchmarks/lumbar_ct.py [--budget 6m] [--cases 12] [--test-cases 4]
                                   [--workdir lumbar_ct_bench] [--out benchmarks/results/lumbar_ct.md]
                                   [--dataset611 ../shared/data/Dataset611_LumbarCT]

Each layout plans in a workdir of its own (task lumbar-ct, `--gpu-memory-gb 1.2` so that these
CPU-sized trunk volumes are large for their patch, as a clinical trunk CT is for an 8 GB patch, and
the plan has 3d_lowres and the cascade), sized for the time each of its stages trains on this CPU
(`--time-budget`, planners/time_budget.py: T for 3d_fullres, T/2 for the two-stage layouts, whose
crop dataset inherits it); then, with the same total training time T (`--budget`):

- 3d_fullres on the whole volume: one model for T;
- 3d_lowres -> 3d_cascade_fullres: 2-fold cross-validation of 3d_lowres (T/4 per fold; its
  out-of-fold predictions feed the second stage's training), then 3d_cascade_fullres on every
  case for T/2; prediction runs both folds of the first stage, then the second;
- localize -> crop -> segment: 3d_lowres localizer for T/2, 3d_fullres on crops for T/2.

Each layout then predicts the unseen test volumes in a fresh process (wall time per case and
the process's peak resident memory) and is evaluated: per-vertebra Dice and HD95, identification
rate (centroid closest and within 20 mm), mean centroid distance. Last, each predicts the one
real CT of Dataset611 (labels made by TotalSegmentator, not manual): a domain-shift check, with
the output's geometry compared to the input's and the connected components counted per level.
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import time
from pathlib import Path


LAYOUTS = ("3d_fullres", "cascade", "localized")
GPU_MEMORY_GB = 1.2
TASK = "lumbar-ct"
LEVELS = ("L1", "L2", "L3", "L4", "L5", "sacrum")

log = logging.getLogger("lumbar_ct_bench")


# ---------------------------------------------------------------- training, one layout per workdir
def train_layout(layout: str, data: Path, work: Path, budget_s: float, plans: str = "budget") -> dict:
    """Train one layout for `budget_s` seconds of training in total; returns what predicts with it.
    `plans`: "budget" sizes each stage for its time on this CPU, "default" keeps the 1.2 GB plan."""
    from autoseg import api

    stage_s = budget_s if layout == "3d_fullres" else budget_s / 2
    sizing = {"time_budget_s": stage_s, "device": "cpu"} if plans == "budget" else {}
    api.plan(data, work, gpu_memory_gb=GPU_MEMORY_GB, task=TASK, workers=1, **sizing)
    options = {"iters_per_epoch": 25, "val_iters": 4, "workers": 1}
    started = time.perf_counter()
    if layout == "3d_fullres":
        model = {"models": [str(api.train(data, "3d_fullres", "full", work, time_budget_s=budget_s, **options))]}
    elif layout == "cascade":
        api.cross_validate(data, "3d_lowres", num_folds=2, workdir=work, time_budget_s=budget_s / 4, **options)
        run = api.train(data, "3d_cascade_fullres", "full", work, time_budget_s=budget_s / 2, **options)
        model = {"models": [str(run)]}
    else:
        model = {"layout": str(api.train_localized(data, "full", work, time_budget_s=budget_s / 2, **options))}
    model["train_s"] = time.perf_counter() - started  # includes preprocessing and cross-validation predictions
    model["stages"] = planned_stages(layout, data.name, work)
    return model


# the (dataset suffix, configuration) each layout trains
STAGES = {"3d_fullres": (("", "3d_fullres"),), "cascade": (("", "3d_lowres"), ("", "3d_cascade_fullres")),
          "localized": (("", "3d_lowres"), ("_crops", "3d_fullres"))}


def planned_stages(layout: str, dataset: str, work: Path) -> list[dict]:
    """What the budget planner chose for each stage the layout trains (from its plan.json files)."""
    from autoseg.config import load_plan
    from autoseg.workdir import Workdir

    stages = []
    for suffix, name in STAGES[layout]:
        config = load_plan(Workdir.at(work).plan_path(dataset + suffix)).config(name)
        budget = config.budget
        stages.append({"stage": f"{name}{' on crops' if suffix else ''}", "spacing": config.spacing,
                       "patch": config.patch_size, "batch": config.batch_size, "features": config.network.features[0],
                       "step_s": budget.step_time_s if budget else None,
                       "iterations": budget.expected_iterations if budget else None})
    return stages


# ---------------------------------------------------------------- prediction in a fresh process
def _predict_child(model: dict, images: str, out: str, result: str) -> None:
    from autoseg import api

    started = time.perf_counter()
    if "layout" in model:
        written = api.predict_localized(images, out, model["layout"], tta=False, device="cpu")
    else:
        written = api.predict_folder(images, out, model["models"], tta=False, device="cpu")
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    Path(result).write_text(json.dumps({"cases": len(written), "seconds": elapsed, "peak_mib": peak_mib}))


def predict_measured(model: dict, images: Path, out: Path) -> dict:
    """Predict in a spawned process: wall seconds per case (models loaded included) and peak RSS."""
    result = out.with_suffix(".timing.json")
    process = multiprocessing.get_context("spawn").Process(target=_predict_child, args=(model, str(images), str(out), str(result)))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"prediction into {out} failed (exit {process.exitcode})")
    found = json.loads(result.read_text())
    return {"seconds_per_case": found["seconds"] / max(found["cases"], 1), "peak_mib": found["peak_mib"]}


# ---------------------------------------------------------------- scores
def scores(predictions: Path, labels: Path) -> dict:
    from autoseg import api

    summary = api.evaluate(predictions, labels, workers=1, task=TASK)
    metrics = summary.task_metrics
    return {"dice": {n: summary.mean_per_class[n]["dice"] for n in LEVELS if n in summary.mean_per_class},
            "hd95": {n: summary.mean_per_class[n]["hd95"] for n in LEVELS if n in summary.mean_per_class},
            "mean_dice": summary.mean_foreground_dice, "identification_rate": metrics["identification_rate"],
            "centroid_mm": metrics["mean_centroid_distance_mm"], "vertebrae": metrics["vertebrae"]}


def real_ct_check(predictions: Path, reference: Path) -> dict:
    """Geometry equal to the input's, components per level, Dice against the model-made labels."""
    import cc3d

    from autoseg.io import read_image, read_label

    out = {}
    for path in sorted(predictions.glob("*.nii.gz")):
        labels, geometry = read_label(path)
        image_path = reference.parent / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz")
        _, image_geometry = read_image(image_path)
        components = {n: int(cc3d.connected_components(labels == v, connectivity=26).max())
                      for n, v in zip(LEVELS, range(1, 7))}
        out[path.name] = {"geometry_equal": geometry == image_geometry, "components": components}
    return out


# ---------------------------------------------------------------- the report
def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _identified(rate: float | None, vertebrae: int) -> str:
    return "-" if rate is None or rate != rate else f"{round(rate * vertebrae)} of {vertebrae}"


def _plans_phrase(plans: str) -> str:
    planned = f"each layout planned (task {TASK}, `--gpu-memory-gb {GPU_MEMORY_GB}`)"
    if plans == "default":
        return planned + " with the default rule for that memory"
    return (planned + " for the time its stages train on this CPU (`--time-budget --device cpu`: the whole budget "
            "for 3d_fullres, half for each stage of the two-stage layouts)")


def write_report(path: Path, args, results: dict, real: dict, started: float) -> None:
    lines = [
        "# lumbar-ct: whole-volume 3d_fullres vs cascade vs localize -> crop -> segment", "",
        "Rerun: `python benchmarks/lumbar_ct.py " + f"--budget {args.budget} --cases {args.cases} "
        f"--test-cases {args.test_cases} --plans {args.plans}`" + " (writes this file).", "",
        f"Conditions: large-field lumbar-ct phantom (`--option large_field=true`, scale 1: 64 x 96 x 96 voxels, "
        f"320-400 mm per axis), {args.cases} training and {args.test_cases} unseen test volumes; {_plans_phrase(args.plans)} "
        "(the plans' choices below); every layout trained for the same total time of "
        f"{args.budget} on CPU ({platform.processor() or platform.machine()}, torch threads as the trainer sets them), "
        f"no test-time mirroring; load average {args.load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"on {os.cpu_count()} cores (above the core count, other jobs shared the machine and every timing is slower). "
        "Short budgets are far from convergence: the figures compare layouts under the same budget, not the "
        "accuracy a full training reaches.", "",
        "| layout | mean Dice | " + " | ".join(f"Dice {n}" for n in LEVELS) + " | identification | centroid dist. (mm) "
        "| predict s/case | peak memory (MiB) | train wall (s) |",
        "|---" * (len(LEVELS) + 7) + "|",
    ]
    for layout, found in results.items():
        s = found["scores"]
        lines.append(f"| {layout} | {_fmt(s['mean_dice'])} | " + " | ".join(_fmt(s['dice'].get(n)) for n in LEVELS)
                     + f" | {_identified(s['identification_rate'], s['vertebrae'])} | {_fmt(s['centroid_mm'], 1)} "
                     f"| {_fmt(found['predict']['seconds_per_case'], 1)} | {found['predict']['peak_mib']:.0f} "
                     f"| {found['model']['train_s']:.0f} |")
    lines += ["", "Each stage's plan (the budget planner's choice; expected iterations for the plan's budget):", "",
              "| layout | stage | spacing (mm) | patch | batch | base features | s/step | expected iterations |",
              "|---" * 8 + "|"]
    for layout, found in results.items():
        for st in found["model"]["stages"]:
            lines.append(f"| {layout} | {st['stage']} | {' x '.join(f'{v:.2f}' for v in st['spacing'])} "
                         f"| {'x'.join(map(str, st['patch']))} | {st['batch']} | {st['features']} "
                         f"| {_fmt(st['step_s'], 3)} | {st['iterations'] or '-'} |")
    lines += ["", "HD95 (mm) per vertebra:", "", "| layout | " + " | ".join(LEVELS) + " |", "|---" * (len(LEVELS) + 1) + "|"]
    for layout, found in results.items():
        lines.append(f"| {layout} | " + " | ".join(_fmt(found['scores']['hd95'].get(n), 1) for n in LEVELS) + " |")
    if real:
        lines += ["", "## Domain-shift check: Dataset611_LumbarCT (one real CT, 3 mm isotropic, labels by "
                  "TotalSegmentator --fast, not manual)", "",
                  "The phantom-trained models predict a real CT they never saw anything like; the Dice below is "
                  "against another model's labels. It checks that the pipeline runs on real data with exact "
                  "geometry and per-level components, not accuracy.", "",
                  "| layout | mean Dice | " + " | ".join(f"Dice {n}" for n in LEVELS) + " | geometry = input's "
                  "| components per level (L1..sacrum) | predict s |", "|---" * (len(LEVELS) + 5) + "|"]
        for layout, found in real.items():
            s, check = found["scores"], next(iter(found["check"].values()))
            components = ", ".join(str(check["components"][n]) for n in LEVELS)
            lines.append(f"| {layout} | {_fmt(s['mean_dice'])} | " + " | ".join(_fmt(s['dice'].get(n)) for n in LEVELS)
                         + f" | {'yes' if check['geometry_equal'] else 'NO'} | {components} "
                         f"| {_fmt(found['predict']['seconds_per_case'], 1)} |")
    lines += ["", f"Whole benchmark: {(time.perf_counter() - started) / 60:.0f} min wall."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    from autoseg import api
    from autoseg.trainers.schedule import parse_duration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="6m", help="total training time of each layout")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("lumbar_ct_bench"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lumbar_ct.md")
    parser.add_argument("--dataset611", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset611_LumbarCT")
    parser.add_argument("--plans", choices=("budget", "default"), default="budget",
                        help="budget: each stage planned for its training time on this CPU; default: the 1.2 GB plan")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="subset of " + ",".join(LAYOUTS))
    args = parser.parse_args()
    args.load_at_start = os.getloadavg()[0]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started, work = time.perf_counter(), args.workdir
    data = api.example("lumbar-ct", work / "data", cases=args.cases, seed=0, large_field=True, overwrite=True)
    test = api.example("lumbar-ct", work / "test", cases=args.test_cases, seed=1, large_field=True, overwrite=True)
    results, real = {}, {}
    for layout in args.layouts.split(","):
        model = train_layout(layout, data, work / layout, parse_duration(args.budget), args.plans)
        predict = predict_measured(model, test / "imagesTr", work / f"pred_{layout}")
        results[layout] = {"model": model, "predict": predict, "scores": scores(work / f"pred_{layout}", test / "labelsTr")}
        if (args.dataset611 / "imagesTr").is_dir():
            out = work / f"real_{layout}"
            found = predict_measured(model, args.dataset611 / "imagesTr", out)
            real[layout] = {"predict": found, "scores": scores(out, args.dataset611 / "labelsTr"),
                            "check": real_ct_check(out, args.dataset611 / "labelsTr")}
        write_report(args.out, args, results, real, started)  # after each layout: partial results survive
    log.info("results in %s", args.out)


if __name__ == "__main__":
    main()
