"""Dataset folders in the nnU-Net v2 raw layout (unchanged): find the cases, check that all are usable.

    DatasetXXX_Name/dataset.json   channel_names {"0": "CT"}, labels {"background": 0, ...}, numTraining,
                                   file_ending; optional extras (name, description, groups {case: group},
                                   task "NAME" or {"name": NAME, "options": {...}} (autoseg/tasks), ...)
    imagesTr/CASE_0000<ending>     one file per channel, 4-digit channel index
    labelsTr/CASE<ending>          imagesTs/ (optional, no labels)   splits_final.json (optional)

Colour images: when dataset.json declares N > 1 channels, the ending is a plain 2D format (PNG,
JPG, ...) and a case has only CASE_0000, that file must carry all N channels as colour components
(nnU-Net's RGB convention) and `Case.images` has one entry. Everywhere else each file must be
single-component: an RGB file in a grayscale dataset is reported ("has 3 color components,
expected grayscale"), not converted, because the right conversion is the user's call.
`np.concatenate([read_image(p)[0] for p in case.images])` gives (N, *spatial) either way.

`load_dataset` checks the structure only (no pixel reads); `validate_dataset` also reads every
file once; both report every problem found in one DatasetError, one line per problem.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoseg.errors import ConfigError, DatasetError
from autoseg.io import IMAGE_ENDINGS, PLAIN_2D_ENDINGS, file_ending
from autoseg.dataset_checks import DATASET_JSON, check_contents, preview as _preview, rel as _rel, relative_message as _relative_message
from autoseg.schema import read_json

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
TRAINING_FOLDERS = ("imagesTr", "labelsTr")
_KEY_EXAMPLES = {"channel_names": '{"0": "CT"}', "labels": '{"background": 0, "L1": 1}',
                 "numTraining": "the number of training cases", "file_ending": '".nii.gz"'}
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its image files in channel order and, for training cases, its label file."""

    case_id: str
    images: tuple[Path, ...]  # one file per channel (one colour file may carry all, see module doc)
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A dataset folder whose structure has been checked."""

    root: Path
    name: str  # folder name, e.g. "Dataset611_LumbarCT"
    channel_names: tuple[str, ...]  # in channel order
    labels: dict[str, int]  # name -> value, background included, as in dataset.json
    file_ending: str
    num_training: int
    cases: tuple[Case, ...]  # training cases, sorted by case_id
    test_cases: tuple[Case, ...]  # imagesTs, label None
    splits_file: Path | None
    groups: dict[str, str] | None  # case_id -> group, from dataset.json "groups"
    task: dict[str, Any] | None = None  # {"name", "options"} from dataset.json "task" (checked when planning)


@dataclass
class _Metadata:
    """dataset.json as far as it could be parsed; a field is None where its key is missing or invalid."""

    channel_names: tuple[str, ...] | None = None
    labels: dict[str, int] | None = None
    file_ending: str | None = None
    num_training: int | None = None
    groups: dict[str, str] | None = None
    task: dict[str, Any] | None = None


@dataclass
class _Scan:
    """Everything the structural pass found, problems included."""

    root: Path
    meta: _Metadata
    cases: list[Case] = field(default_factory=list)  # complete training cases only
    test_cases: list[Case] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- public API
def load_dataset(root: str | Path) -> Dataset:
    """Read dataset.json and list the cases without reading any image; raise DatasetError listing every problem."""
    scan = _scan(Path(root))
    _raise_if_problems(scan.root, scan.problems)
    return _to_dataset(scan)


def validate_dataset(root: str | Path, workers: int = 2, progress: Callable[[int], object] | None = None) -> Dataset:
    """Check everything, reading every file once (case by case, `workers` cases at a time).

    `progress(1)` is called after each case (training and test cases); raises DatasetError listing
    every problem, or returns the Dataset when there is none.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, found {workers}")
    started = time.perf_counter()
    scan = _scan(Path(root))
    if scan.meta.channel_names is not None:
        all_cases = scan.cases + scan.test_cases
        scan.problems += check_contents(all_cases, scan.meta, scan.root, workers, progress)
    _raise_if_problems(scan.root, scan.problems)
    logger.info("validated %s: %d training and %d test cases in %.1f s", scan.root.name,
                len(scan.cases), len(scan.test_cases), time.perf_counter() - started)
    return _to_dataset(scan)


