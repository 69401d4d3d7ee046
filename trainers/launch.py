"""`autoseg train ... --nproc N`: start N data-parallel ranks on this machine through torchrun's launcher.

The command runs again without --nproc, as `python -m autoseg ...` under torch.distributed.run with a
standalone rendezvous: exactly `torchrun --standalone --nproc-per-node N -m autoseg train ...`. The
launcher forwards Ctrl-C and SIGTERM to every rank once, and ends all ranks when one fails.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from autoseg.errors import ConfigError
from autoseg.trainers.distributed import check_batch_divides, launched_ranks, usable_cores

log = logging.getLogger(__name__)

INTERRUPTED = 130  # what a rank stopped by a signal exits with (the CLI's code for an interrupted run)


def check_launch(nproc: int, device: str, batch_size: int | None) -> None:
    """Everything --nproc can be checked against before any rank starts."""
    from autoseg.devices import resolve_device

    if launched_ranks() > 1:
        raise ConfigError("--nproc inside a torchrun launch: torchrun has started the ranks already; drop --nproc")
    if batch_size is not None:
        check_batch_divides(batch_size, nproc)
    target = resolve_device(device)
    if target.type == "cuda":
        import torch

        if target.index is not None:
            raise ConfigError(f"--device {device} with --nproc {nproc}: each rank trains on its own GPU; pass --device "
                              "cuda (or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if torch.cuda.device_count() < nproc:
            raise ConfigError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s), one per rank is "
                              f"needed; pass --nproc {torch.cuda.device_count()} or --device cpu")
    elif target.type != "cpu":
        raise ConfigError(f"--nproc with --device {device}: data-parallel training runs on CPUs or CUDA GPUs")


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `autoseg <argv>` (without --nproc) on `nproc` ranks; returns the exit code for the CLI."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would pin every rank to 1 thread; on CPUs the ranks share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    arguments = ["--standalone", f"--nproc-per-node={nproc}", "-m", "autoseg", *without_nproc(argv)]
    log.info("starting %d ranks: torchrun %s", nproc, " ".join(arguments))
    try:
        run(get_args_parser().parse_args(arguments))
    except ChildFailedError as exc:
        return exit_code([failure.exitcode for failure in exc.failures.values()])
    except SignalException:
        return INTERRUPTED
    return 0


def exit_code(rank_codes: Sequence[int]) -> int:
    """One code for the job: interrupted when every failed rank was stopped, 2 when one refused a
    user mistake (the CLI's code for those), else 1."""
    if all(code in (INTERRUPTED, -2, -15) for code in rank_codes):
        return INTERRUPTED
    return 2 if 2 in rank_codes else 1


def without_nproc(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc N` / `--nproc=N`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
