"""Scale-out throughput: data-parallel training on 1..N processes, and two folds at once vs in turn.

    .venv/bin/python benchmarks/scaling.py                                  # CPU, small synthetic data
    .venv/bin/python benchmarks/scaling.py --device cuda --nproc 1 --nproc 2 --nproc 4 --nproc 8 \
        --dataset DATASET_DIR --config 3d_fullres --batch-size 8 --iterations 60     # a GPU machine

Data parallel (--nproc N, repeatable): each N trains fold 0 for one epoch of --iterations iterations
in a fresh torchrun job (`torchrun --standalone --nproc-per-node N`, as `autoseg train --nproc N`
starts; the CPU's cores are split between the ranks). The global batch is --batch-size (split over
the ranks). Throughput = global batch x iterations after the first --warmup, over the time between
those iterations' ends on rank 0 (loading, the step with its gradient all-reduce and the per-step
stop agreement included; startup and validation not). Scaling efficiency = throughput(N) /
(N x throughput(1)).

Folds at once (--folds-parallel P, default 2): folds 0 and 1 trained by the --parallel machinery
(trainers/parallel_folds.py), first one after the other (P=1, each fold with every core), then P
at once (cores split); wall time of both folds including their processes' start, and training
samples per second over that wall time.

The synthetic dataset (noise + boxes, --cases cases of --shape voxels, 2D configuration) is
written once under --workdir. Results are appended to benchmarks/results/scaling.md with the
machine's state (cores, load average at the start: other work on the machine slows every row).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaling.md"


def make_dataset(folder: Path, cases: int, shape: tuple[int, ...]) -> Path:
    """Boxes of 2 labels on noise, one case shifted from the next (as tests/conftest.py makes them)."""
    import numpy as np

    from autoseg.io import Geometry, write_image

    if (folder / "dataset.json").is_file():
        return folder
    rng = np.random.default_rng(0)
    geometry = Geometry.default(len(shape), (2.0,) + (1.0,) * (len(shape) - 1))
    for index in range(cases):
        label = np.zeros(shape, np.uint8)
        shift = index % 4
        label[:, 8 + shift: shape[1] // 2, 8: shape[2] // 2] = 1
        label[:, shape[1] // 2 + shift: -8, shape[2] // 2: -8] = 2
        image = rng.normal(50.0, 5.0, shape) + 40.0 * label
        write_image(folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz", image.astype(np.float32), geometry)
        write_image(folder / "labelsTr" / f"case_{index:03d}.nii.gz", label, geometry)
    meta = {"channel_names": {"0": "synthetic"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": cases,
            "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder


def prepare(args) -> Path:
    """The dataset, planned and preprocessed (in the workdir), ready for every measurement."""
    from autoseg import api

    dataset = Path(args.dataset) if args.dataset else make_dataset(args.workdir / "Dataset950_Scaling", args.cases, tuple(args.shape))
    if not (args.workdir / "plans" / dataset.name / "plan.json").is_file():
        api.plan(dataset, args.workdir, workers=1)
    api.preprocess(dataset, args.config, args.workdir, workers=1)  # nothing to do when up to date
    return dataset


def train_options(args) -> dict:
    return {"epochs": 1, "iters_per_epoch": args.iterations, "val_iters": 1, "workers": args.workers,
            "batch_size": args.batch_size, "device": args.device, "precision": args.precision}


# ---------------------------------------------------------------- data parallel
def worker(args) -> None:
    """One rank of the torchrun job: train, and on rank 0 write the iteration end times."""
    from autoseg import api

    stamps: list[float] = []
    on_event = lambda kind, info: stamps.append(time.perf_counter()) if kind == "iteration" else None  # noqa: E731
    run = args.workdir / "runs_ddp" / f"nproc_{os.environ.get('WORLD_SIZE', '1')}"
    api.train(args.dataset_dir, args.config, 0, args.workdir, run_dir=run, on_event=on_event, **train_options(args))
    if os.environ.get("RANK", "0") == "0":
        (run / "iteration_ends.json").write_text(json.dumps(stamps))


def measure_ddp(args, dataset: Path, nproc: int) -> dict:
    import shutil

    from autoseg.trainers.distributed import usable_cores

    run = args.workdir / "runs_ddp" / f"nproc_{nproc}"
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
               "--worker", "--dataset-dir", str(dataset), *forwarded(args)]
    threads = str(max(1, usable_cores() // nproc)) if args.device == "cpu" else "1"
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": threads})
    stamps = json.loads((run / "iteration_ends.json").read_text())
    counted = stamps[args.warmup - 1:]
    steps = [b - a for a, b in zip(counted, counted[1:])]
    return {"nproc": nproc, "threads": threads, "samples_per_s": args.batch_size * len(steps) / sum(steps),
            "s_per_iteration": sum(steps) / len(steps), "range": (min(steps), max(steps))}


def forwarded(args) -> list[str]:
    return ["--workdir", str(args.workdir), "--config", args.config, "--iterations", str(args.iterations),
            "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--device", args.device,
            "--precision", args.precision]


# ---------------------------------------------------------------- folds at once
def measure_folds(args, dataset: Path, parallel: int) -> dict:
    import shutil

    from autoseg.trainers.parallel_folds import plan_jobs, train_folds
    from autoseg.workdir import Workdir

    workdir = Workdir.at(args.workdir)
    for fold in ("0", "1"):
        shutil.rmtree(workdir.run_dir(dataset.name, args.config, fold), ignore_errors=True)
    jobs = plan_jobs([("0", False), ("1", False)], parallel, args.device, [])
    started = time.perf_counter()
    train_folds(jobs, parallel, {"dataset_dir": dataset, "config": args.config, "workdir": args.workdir,
                                 **train_options(args)}, on_event=None)
    wall = time.perf_counter() - started
    return {"parallel": parallel, "threads": jobs[0].threads, "wall_s": wall,
            "samples_per_s": 2 * args.iterations * args.batch_size / wall}


# ---------------------------------------------------------------- report
def report(args, ddp: list[dict], folds: list[dict], load: tuple[float, ...], elapsed_s: float) -> str:
    import torch

    from autoseg.trainers.distributed import usable_cores

    base = next((r["samples_per_s"] for r in ddp if r["nproc"] == 1), None)
    lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')}, {args.device}, {usable_cores()} cores, load average "
             f"{load[0]:.2f} at the start; torch {torch.__version__}; {args.config}, global batch {args.batch_size}, "
             f"{args.iterations} iterations ({args.warmup} warm-up), {args.workers} loader workers per process, "
             f"{args.precision}; {elapsed_s:.0f} s in all\n",
             "| processes (DDP) | threads each | s/iteration (min-max) | samples/s | scaling efficiency |", "|---|---|---|---|---|"]
    lines += [f"| {r['nproc']} | {r['threads']} | {r['s_per_iteration']:.3f} ({r['range'][0]:.2f}-{r['range'][1]:.2f}) | "
              f"{r['samples_per_s']:.1f} | " + (f"{r['samples_per_s'] / (r['nproc'] * base):.0%} |" if base else "- |")
              for r in ddp]
    if folds:
        lines += ["", "| folds 0 and 1 | threads each | wall time | samples/s |", "|---|---|---|---|"]
        for r in folds:
            how = "one after the other" if r["parallel"] == 1 else f"{r['parallel']} at once"
            lines.append(f"| {how} | {r['threads']} | {r['wall_s']:.1f} s | {r['samples_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, action="append", help="processes to measure, repeatable [default: 1 and 2]")
    parser.add_argument("--folds-parallel", type=int, default=2, help="folds at once to compare with one after the other (0: skip)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--dataset", help="a dataset folder [default: a synthetic one]")
    parser.add_argument("--config", default="2d")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 96, 96])
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch (a multiple of every --nproc)")
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/autoseg_scaling"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    load, started = os.getloadavg(), time.perf_counter()
    dataset = prepare(args)
    ddp = [measure_ddp(args, dataset, n) for n in (args.nproc or [1, 2])]
    folds = [measure_folds(args, dataset, p) for p in (1, args.folds_parallel)] if args.folds_parallel > 1 else []
    text = report(args, ddp, folds, load, time.perf_counter() - started)
    with args.results.open("a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