def case_images_for(folder: str | Path, case_id: str, num_channels: int, file_ending: str) -> tuple[Path, ...]:
    """The files holding a case's channels: CASE_0000..CASE_{N-1}, or CASE_0000 alone for a 2D colour file.

    The colour layout applies only when N > 1, the ending is a plain 2D format, CASE_0000 exists
    and CASE_0001 does not; files are otherwise not checked for existence.
    """
    folder = Path(folder)
    present = {i for i in (0, 1) if (folder / _channel_file_name(case_id, i, file_ending)).is_file()}
    indices = _channel_layout(present, num_channels, file_ending)
    return tuple(folder / _channel_file_name(case_id, i, file_ending) for i in indices)


# ---------------------------------------------------------------- structure
def _scan(root: Path) -> _Scan:
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected a dataset folder holding {DATASET_JSON}, imagesTr/ and labelsTr/")
    problems: list[str] = []
    scan = _Scan(root, _read_metadata(root, problems), problems=problems)
    for sub in TRAINING_FOLDERS:
        if not (root / sub).is_dir():
            problems.append(f"{sub}/: folder missing; a dataset needs imagesTr/ and labelsTr/")
    meta = scan.meta
    if meta.channel_names is None or meta.file_ending is None or not all((root / s).is_dir() for s in TRAINING_FOLDERS):
        return scan  # case files cannot be named or paired; listing them would only add noise
    scan.cases, training_ids = _training_cases(root, meta, problems)
    if not training_ids:
        problems.append(f"imagesTr/, labelsTr/: no training cases; a dataset needs at least one case, e.g. "
                        f"imagesTr/{_channel_file_name('case_001', 0, meta.file_ending)} with "
                        f"labelsTr/case_001{meta.file_ending}")
    if (root / "imagesTs").is_dir():
        scan.test_cases = _unlabelled_cases(root, root / "imagesTs", meta, problems)
    if meta.num_training is not None and meta.num_training != len(training_ids):
        problems.append(f"{DATASET_JSON}: numTraining is {meta.num_training} but imagesTr/labelsTr hold "
                        f"{len(training_ids)} case(s); set numTraining to {len(training_ids)}")
    if meta.groups is not None:
        _check_groups(meta.groups, training_ids, problems)
    if (root / SPLITS_FILE).exists():
        _check_splits(root, training_ids, problems)
    return scan


def _training_cases(root: Path, meta: _Metadata, problems: list[str]) -> tuple[list[Case], set[str]]:
    """Pair imagesTr with labelsTr; returns the complete cases and every case id seen in either."""
    ending = meta.file_ending
    channel_files = _scan_channel_files(root, root / "imagesTr", ending, problems)
    label_files = {p.name[: -len(ending)]: p for p in _image_files(root, root / "labelsTr", ending, problems)}
    cases = []
    for case_id in sorted(channel_files.keys() | label_files.keys()):
        label = label_files.get(case_id)
        images = _case_channels(root, root / "imagesTr", case_id, channel_files.get(case_id, {}), meta, problems)
        if case_id not in channel_files:
            problems.append(f"{_rel(label, root)}: label has no image files (expected imagesTr/"
                            f"{_channel_file_name(case_id, 0, ending)}); add the images or remove the label")
        elif label is None:
            problems.append(f"labelsTr/{case_id}{ending}: label missing for case '{case_id}' whose images are in "
                            "imagesTr; add the label or remove the images")
        if images is not None and label is not None:
            cases.append(Case(case_id, images, label))
    return cases, channel_files.keys() | label_files.keys()


def _unlabelled_cases(root: Path, folder: Path, meta: _Metadata, problems: list[str]) -> list[Case]:
    channel_files = _scan_channel_files(root, folder, meta.file_ending, problems)
    cases = []
    for case_id in sorted(channel_files):
        images = _case_channels(root, folder, case_id, channel_files[case_id], meta, problems)
        if images is not None:
            cases.append(Case(case_id, images, None))
    return cases


