"""Rich renderings of documents for the CLI (kept out of the library's core modules)."""
from __future__ import annotations

from rich import box
from rich.table import Table

from autoseg.config import Plan


def _fmt(values, digits: int = 3) -> str:
    return "x".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def plan_table(plan: Plan) -> Table:
    """One column per configuration, one row per decision (fits a narrow terminal); a budget-aware
    plan adds what it measured and expects."""
    budgeted = [c.budget for c in plan.configurations.values() if c.budget]
    sized_for = f"{budgeted[0].time_budget_s / 60:g} min of training on {budgeted[0].device}" if budgeted else f"{plan.gpu_memory_gb:g} GB budget"
    tasks = sorted({c.task.name for c in plan.configurations.values() if c.task})
    for_task = f", task {', '.join(tasks)}" if tasks else ""
    table = Table(title=f"{plan.dataset_name}: plan ({sized_for}{for_task})", box=box.SIMPLE_HEAD)
    table.add_column("")
    for name in plan.configurations:
        table.add_column(name, no_wrap=True)
    keys = ["spacing (mm)", "median shape", "patch", "batch", "stages", "features", "pooling per axis", "normalization", "est. memory"]
    if budgeted:
        keys += ["precision", "step time", "expected iterations", "expected patches"]
    rows: dict[str, list[str]] = {k: [] for k in keys}
    for cfg in plan.configurations.values():
        pools = [sum(1 for s in cfg.network.strides if s[a] > 1) for a in range(len(cfg.patch_size))]
        norm = ", ".join(sorted({n.scheme + ("+mask" if n.use_mask else "") for n in cfg.normalization}))
        norm += " (in loader)" if cfg.normalize_at == "loader" else ""
        values = [_fmt(cfg.spacing), _fmt(cfg.median_shape), _fmt(cfg.patch_size), str(cfg.batch_size), str(cfg.network.num_stages),
                  f"{cfg.network.features[0]}..{cfg.network.features[-1]}", _fmt(pools), norm, f"{cfg.estimated_memory_gb:.1f} GB"]
        if budgeted:
            b = cfg.budget
            values += [b.precision, f"{b.step_time_s:.3f} s", str(b.expected_iterations), str(b.expected_samples)] if b else ["-"] * 4
        for key, value in zip(rows, values):
            rows[key].append(value)
    for key, values in rows.items():
        table.add_row(key, *values)
    return table


def budget_reasons(plan: Plan) -> list[str]:
    """The budget-aware planner's reasons, one line each, per configuration."""
    lines = []
    for name, cfg in plan.configurations.items():
        if cfg.budget:
            lines.append(f"{name}:")
            lines += [f"  - {reason}" for reason in cfg.budget.reasons]
    return lines


def evaluation_table(summary) -> Table:
    """Mean metrics per class (cases with an empty reference are excluded from the means)."""
    table = Table(title=f"mean foreground Dice {summary.mean_foreground_dice:.4f}")
    metrics = ("dice", "iou", "precision", "recall", "hd95", "assd")
    for column in ("class", *metrics):
        table.add_column(column, justify="right" if column != "class" else "left")
    for name, values in summary.mean_per_class.items():
        table.add_row(name, *(_number(values.get(m)) for m in metrics))
    return table


def _number(value) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def task_metrics_table(metrics: dict) -> Table:
    """A task's own summary figures (its scalars and per-level rates; per-case detail stays in summary.json)."""
    table = Table(title=f"task {metrics.get('task', '')}", box=box.SIMPLE_HEAD)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "per_case":
            for name, inner in value.items():
                table.add_row(f"{key} {name}", _number(inner) if isinstance(inner, float) else str(inner))
        elif not isinstance(value, (dict, list)) and key != "task":
            table.add_row(key, _number(value) if isinstance(value, float) else str(value))
    return table


def ranking_table(bundle) -> Table:
    """find-best's candidates, best first (cross-validation Dice before postprocessing)."""
    table = Table(title=f"{bundle.dataset_name}: cross-validation ranking", box=box.SIMPLE_HEAD)
    table.add_column("#")
    table.add_column("candidate")
    table.add_column("mean foreground Dice", justify="right")
    for rank, row in enumerate(bundle.ranking, 1):
        table.add_row(str(rank), str(row.get("name")), _number(row.get("mean_foreground_dice")))
    return table


def crossval_table(summary: dict) -> Table:
    """Per-class mean Dice over the out-of-fold cases of a cross-validation."""
    table = Table(title=f"{summary['config']}: cross-validation, mean foreground Dice {_number(summary['mean_foreground_dice'])}", box=box.SIMPLE_HEAD)
    table.add_column("class")
    table.add_column("Dice", justify="right")
    table.add_column("cases", justify="right")
    for name, values in summary["mean_per_class"].items():
        table.add_row(name, _number(values.get("dice")), str(values.get("cases", "")))
    return table


def dose_quality_table(summary: list[dict]) -> Table:
    """simulate-dose: mean (SD) PSNR and SSIM of the simulated images per dose."""
    table = Table(title="simulated images against their originals")
    for column in ("dose", "images", "PSNR (dB)", "SSIM"):
        table.add_column(column, justify="right")
    for row in summary:
        table.add_row(f"{row['dose']:g}", str(row["n"]), _mean_sd(row["psnr_db_mean"], row["psnr_db_sd"], 2),
                      _mean_sd(row["ssim_mean"], row["ssim_sd"], 3))
    return table


def dose_evaluation_table(groups: list[dict]) -> Table:
    """evaluate-dose: per dose group Dice and IoU (mean +- SD), image quality and the Wilcoxon p against full dose."""
    table = Table(title="segmentation per dose group (p: paired Wilcoxon of per-image Dice against full dose)")
    for column in ("dose", "images", "Dice", "IoU", "PSNR (dB)", "SSIM", "p"):
        table.add_column(column, justify="right")
    for g in groups:
        psnr = "inf" if g["psnr_db_mean"] is None else f"{g['psnr_db_mean']:.2f}"
        p = "-" if g["wilcoxon_p"] is None else f"{g['wilcoxon_p']:.3g}"
        table.add_row(f"{g['dose']:g}", str(g["n"]), _mean_sd(g["dice_mean"], g["dice_sd"], 4),
                      _mean_sd(g["iou_mean"], g["iou_sd"], 4), psnr, f"{g['ssim_mean']:.3f}", p)
    return table


def _mean_sd(mean: float, sd: float, digits: int) -> str:
    if mean is None or mean != mean:
        return "-"
    if mean == float("inf"):
        return "inf"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd == sd else "")
