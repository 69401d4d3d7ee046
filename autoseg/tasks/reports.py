"""Task reports after prediction: one JSON per case beside its label map, summarized as one CSV."""
from __future__ import annotations

import csv
import io as text_io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from autoseg import schema
from autoseg.atomic import atomic_write
from autoseg.io import file_ending

SUMMARY_CSV = "task_report.csv"
REPORT_SUFFIX = ".report.json"


def report_path(label_path: Path) -> Path:
    """<case>.report.json beside the label file <case><ending>."""
    ending = file_ending(label_path)
    return label_path.with_name(label_path.name[: len(label_path.name) - len(ending)] + REPORT_SUFFIX)


def write_case_report(label_path: Path, report: dict[str, Any]) -> Path:
    return schema.write_json_atomic(report_path(label_path), schema.json_safe(report))


def write_summary(output_dir: Path, label_paths: Sequence[Path]) -> Path | None:
    """task_report.csv: one row per case whose report exists, columns in order of appearance."""
    rows = [json.loads(path.read_text()) for path in map(report_path, label_paths) if path.is_file()]
    if not rows:
        return None
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    path = Path(output_dir) / SUMMARY_CSV
    with atomic_write(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return json.dumps(value) if isinstance(value, (dict, list)) else value
