"""Rich live display of a training run (CLI only; the trainer just emits events)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class TrainingDisplay:
    """Epoch, iteration, loss, EMA pseudo-Dice, it/s and ETA on one live line per run (folds trained
    at once each have theirs: their events carry "fold"); epoch summaries come through the log."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
            TextColumn("{task.completed}/{task.total} it"),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("EMA Dice {task.fields[ema]}"),
            TextColumn("{task.fields[rate]:.2f} it/s"), TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.tasks: dict = {}  # fold (None: a single run) -> its line

    def __enter__(self) -> "TrainingDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, kind: str, info: dict) -> None:
        if kind == "iteration":
            fields = {"epoch": info["epoch"], "loss": info["loss"], "rate": info["it_per_s"], "eta": _fmt_eta(info["eta_s"]),
                      "ema": "-" if info["ema_dice"] is None else f"{info['ema_dice']:.4f}"}
            fold = info.get("fold")
            if fold not in self.tasks:
                self.tasks[fold] = self.progress.add_task("" if fold is None else f"fold {fold}", total=info["iters_per_epoch"], **fields)
            self.progress.update(self.tasks[fold], completed=info["iteration"], total=info["iters_per_epoch"], **fields)
