"""Find the cases to predict: an nnU-Net-named folder, a list of files, or DICOM series folders.

    folder/CASE_0000.nii.gz, CASE_0001.nii.gz ...   one case per CASE, channels in index order
    folder/scan.nii.gz (no _XXXX channel suffix)      one case per file, id "scan"
    [a.png, b.mha, ...]                               one case per file, id = name without ending
    [CaseInput(...), ...]                             cases given explicitly (e.g. a fold's validation cases)
    folder/ or folder/series1/ holding .dcm files     one case per series folder, id = folder name

Each case names its output ending: the input's own, except DICOM series, which become .nii.gz.
Nothing here reads pixels; `check_case_headers` reads headers only, so every case can be checked
before any output is written.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autoseg.errors import ConfigError
from autoseg.io import IMAGE_ENDINGS, file_ending, is_dicom_folder, read_image_info

log = logging.getLogger(__name__)

DICOM_OUTPUT_ENDING = ".nii.gz"
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class CaseInput:
    """One case to predict: its channel files (or one DICOM folder) and the output's ending."""

    case_id: str
    files: tuple[Path, ...]
    output_ending: str

    def output_name(self, ending: str | None = None) -> str:
        return f"{self.case_id}{ending or self.output_ending}"

    @property
    def input_folders(self) -> set[Path]:
        """Folders this case reads from (a DICOM folder counts itself)."""
        return {f.resolve() if f.is_dir() else f.resolve().parent for f in self.files}


def discover_cases(source: str | Path | Sequence[str | Path]) -> list[CaseInput]:
    """The cases in a folder (nnU-Net naming, plain files or DICOM series) or a list of files."""
    if isinstance(source, (str, Path)):
        cases = _folder_cases(Path(source))
    else:
        cases = [p if isinstance(p, CaseInput) else _single_case(Path(p)) for p in source]
    if not cases:
        raise ConfigError(f"{source}: no images found; expected image files ({', '.join(IMAGE_ENDINGS)}) "
                          "or DICOM series folders")
    _check_unique_ids(cases)
    return sorted(cases, key=lambda c: c.case_id)


def _single_case(path: Path) -> CaseInput:
    if not path.exists():
        raise ConfigError(f"{path}: input not found; check the path")
    if path.is_dir():
        return _dicom_case(path)
    ending = file_ending(path)
    return CaseInput(path.name[: -len(ending)] if ending else path.name, (path,), ending)


def _dicom_case(folder: Path) -> CaseInput:
    if not is_dicom_folder(folder):
        raise ConfigError(f"{folder}: folder holds no DICOM series; pass image files or a folder of DICOM slices")
    return CaseInput(folder.resolve().name, (folder,), DICOM_OUTPUT_ENDING)


def _folder_cases(folder: Path) -> list[CaseInput]:
    if not folder.is_dir():
        if folder.is_file():
            return [_single_case(folder)]
        raise ConfigError(f"{folder}: input folder not found; check the path")
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    images = [p for p in entries if p.is_file() and file_ending(p) in IMAGE_ENDINGS]
    if not images and _holds_dicom_files(folder, entries):
        return [_dicom_case(folder)]
    series = [_dicom_case(p) for p in entries if p.is_dir() and is_dicom_folder(p)]
    return _group_channels(folder, images) + series


def _holds_dicom_files(folder: Path, entries: list[Path]) -> bool:
    """A folder of slices: .dcm files, or extension-less files that GDCM reads as a series."""
    files = [p for p in entries if p.is_file()]
    return bool(files) and (any(p.suffix.lower() == ".dcm" for p in files) or is_dicom_folder(folder))


def _group_channels(folder: Path, images: list[Path]) -> list[CaseInput]:
    """Group CASE_XXXX files into cases; files without the channel suffix are cases of their own."""
    grouped: dict[tuple[str, str], dict[int, Path]] = {}
    cases = []
    for path in images:
        ending = file_ending(path)
        match = _CHANNEL_SUFFIX.match(path.name[: -len(ending)])
        if match is None:
            cases.append(CaseInput(path.name[: -len(ending)], (path,), ending))
        else:
            grouped.setdefault((match["case"], ending), {})[int(match["channel"])] = path
    for (case_id, ending), channels in grouped.items():
        expected = list(range(len(channels)))
        if sorted(channels) != expected:
            found = ", ".join(p.name for _, p in sorted(channels.items()))
            raise ConfigError(f"{folder}: case '{case_id}' has channel files {found}; channel indices must run "
                              f"0000..{len(channels) - 1:04d} without gaps; add the missing channel, or pass the files one "
                              "by one (then each file is a case of its own)")
        cases.append(CaseInput(case_id, tuple(channels[i] for i in expected), ending))
    return cases


def _check_unique_ids(cases: list[CaseInput]) -> None:
    seen: dict[str, CaseInput] = {}
    for case in cases:
        if case.case_id in seen:
            first, second = seen[case.case_id].files[0], case.files[0]
            raise ConfigError(f"{first} and {second} both give case id '{case.case_id}', so their outputs would "
                              "overwrite each other; rename one of them")
        seen[case.case_id] = case


def check_case_headers(case: CaseInput, expected_channels: int) -> tuple[int, ...] | None:
    """Readable headers, one spatial shape and `expected_channels` channels in total, or a clear error.

    Returns the spatial shape (numpy order), or None for a DICOM folder: those are left to the
    full read (their header is the whole series). So is the channel count of grayscale BMPs:
    ITK reports them as 3-component, read_image makes them 1 channel again.
    """
    if any(f.is_dir() for f in case.files):
        return None
    shapes, channels = {}, 0
    for path in case.files:
        shape, components, _ = read_image_info(path)  # ImageIOError naming the file when unreadable
        if len(shape) == 4:  # a 4D file: its first numpy axis becomes channels
            components, shape = shape[0], shape[1:]
        shapes[path] = shape
        channels += components
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{p.name} {s}" for p, s in shapes.items())
        raise ConfigError(f"case '{case.case_id}': channel files have different shapes ({listing}); "
                          "all channels of a case must share one grid")
    if channels != expected_channels and not any(file_ending(p) == ".bmp" for p in case.files):
        raise ConfigError(channel_count_message(case.case_id, case.files, expected_channels, channels))
    return next(iter(shapes.values()))


def channel_count_message(case_id: str, files: Sequence[Path], expected: int, found: int) -> str:
    names = ", ".join(str(p) for p in files)
    return (f"case '{case_id}' ({names}): the model expects {expected} input channel(s), found {found}; "
            f"give one file per channel named CASE_0000..CASE_{expected - 1:04d}"
            + (" or convert the colour image to grayscale" if found == 3 and expected == 1 else ""))


def inputs_folder(source: str | Path | Sequence[str | Path], cases: list[CaseInput]) -> Path | None:
    """The one folder the inputs come from: a folder given, else the folder every case's files share."""
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return Path(source)
    folders = {p.resolve().parent for c in cases for p in c.files}  # image files or DICOM series folders
    return folders.pop() if len(folders) == 1 else None
