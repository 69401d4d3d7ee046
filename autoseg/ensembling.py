"""Ensembles of saved predictions: average the class probabilities that `predict --save-probabilities` wrote.

A probabilities file is the predictor's `<case>.npz` beside the label map `<case><ending>`:
"probabilities" (K, *spatial) float16 on the original image grid, "label_names" and
"label_values" (class-index order). Averaging needs every file of a case to agree on shape and
labels; the ensemble's label map is the argmax mapped to label values, optionally post-processed
(largest foreground component, then per-class largest components; see `apply_postprocessing`).

Used by `autoseg ensemble` (folders of predictions) and by `find-best` (out-of-fold predictions
of two configurations). Nothing is ever written into an input folder.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg import io
from autoseg.atomic import atomic_write
from autoseg.errors import ConfigError
from autoseg.inference.bundle import Postprocessing
from autoseg.postprocessing import keep_largest_component
from autoseg.workdir import make_folder

log = logging.getLogger(__name__)

PROBABILITIES_ENDING = ".npz"


def read_probabilities(path: str | Path) -> tuple[np.ndarray, list[int], list[str]]:
    """One probabilities file -> (probabilities (K, *spatial) float32, label values, label names)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: probabilities file not found; predict with --save-probabilities to write it")
    try:
        with np.load(path) as saved:
            missing = [k for k in ("probabilities", "label_values", "label_names") if k not in saved.files]
            if missing:
                raise ConfigError(f"{path}: not a probabilities file (missing {', '.join(missing)}); "
                                  "use the .npz written by `autoseg predict --save-probabilities`")
            probabilities = saved["probabilities"].astype(np.float32)
            values = [int(v) for v in saved["label_values"]]
            names = [str(n) for n in saved["label_names"]]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); the file is damaged, predict this case again") from None
    if probabilities.ndim < 3 or probabilities.shape[0] != len(values):
        raise ConfigError(f"{path}: probabilities of shape {probabilities.shape} do not fit {len(values)} label "
                          "values; expected (classes, *spatial); predict this case again")
    return probabilities, values, names


def average_probabilities(npz_paths: Sequence[str | Path]) -> tuple[np.ndarray, list[int], list[str]]:
    """Mean of several probabilities files of one case -> (probabilities float32, label values, label names)."""
    paths = [Path(p) for p in npz_paths]
    if not paths:
        raise ConfigError("no probabilities files given; pass at least one <case>.npz")
    total, values, names = read_probabilities(paths[0])
    for path in paths[1:]:
        probabilities, other_values, other_names = read_probabilities(path)
        if (other_values, other_names) != (values, names):
            raise ConfigError(f"{path}: labels {dict(zip(other_names, other_values))} differ from "
                              f"{dict(zip(names, values))} in {paths[0]}; only predictions of one label set can be averaged")
        if probabilities.shape != total.shape:
            raise ConfigError(f"{path}: probabilities of shape {probabilities.shape} differ from {total.shape} in "
                              f"{paths[0]}; both must be predictions of the same image")
        total += probabilities
    total /= len(paths)
    return total, values, names


