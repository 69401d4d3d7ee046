"""Judge lumbar radiographs: every criterion of a position's rules, a verdict and its reasons.

`judge` turns one label map into a QCResult; `run_qc` does a folder of predictions with their
images (`autoseg qc`), checking everything before it writes qc.json, qc.csv and an overlay PNG per
not-qualified image that draws the failed measurement.
"""
from __future__ import annotations

import csv
import io as text_io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autoseg import io
from autoseg.atomic import atomic_write
from autoseg.errors import ConfigError
from autoseg.schema import write_json_atomic
from autoseg.tasks.qc_criteria import CRITERIA, CriterionResult, Radiograph, infer_position, roles_from_names
from autoseg.tasks.qc_rules import Rules, load_rules, rules_for
from autoseg.tasks.xray_positions import dataset_positions, position_of, read_positions_file

log = logging.getLogger(__name__)

QUALIFIED, NOT_QUALIFIED = "qualified", "not qualified"
DEFAULT_LABELS = {"background": 0, "vertebra": 1, "pedicle": 2, "spinous_process": 3}  # the lumbar-xray phantom's


@dataclass(frozen=True)
class QCResult:
    case_id: str
    position: str | None
    position_source: str  # given, dicom or inferred
    criteria: dict[str, CriterionResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, result in self.criteria.items() if result.passed is not None and not result.passed]

    @property
    def verdict(self) -> str:
        return NOT_QUALIFIED if self.failed else QUALIFIED

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "position_source": self.position_source, "verdict": self.verdict,
                "failed": self.failed, "reasons": [self.criteria[n].reason for n in self.failed],
                "criteria": {n: r.to_dict() for n, r in self.criteria.items()}}

    def flat(self) -> dict[str, Any]:
        """One CSV row: position, verdict, failed criteria, each criterion's value and pass/fail."""
        row: dict[str, Any] = {"case_id": self.case_id, "position": self.position or "",
                               "position_source": self.position_source, "verdict": self.verdict,
                               "failed": ";".join(self.failed)}
        for name, result in self.criteria.items():
            row[f"{name}_value"] = "" if result.value is None else round(result.value, 4)
            row[f"{name}_pass"] = "" if result.passed is None else bool(result.passed)
        return row


def judge(radiograph: Radiograph, rules: Rules, case_id: str, position: str | None = None,
          source: str = "given") -> QCResult:
    """Every criterion of the position's table; without a position it is inferred from the labels."""
    if position is None:
        position, source = infer_position(radiograph), "inferred"
    criteria = {name: CRITERIA[name][0](radiograph, rule) for name, rule in rules_for(rules, position).items()}
    return QCResult(case_id, position, source, criteria)