def _case_channels(root: Path, folder: Path, case_id: str, found: dict[int, Path], meta: _Metadata,
                   problems: list[str]) -> tuple[Path, ...] | None:
    """The case's channel files in order, or None (with problems recorded) when any is missing."""
    if not found:
        return None
    count, ending = len(meta.channel_names), meta.file_ending
    for index, path in sorted(found.items()):
        if index >= count:
            problems.append(f"{_rel(path, root)}: channel index {index} but {DATASET_JSON} declares {count} "
                            f"channel(s) (0..{count - 1}); remove the file or add the channel to channel_names")
    wanted = _channel_layout(set(found), count, ending)
    missing = [i for i in wanted if i not in found]
    for index in missing:
        problems.append(f"{_rel(folder, root)}/{_channel_file_name(case_id, index, ending)}: missing; "
                        f"{DATASET_JSON} declares {count} channel(s), so case '{case_id}' needs one file per channel")
    return None if missing else tuple(found[i] for i in wanted)


def _channel_layout(present: set[int], num_channels: int, ending: str) -> list[int]:
    """Channel file indices a case must have: all of them, or only 0 for a packed 2D colour file."""
    if num_channels > 1 and ending in PLAIN_2D_ENDINGS and 0 in present and 1 not in present:
        return [0]
    return list(range(num_channels))


def _scan_channel_files(root: Path, folder: Path, ending: str, problems: list[str]) -> dict[str, dict[int, Path]]:
    """case_id -> {channel index -> file} for the image files in `folder`."""
    found: dict[str, dict[int, Path]] = {}
    for path in _image_files(root, folder, ending, problems):
        stem = path.name[: -len(ending)]
        match = _CHANNEL_SUFFIX.match(stem)
        if match is None:
            problems.append(f"{_rel(path, root)}: name lacks the 4-digit channel index; rename it to {stem}_0000{ending}")
            continue
        found.setdefault(match["case"], {})[int(match["channel"])] = path
    return found