def labels_from_probabilities(probabilities: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Argmax over classes, mapped to label values (uint8, or int16 for values from 256 on)."""
    values = np.asarray(label_values)
    dtype = np.uint8 if values.max() < 256 else np.int16
    return values.astype(dtype)[np.argmax(probabilities, axis=0)]


def apply_postprocessing(label: np.ndarray, postprocessing: Postprocessing | None) -> np.ndarray:
    """Largest component of the foreground union (if chosen), then per listed class its largest component."""
    if postprocessing is None:
        return label
    if postprocessing.keep_largest_foreground:
        label = keep_largest_component(label, classes=None, foreground_as_one=True)
    if postprocessing.keep_largest_classes:
        label = keep_largest_component(label, classes=list(postprocessing.keep_largest_classes))
    return label


def save_probabilities(path: str | Path, probabilities: np.ndarray, label_values: Sequence[int],
                       label_names: Sequence[str]) -> Path:
    """Write the predictor's probabilities format, atomically."""
    path = Path(path)
    # np.savez would append .npz to a temp name lacking it, so write through a file object
    with atomic_write(path) as tmp, open(tmp, "wb") as stream:
        np.savez_compressed(stream, probabilities=probabilities.astype(np.float16),
                            label_names=np.array(list(label_names)),
                            label_values=np.array(list(label_values), dtype=np.int32))
    return path


# ---------------------------------------------------------------- folders
def probability_cases(folder: Path) -> dict[str, Path]:
    """case id -> <case>.npz in `folder` (hidden files are half-written temp files)."""
    return {p.name[: -len(PROBABILITIES_ENDING)]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.endswith(PROBABILITIES_ENDING)}


def label_file_of(folder: Path, case_id: str) -> Path:
    """The label map <case><ending> beside <case>.npz, whatever its image ending."""
    found = [folder / f"{case_id}{ending}" for ending in io.IMAGE_ENDINGS if (folder / f"{case_id}{ending}").is_file()]
    if not found:
        raise ConfigError(f"{folder}: case '{case_id}' has {case_id}{PROBABILITIES_ENDING} but no label map "
                          f"{case_id}<ending>; its geometry comes from that file, so predict the case again")
    return found[0]


def _common_cases(dirs: list[Path]) -> list[str]:
    """Case ids present in every folder, or an error listing what each folder lacks."""
    per_dir = {d: probability_cases(d) for d in dirs}
    every = sorted(set().union(*per_dir.values()))
    if not every:
        raise ConfigError(f"{dirs[0]}: no <case>{PROBABILITIES_ENDING} files found; predict with "
                          "--save-probabilities so predictions can be ensembled")
    problems = [f"{d}: missing {c}{PROBABILITIES_ENDING}" for d, cases in per_dir.items() for c in every if c not in cases]
    if problems:
        raise ConfigError("every folder must hold the probabilities of the same cases; predict the missing cases "
                          "with --save-probabilities (or leave the extra ones out):\n  - " + "\n  - ".join(problems))
    return every


def _check_folders(dirs: list[Path], out_dir: Path) -> None:
    if len(dirs) < 2:
        raise ConfigError(f"an ensemble needs at least two prediction folders, found {len(dirs)}")
    for folder in dirs:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: prediction folder not found; pass folders written by `autoseg predict`")
    if out_dir.resolve() in {d.resolve() for d in dirs}:
        raise ConfigError(f"{out_dir}: is one of the input folders; ensembles are never written over their "
                          "inputs, choose another output folder")


def ensemble_folders(dirs: Sequence[str | Path], out_dir: str | Path, postprocessing: Postprocessing | None = None,
                     write_probabilities: bool = True) -> list[Path]:
    """Average the saved probabilities of each case over several prediction folders.

    Every folder must hold <case>.npz for the same cases. Writes out_dir/<case><ending> with the
    geometry and ending of the first folder's label map of that case, plus the averaged <case>.npz
    (unless `write_probabilities` is False). Returns the label maps written, in case order.
    """
    folders, out_dir = [Path(d) for d in dirs], Path(out_dir)
    _check_folders(folders, out_dir)
    case_ids = _common_cases(folders)
    make_folder(out_dir, "output folder (-o)")  # a path that cannot hold the results fails before any work
    written = []
    for case_id in case_ids:
        label_path = label_file_of(folders[0], case_id)
        shape, _, geometry = io.read_image_info(label_path)  # the header is all we need
        probabilities, values, names = average_probabilities([d / f"{case_id}{PROBABILITIES_ENDING}" for d in folders])
        if tuple(probabilities.shape[1:]) != tuple(shape):
            raise ConfigError(f"{label_path}: label map of shape {shape} does not match the probabilities' "
                              f"{probabilities.shape[1:]}; the folder mixes predictions of different images")
        label = apply_postprocessing(labels_from_probabilities(probabilities, values), postprocessing)
        if write_probabilities:
            save_probabilities(out_dir / f"{case_id}{PROBABILITIES_ENDING}", probabilities, values, names)
        written.append(io.write_image(out_dir / label_path.name, label, geometry))  # last: marks the case done
    log.info("ensembled %d case(s) of %d folders into %s", len(written), len(folders), out_dir)
    return written