def radiograph_from(labels: np.ndarray, geometry: io.Geometry, label_values: Mapping[str, int],
                    image: np.ndarray | None, spacing_mm: float | None = None) -> Radiograph:
    """A 2D label map (and its image) as the criteria see it; `spacing_mm` replaces the nominal 1 mm
    pixels of formats that keep no spacing (PNG)."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[0] == 1:  # a one-slice volume (DICOM radiograph as NIfTI)
        labels = labels[0]
    if labels.ndim != 2:
        raise ConfigError(f"lumbar-xray-qc judges 2D radiographs; found a label map of shape {labels.shape}")
    spacing = (spacing_mm, spacing_mm) if spacing_mm else tuple(float(s) for s in geometry.spacing_zyx[-2:])
    plane = None if image is None else np.asarray(image).reshape(labels.shape)
    return Radiograph(labels, spacing, roles_from_names(label_values), plane)


# ---------------------------------------------------------------- a folder: autoseg qc
@dataclass(frozen=True)
class QCCase:
    case_id: str
    prediction: Path
    image: Path


def find_cases(images_dir: Path, predictions_dir: Path) -> list[QCCase]:
    """Each prediction <case><ending> with its image <case>_0000<ending>, <case><ending> or, for
    predictions of DICOM input, the series folder <case>/ (whose View Position then gives the position)."""
    for folder, what in ((images_dir, "images"), (predictions_dir, "predictions")):
        if not folder.is_dir():
            raise ConfigError(f"{folder}: {what} folder not found")
    cases = []
    for path in sorted(predictions_dir.iterdir()):
        ending = io.file_ending(path)
        if not path.is_file() or ending not in io.IMAGE_ENDINGS:
            continue
        case_id = path.name[: len(path.name) - len(ending)]
        candidates = (images_dir / f"{case_id}_0000{ending}", images_dir / f"{case_id}{ending}")
        image = next((p for p in candidates if p.is_file()), None)
        if image is None and io.is_dicom_folder(images_dir / case_id):
            image = images_dir / case_id  # a DICOM series predicted as <case>.nii.gz
        if image is None:
            raise ConfigError(f"{path}: prediction without its image; expected {images_dir / (case_id + '_0000' + ending)}"
                              f" (or {case_id}{ending}) in {images_dir}")
        cases.append(QCCase(case_id, path, image))
    if not cases:
        raise ConfigError(f"{predictions_dir}: no label maps found (endings {', '.join(io.IMAGE_ENDINGS)})")
    return cases


def dataset_folder(images_dir: Path) -> Path:
    """The dataset folder an images folder belongs to (imagesTr/imagesTs sit inside it)."""
    return images_dir.parent if images_dir.name.startswith("images") else images_dir


def label_names(images_dir: Path, predictions_dir: Path) -> dict[str, int]:
    """Label names from dataset.json beside the predictions or of the images' dataset; else the phantom's."""
    for folder in (predictions_dir, dataset_folder(images_dir)):
        meta = folder / "dataset.json"
        if meta.is_file():
            labels = json.loads(meta.read_text()).get("labels")
            if isinstance(labels, dict):
                return {str(k): int(v) for k, v in labels.items()}
    log.info("no dataset.json with labels found; assuming %s", DEFAULT_LABELS)
    return dict(DEFAULT_LABELS)


def pixel_spacings(images_dir: Path) -> dict[str, float]:
    """cases.json "pixel_spacing_mm" per case, for images stored without spacing."""
    path = dataset_folder(images_dir) / "cases.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {k: float(v["pixel_spacing_mm"]) for k, v in data.items()
            if isinstance(v, dict) and isinstance(v.get("pixel_spacing_mm"), (int, float))}


@dataclass(frozen=True)
class QCRun:
    results: list[QCResult]
    qc_json: Path
    qc_csv: Path
    overlays: list[Path]


def run_qc(images_dir: str | Path, predictions_dir: str | Path, output_dir: str | Path,
           positions_file: str | Path | None = None, rules_file: str | Path | None = None,
           label_values: Mapping[str, int] | None = None, pixel_spacing_mm: float | None = None) -> QCRun:
    """Judge every prediction of a folder; everything is checked before anything is written.

    label_values: the label names (default: dataset.json); pixel_spacing_mm: for plain 2D images
    that cases.json gives no spacing (default: as read)."""
    images_dir, predictions_dir, output_dir = Path(images_dir), Path(predictions_dir), Path(output_dir)
    rules = load_rules(rules_file)
    cases = find_cases(images_dir, predictions_dir)
    given = dataset_positions(dataset_folder(images_dir))
    if positions_file is not None:
        given.update(read_positions_file(positions_file))
    names = dict(label_values) if label_values else label_names(images_dir, predictions_dir)
    spacings = pixel_spacings(images_dir)
    results, pictures = [], {}
    for case in cases:
        labels, geometry = io.read_label(case.prediction)
        image, image_geometry = io.read_image(case.image)
        if np.squeeze(image[0]).shape != np.squeeze(labels).shape:
            raise ConfigError(f"{case.prediction}: label map {labels.shape} does not match its image {case.image} "
                              f"{image.shape[1:]}")
        plain = case.image.is_file() and io.file_ending(case.image) in io.PLAIN_2D_ENDINGS
        radiograph = radiograph_from(labels, image_geometry, names, image[0],
                                     spacings.get(case.case_id, pixel_spacing_mm) if plain else None)
        position, source = position_of(case.case_id, given, case.image)
        result = judge(radiograph, rules, case.case_id, position, source)
        results.append(result)
        if result.failed:
            pictures[case.case_id] = (image[0], labels, result)
    return _write_outputs(output_dir, results, pictures, rules_file)


def _write_outputs(output_dir: Path, results: list[QCResult], pictures: dict, rules_file) -> QCRun:
    from autoseg.tasks.qc_overlay import write_qc_overlay

    output_dir.mkdir(parents=True, exist_ok=True)
    document = {"rules": str(rules_file) if rules_file else "default",
                "cases": {r.case_id: r.to_dict() for r in results}}
    qc_json = write_json_atomic(output_dir / "qc.json", document)
    qc_csv = write_csv(output_dir / "qc.csv", [r.flat() for r in results])
    overlays = [write_qc_overlay(output_dir / "overlays" / f"{case_id}.png", *picture)
                for case_id, picture in pictures.items()]
    return QCRun(results, qc_json, qc_csv, overlays)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, suffix=".csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return path