def _image_files(root: Path, folder: Path, ending: str, problems: list[str]) -> list[Path]:
    """Files in `folder` with `ending`, sorted; image files with another ending are reported, other files ignored."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files (.DS_Store) and sub-folders are not part of the layout
        if path.name.endswith(ending):
            files.append(path)
        elif file_ending(path) in IMAGE_ENDINGS:
            actual = path.name[len(path.name) - len(file_ending(path)):]
            problems.append(f"{_rel(path, root)}: ending '{actual}' differs from {DATASET_JSON} file_ending "
                            f"'{ending}'; convert the file or change file_ending")
    return files


def _check_groups(groups: dict[str, str], training_ids: set[str], problems: list[str]) -> None:
    unknown = sorted(groups.keys() - training_ids)
    if unknown:
        problems.append(f"{DATASET_JSON}: groups names case(s) {_preview(unknown)} that are not in imagesTr/labelsTr; "
                        "remove them or add the cases")
    ungrouped = sorted(training_ids - groups.keys())
    if ungrouped:
        problems.append(f"{DATASET_JSON}: groups lacks case(s) {_preview(ungrouped)}; give every training case a group")


def _check_splits(root: Path, training_ids: set[str], problems: list[str]) -> None:
    try:
        folds = read_json(root / SPLITS_FILE, DatasetError)
    except DatasetError as exc:
        problems.append(_relative_message(exc, root))
        return
    if not isinstance(folds, list) or not folds:
        problems.append(f'{SPLITS_FILE}: expected a non-empty list of {{"train": [...], "val": [...]}}, '
                        f"found {type(folds).__name__}")
        return
    for index, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(isinstance(fold.get(k), list) for k in ("train", "val")):
            problems.append(f"{SPLITS_FILE}: fold {index} must be an object with 'train' and 'val' lists of case ids")
            continue
        train, val = {str(c) for c in fold["train"]}, {str(c) for c in fold["val"]}
        unknown = sorted((train | val) - training_ids)
        if unknown:
            problems.append(f"{SPLITS_FILE}: fold {index} names unknown case(s) {_preview(unknown)}; "
                            "use ids of training cases in labelsTr")
        if train & val:
            problems.append(f"{SPLITS_FILE}: fold {index} has case(s) {_preview(sorted(train & val))} in both "
                            "train and val; each case belongs to one side")


# ---------------------------------------------------------------- dataset.json
def _read_metadata(root: Path, problems: list[str]) -> _Metadata:
    try:
        data = read_json(root / DATASET_JSON, DatasetError)
    except DatasetError as exc:
        problems.append(_relative_message(exc, root))
        return _Metadata()
    if not isinstance(data, dict):
        problems.append(f"{DATASET_JSON}: expected a JSON object with keys {list(_KEY_EXAMPLES)}, found {type(data).__name__}")
        return _Metadata()
    for key, example in _KEY_EXAMPLES.items():
        if key not in data:
            v1 = " (nnU-Net v1 called it 'modality')" if key == "channel_names" and "modality" in data else ""
            problems.append(f"{DATASET_JSON}: missing key '{key}'{v1}; add it, e.g. {example}")
    parsed = {}
    for key, parse in _PARSERS.items():
        try:
            parsed[key] = parse(data[key]) if key in data else None
        except ValueError as exc:
            problems.append(f"{DATASET_JSON}: {key} {exc}")
    return _Metadata(parsed.get("channel_names"), parsed.get("labels"), parsed.get("file_ending"),
                     parsed.get("numTraining"), parsed.get("groups"), parsed.get("task"))


def _parse_channel_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f'must be a non-empty object of names like {{"0": "CT", "1": "T2"}}, found {value!r}')
    expected = [str(i) for i in range(len(value))]
    if set(value) != set(expected):
        raise ValueError(f'keys must be "0".."{len(value) - 1}" (one per channel), found {sorted(value)}')
    return tuple(value[k] for k in expected)


def _parse_labels(value: object) -> dict[str, int]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f'must be a non-empty object like {{"background": 0, "L1": 1}}, found {value!r}')
    bad = {k: v for k, v in value.items() if isinstance(v, bool) or not isinstance(v, int)}
    if bad:
        raise ValueError(f"values must be single whole numbers (region-based labels are not supported), found {bad!r}")
    values = sorted(value.values())
    if values != list(range(len(values))):
        raise ValueError(f"values must be consecutive from 0 (0..{len(values) - 1}), found {values}; "
                         "renumber them here and in the label files")
    return dict(value)


def _parse_file_ending(value: object) -> str:
    if value not in IMAGE_ENDINGS:
        raise ValueError(f"must be one of {', '.join(IMAGE_ENDINGS)}, found {value!r}")
    return value


def _parse_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0, found {value!r}")
    return value


def _parse_groups(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in value.values()):
        raise ValueError(f'must map case ids to group names, e.g. {{"case_01": "patient_7"}}, found {value!r}')
    return {k: str(g) for k, g in value.items()}  # integer patient ids are common; groups compare as text


def _parse_task(value: object) -> dict[str, Any]:
    """A task name, or {"name": NAME, "options": {...}}; whether the name is registered is the planner's check."""
    if isinstance(value, str) and value:
        return {"name": value, "options": {}}
    if (isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"]
            and isinstance(value.get("options", {}), dict) and set(value) <= {"name", "options"}):
        return {"name": value["name"], "options": dict(value.get("options", {}))}
    raise ValueError(f'must be a task name such as "cervical-lowdose" or {{"name": ..., "options": {{...}}}}, found {value!r}')


_PARSERS: dict[str, Callable[[object], object]] = {
    "channel_names": _parse_channel_names, "labels": _parse_labels, "file_ending": _parse_file_ending,
    "numTraining": _parse_count, "groups": _parse_groups, "task": _parse_task,
}


# ---------------------------------------------------------------- helpers
def _to_dataset(scan: _Scan) -> Dataset:
    meta, root = scan.meta, scan.root
    splits = root / SPLITS_FILE
    return Dataset(root=root, name=Path(os.path.abspath(root)).name, channel_names=meta.channel_names, labels=meta.labels,
                   file_ending=meta.file_ending, num_training=meta.num_training, cases=tuple(scan.cases),
                   test_cases=tuple(scan.test_cases), splits_file=splits if splits.is_file() else None,
                   groups=meta.groups, task=meta.task)


def _raise_if_problems(root: Path, problems: list[str]) -> None:
    if problems:
        raise DatasetError(f"{root}: dataset has {len(problems)} problem(s)", problems=problems)


def _channel_file_name(case_id: str, channel: int, ending: str) -> str:
    return f"{case_id}_{channel:04d}{ending}"
