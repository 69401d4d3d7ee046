"""Radiographic positions of a lumbar spine series (AP, LAT, OBL): where they are read from.

In order of precedence a case's position comes from a positions file the user gives (JSON
{case: "AP"} or a cases.json {case: {"position": "AP", ...}}), dataset.json "positions", the
dataset's cases.json, the DICOM View Position attribute (0018,5101) of a DICOM input (read with
SimpleITK, which autoseg.io already uses for DICOM; no pydicom needed), and last inferred from
the label map (autoseg.tasks.qc_criteria.infer_position). Spellings are normalised: DICOM's
defined terms AP/PA, LL/RL and the oblique ones (RLO, LLO, RAO, LAO, RPO, LPO) and the words
lateral/oblique map onto AP, LAT and OBL; anything else is refused with the file that said it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from autoseg.errors import ConfigError

POSITIONS = ("AP", "LAT", "OBL")
_ALIASES = {
    "AP": "AP", "PA": "AP", "FRONTAL": "AP",
    "LAT": "LAT", "LATERAL": "LAT", "LL": "LAT", "RL": "LAT",
    "OBL": "OBL", "OBLIQUE": "OBL", "RLO": "OBL", "LLO": "OBL", "RAO": "OBL", "LAO": "OBL", "RPO": "OBL", "LPO": "OBL",
}
VIEW_POSITION_TAG = "0018|5101"


def normalize_position(value: Any, where: str) -> str:
    """AP, LAT or OBL for a recorded spelling; a ConfigError naming `where` otherwise."""
    key = str(value).strip().upper() if isinstance(value, str) else None
    if key not in _ALIASES:
        raise ConfigError(f"{where}: unknown position {value!r}; expected one of {', '.join(POSITIONS)} "
                          f"(or a DICOM View Position such as PA, LL, RPO)")
    return _ALIASES[key]


def parse_positions(data: Any, where: str, records_only: bool = False) -> dict[str, str]:
    """{case: position} from {case: "AP"} or {case: {"position": "AP", ...}} (a cases.json, whose
    entries that are not records, e.g. a "note", are no cases: `records_only`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object {{case_id: \"AP\" | \"LAT\" | \"OBL\"}}, "
                          f"found {type(data).__name__}")
    positions = {}
    for case_id, entry in data.items():
        if records_only and not isinstance(entry, dict):
            continue
        value = entry.get("position") if isinstance(entry, dict) else entry
        if value is None:
            continue  # a cases.json entry without a position: left to the next source
        positions[str(case_id)] = normalize_position(value, f"{where}: case '{case_id}'")
    return positions


def read_positions_file(path: str | Path, records_only: bool = False) -> dict[str, str]:
    """A user's positions file (JSON), checked; `records_only` for a cases.json."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: positions file not found; give a JSON file {{case_id: \"AP\"}}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); expected {{case_id: \"AP\" | \"LAT\" | \"OBL\"}}") from None
    return parse_positions(data, str(path), records_only)


def dataset_positions(dataset_root: str | Path) -> dict[str, str]:
    """Positions a dataset folder records: cases.json, overridden by dataset.json "positions"."""
    root = Path(dataset_root)
    positions: dict[str, str] = {}
    if (root / "cases.json").is_file():
        positions.update(read_positions_file(root / "cases.json", records_only=True))
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if isinstance(meta, dict) and "positions" in meta:
            positions.update(parse_positions(meta["positions"], f"{meta_path}: positions"))
    return positions


def dicom_view_position(path: str | Path) -> str | None:
    """The View Position (0018,5101) of a DICOM file, or of the first file of a DICOM folder,
    normalised; None when the attribute is absent or empty (SimpleITK reads the header only)."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            return None
        path = files[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # not a DICOM file this reader understands
    if not reader.HasMetaDataKey(VIEW_POSITION_TAG):
        return None
    value = reader.GetMetaData(VIEW_POSITION_TAG).strip()
    return normalize_position(value, f"{path}: View Position (0018,5101)") if value else None


def position_of(case_id: str, given: Mapping[str, str], source: Path | None = None) -> tuple[str | None, str]:
    """(position, where it came from) from `given` positions or the DICOM header of `source`;
    (None, "inferred") when neither says: the caller infers it from the label map."""
    if case_id in given:
        return given[case_id], "given"
    if source is not None and (source.is_dir() or source.suffix.lower() == ".dcm"):
        view = dicom_view_position(source)
        if view is not None:
            return view, "dicom"
    return None, "inferred"
