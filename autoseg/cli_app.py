"""The CLI's shared plumbing: the typer app, the consoles, and how errors and progress are shown.
Command modules (autoseg/cli.py, autoseg/cli_tasks.py) register on `app`; none imports another."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import Iterator, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autoseg.errors import AutosegError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-configuring U-Net segmentation.")
console = Console(stderr=True)
out = Console()

EXIT_PROBLEM = 2

WorkdirOption = typer.Option(None, "--workdir", "-w", help="Where plans, preprocessed data and runs go [default: ./autoseg_work]")
WorkersOption = typer.Option(2, "--workers", help="Parallel worker processes")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Known user mistakes, and what the file system refuses, end with a clear message and exit code 2,
    not a traceback."""
    try:
        yield
    except AutosegError as exc:
        _error(str(exc))
    except OSError as exc:  # a full disk, a missing permission, a path under a file: no traceback helps there
        _error(_os_error_message(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _error(message: str) -> NoReturn:
    rank = f"rank {os.environ.get('RANK')}: " if under_torchrun() else ""  # every rank reports its own error
    console.print(f"[bold red]error:[/] {rank}{escape(message)}", highlight=False, soft_wrap=True)  # long paths stay whole
    raise typer.Exit(EXIT_PROBLEM) from None


def under_torchrun() -> bool:
    return os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _os_error_message(exc: OSError) -> str:
    """One line: the path(s), the reason and its errno, and where to look."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    code = f"errno {exc.errno} {errno.errorcode.get(exc.errno, '')}".rstrip() if exc.errno else "no errno"
    reason = (exc.strerror or str(exc) or type(exc).__name__).splitlines()[0]
    return (f"cannot access {paths or 'a file'}: {reason} ({code}); check the path, its permissions "
            "and the free disk space")


@contextlib.contextmanager
def progress_bars() -> Iterator:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:

        def factory(description: str, total: int):
            task_id = bar.add_task(description, total=total)
            return lambda n=1: bar.advance(task_id, n)

        yield factory
