"""Write a phantom's cases as a dataset folder in the nnU-Net v2 raw layout.

    DatasetNNN_Name/
        dataset.json            channel_names, labels, numTraining, file_ending (+ name, description)
        imagesTr/CASE_0000.ext  one channel per case
        labelsTr/CASE.ext
        cases.json              per-case facts (e.g. X-ray position), when the phantom has any
        (phantom extras, e.g. dwi/)

Case i is generated from its own random stream seeded with (seed, i), so a case does not change
when more cases are asked for. dataset.json is written last: a folder without it is incomplete.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import ConfigError
from autoseg.io import write_image
from autoseg.phantoms.common import Phantom, PhantomCase
from autoseg.schema import write_json_atomic

logger = logging.getLogger(__name__)
_WRITTEN = ("imagesTr", "labelsTr", "dwi", "dataset.json", "cases.json")  # what overwrite may remove


def case_id(phantom: Phantom, index: int) -> str:
    return f"{phantom.case_prefix}_{index:03d}"


def resolve_options(phantom: Phantom, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with `given`, each checked against its default's type and for positivity."""
    unknown = sorted(set(given) - set(phantom.options))
    if unknown:
        known = ", ".join(sorted(phantom.options)) or "none"
        raise ConfigError(f"phantom '{phantom.name}': unknown option(s) {unknown}; known options: {known}")
    options = dict(phantom.options)
    for key, value in given.items():
        options[key] = _checked_option(phantom.name, key, value, phantom.options[key])
    return options


def _checked_option(name: str, key: str, value: Any, default: Any) -> Any:
    where = f"phantom '{name}' option '{key}'"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    kind = int if isinstance(default, int) else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ConfigError(f"{where}: expected a {'whole ' if kind is int else ''}number like {default!r}, got {value!r}")
    if not value > 0:
        raise ConfigError(f"{where}: expected a positive value, got {value!r}")
    return kind(value)


def generate_case(phantom: Phantom, index: int, seed: int, options: dict[str, Any]) -> PhantomCase:
    """Case `index` of the dataset with this `seed` (options already resolved)."""
    return phantom.make_case(np.random.default_rng([seed, index]), index, **options)


def dataset_json(phantom: Phantom, cases: int) -> dict[str, Any]:
    return {
        "name": phantom.folder.split("_", 1)[-1],
        "description": phantom.description,
        "reference": "autoseg synthetic phantom (no patient data)",
        "channel_names": dict(phantom.channel_names),
        "labels": dict(phantom.labels),
        "numTraining": cases,
        "file_ending": phantom.file_ending,
    }


def write_dataset(
    phantom: Phantom, out_dir: Path, cases: int, seed: int, options: dict[str, Any], overwrite: bool = False
) -> Path:
    """Generate and write `cases` cases into out_dir/<phantom.folder>; returns that folder."""
    _check_counts(cases, seed)
    options = resolve_options(phantom, options)
    dataset_dir = Path(out_dir) / phantom.folder
    _prepare_folder(dataset_dir, overwrite)
    metadata = {}
    for index in range(cases):
        cid = case_id(phantom, index)
        case = generate_case(phantom, index, seed, options)
        write_image(dataset_dir / "imagesTr" / f"{cid}_0000{phantom.file_ending}", case.image, case.geometry)
        write_image(dataset_dir / "labelsTr" / f"{cid}{phantom.file_ending}", case.label, case.geometry)
        if phantom.write_extras is not None:
            phantom.write_extras(dataset_dir, cid, case)
        if case.metadata:
            metadata[cid] = case.metadata
        logger.debug("wrote %s case %s", phantom.name, cid)
    if metadata:
        write_json_atomic(dataset_dir / "cases.json", metadata)
    write_json_atomic(dataset_dir / "dataset.json", dataset_json(phantom, cases))
    logger.info("wrote %d %s cases to %s", cases, phantom.name, dataset_dir)
    return dataset_dir


def _check_counts(cases: Any, seed: Any) -> None:
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ConfigError(f"cases: expected a whole number of at least 1, got {cases!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: expected a whole number of at least 0, got {seed!r}")


def _prepare_folder(dataset_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an existing dataset unless asked; then remove only what we write."""
    existing = [dataset_dir / name for name in _WRITTEN if (dataset_dir / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{dataset_dir}: already holds a dataset ({existing[0].name} exists); "
            "choose another output folder or pass overwrite=True (CLI: --overwrite)"
        )
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dataset_dir.mkdir(parents=True, exist_ok=True)
