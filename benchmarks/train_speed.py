"""Training speed and peak memory on this machine's CPU (or a GPU with --device cuda).

    .venv/bin/python benchmarks/train_speed.py [--iterations 6] [--only xray-2d-plan] [--device cpu]

Each scenario trains a few iterations in a fresh subprocess and reports the median seconds per
training iteration (the first two iterations are warm-up and not counted) and the peak resident
memory of the whole process tree (trainer + data-loader workers), sampled from /proc.

Scenarios (patch and batch as planned by autoseg, and at the sizes nnU-Net v2 was measured with):
  xray-2d-plan        Dataset601 (../shared/data), 2d plan (patch 512x192, batch 21)
  xray-2d-ref         Dataset601, patch 512x384, batch 2 (nnU-Net v2: ~3.9 s/iteration here)
  ct-3d-plan          lumbar-ct phantom, 96x160x160 at ~2.6x0.86x0.86 mm, 3d_fullres plan
  ct-3d-ref           same data, patch 96x160x128, batch 2 (nnU-Net v2: ~46 s/iteration, ~12 GB peak here)
Results are appended to benchmarks/results/train_speed.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from process_tree import PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_XRAY = ROOT.parent / "shared" / "data" / "Dataset601_SpineXrayAP"
SCENARIOS = {
    "xray-2d-plan": ("xray", "2d", None, None),
    "xray-2d-ref": ("xray", "2d", (512, 384), 2),
    "ct-3d-plan": ("ct", "3d_fullres", None, None),
    "ct-3d-ref": ("ct", "3d_fullres", (96, 160, 128), 2),
}


def _dataset(kind: str, workdir: Path) -> Path:
    from autoseg import api

    if kind == "xray":
        return SHARED_XRAY
    folder = workdir / "data" / "Dataset903_LumbarCT"
    if not folder.exists():
        api.example("lumbar-ct", workdir / "data", cases=4, seed=0, scale=2.5, slice_factor=0.8)
    return folder


def _plan_with(dataset: Path, workdir: Path, config: str, patch, batch) -> None:
    """Plan, then overwrite one configuration's patch and batch (the plan is a plain document)."""
    from autoseg import api, schema
    from autoseg.config import load_plan

    plan, path = api.plan(dataset, workdir)
    if patch is None:
        return
    cfg = dataclasses.replace(plan.config(config), patch_size=tuple(patch), batch_size=batch)
    schema.write_json_atomic(path, dataclasses.replace(plan, configurations={**plan.configurations, config: cfg}))
    load_plan(path)  # still valid


def run_one(name: str, iterations: int, device: str, workers: int, precision: str, out: Path) -> None:
    """Child process: train `iterations` iterations and write per-iteration times as JSON."""
    from autoseg import api
    from autoseg.config import load_plan

    kind, config, patch, batch = SCENARIOS[name]
    workdir = Path("/tmp/autoseg_bench") / name
    dataset = _dataset(kind, workdir)
    _plan_with(dataset, workdir, config, patch, batch)
    stamps: list[float] = []
    api.train(dataset, config, 0, workdir, epochs=1, iters_per_epoch=iterations, val_iters=1,
              workers=workers, device=device, precision=precision, run_dir=workdir / "run", on_event=lambda k, i: stamps.append(time.perf_counter()) if k == "iteration" else None)
    cfg = load_plan(workdir / "plans" / dataset.name / "plan.json").config(config)
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    out.write_text(json.dumps({"patch": cfg.patch_size, "batch": cfg.batch_size, "seconds_per_iteration": statistics.median(steps), "steps": steps}))


def measure(name: str, iterations: int, device: str, workers: int, precision: str) -> dict:
    out = Path(f"/tmp/autoseg_bench_{name}.json")
    command = [sys.executable, __file__, "--child", name, "--iterations", str(iterations), "--device", device,
               "--workers", str(workers), "--precision", precision]
    with PeakMemory() as peak:
        subprocess.run(command, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    return {**result, "peak_gb": peak.peak / 1024**3, "scenario": name, "precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", action="append", choices=("fp32", "bf16", "fp16", "auto"),
                        help="repeat to measure several [default: fp32]")
    parser.add_argument("--child", choices=sorted(SCENARIOS))
    args = parser.parse_args()
    if args.child:
        return run_one(args.child, args.iterations, args.device, args.workers, args.precision[0], Path(f"/tmp/autoseg_bench_{args.child}.json"))
    rows = [measure(name, args.iterations, args.device, args.workers, precision)
            for name in (args.only or SCENARIOS) for precision in (args.precision or ["fp32"])]
    lines = [f"\n### {time.strftime('%Y-%m-%d')}, {args.device} ({args.workers} loader workers, median of {args.iterations - 2} iterations)\n",
             "| scenario | precision | patch | batch | s/iteration | peak memory (process tree) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['precision']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | "
              f"{r['seconds_per_iteration']:.2f} | {r['peak_gb']:.2f} GB |" for r in rows]
    results = ROOT / "benchmarks" / "results" / "train_speed.md"
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
