"""Model sharing: pack a trained model into one zip, and unpack a zip into the workdir.

A model zip holds exactly what prediction needs and nothing else:

    model.json        a ModelBundle (autoseg.inference.bundle) whose checkpoint paths point inside
                      the zip, e.g. "3d_fullres/fold_0.pt"
    <config>/<fold>.pt  checkpoints stripped to weights + the documents that describe them
                      (no optimizer, scaler, RNG or progress state)

`import_model` checks a zip completely (safe member names, a strict model.json, every checkpoint
present, data only, intact by its checksums, and loadable as one ensemble per member) in a hidden
staging folder before the result appears under `<workdir>/models/<name>/`, so a bad zip never
leaves a half-imported model and never runs code.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from autoseg import schema
from autoseg.atomic import atomic_write
from autoseg.checkpoint import CHECKPOINT_PREFERENCE, PREDICTION_KEYS, config_plan_of, load_checkpoint, write_checkpoint
from autoseg.errors import CheckpointError, ConfigError
from autoseg.inference.bundle import (BUNDLE_FILE, BundleMember, ModelBundle, first_stage_checkpoints, is_safe_member,
                                      load_bundle, member_checkpoints)
from autoseg.inference.cascade import first_stage_runs_of
from autoseg.inference.ensemble import load_models, resolve_checkpoint
from autoseg.workdir import Workdir

log = logging.getLogger(__name__)

# The checkpoint keys prediction needs (autoseg.checkpoint.PREDICTION_KEYS are packed); everything else stays home.
_REQUIRED_KEYS = ("model_state", "config_plan", "labels", "image_ndim")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# ---------------------------------------------------------------------- names and places
def models_dir(workdir: str | Path | None = None) -> Path:
    """<workdir>/models: where imported models live (one folder each, holding model.json)."""
    return Workdir.at(workdir).root / "models"


def imported_model_dir(workdir: str | Path | None, name: str) -> Path:
    return Workdir.at(workdir).model_dir(check_model_name(name))


def check_model_name(name: str) -> str:
    """A model name becomes a folder or file name: letters, digits, '_', '-', '.', '+', no '..'."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(f"model name '{name}' is not usable as a folder name; expected letters, digits, "
                          "'_', '-', '.' or '+' (starting with a letter or digit, no '..'); pass another name")
    return name


# ---------------------------------------------------------------------- export
def export_model(source: str | Path, out_zip: str | Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Pack a trained model into a zip holding model.json and prediction-only checkpoints.

    source: a run folder (or one checkpoint file), a folder holding model.json, or a bundle file
    such as best.json. A run folder becomes a one-member bundle without postprocessing.
    out_zip: the zip to write (must end in .zip), or an existing folder to write `<name>.zip` into
    (name defaults to the dataset name). The zip appears atomically; an existing one is replaced
    only with overwrite=True. Returns the zip's path.
    """
    bundle, checkpoints, named_first_stages, preloaded = _export_source(Path(source))
    first_stages = _first_stages(checkpoints, named_first_stages, preloaded)
    target = _zip_target(Path(out_zip), name, bundle.dataset_name, overwrite)
    arcnames = _archive_names(bundle, checkpoints, first_stages, preloaded)
    packed = replace(bundle, predict_command="", members=tuple(
        BundleMember(m.config, tuple(arcnames[p] for p in paths), tuple(arcnames[p] for p in first))
        for m, paths, first in zip(bundle.members, checkpoints, first_stages)))
    with atomic_write(target, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in arcnames.items():
            payload = preloaded.pop(path, None) or _prediction_payload(path)  # one held at a time once packed
            _check_bundle_labels(bundle, payload, path)
            with archive.open(arcname, "w", force_zip64=True) as stream:
                write_checkpoint(stream, payload)  # fresh checksums: the training section is gone
        archive.writestr(BUNDLE_FILE, schema.dumps(packed))
    log.info("exported %d checkpoint(s) of %s to %s", len(arcnames), bundle.dataset_name or "the model", target)
    return target


def _export_source(source: Path) -> tuple[ModelBundle, list[list[Path]], list[list[Path]], dict[Path, dict[str, Any]]]:
    """The bundle to pack, its checkpoint files and the first-stage files it names per member, and
    payloads already loaded on the way."""
    if not source.exists():
        raise CheckpointError(f"{source}: no such run folder, checkpoint or model bundle; pass a run folder, "
                              f"a folder holding {BUNDLE_FILE}, or a bundle file such as best.json")
    if source.suffix == ".json" or (source.is_dir() and (source / BUNDLE_FILE).is_file()):
        bundle, base = load_bundle(source)
        return bundle, member_checkpoints(bundle, base), first_stage_checkpoints(bundle, base), {}
    checkpoint = resolve_checkpoint(source).resolve()
    payload = _prediction_payload(checkpoint)
    bundle = ModelBundle(dataset_name=str(payload.get("dataset_name", "")), labels=_labels_of(payload),
                         members=(BundleMember(config_plan_of(payload).name, (str(checkpoint),)),))
    return bundle, [[checkpoint]], [[]], {checkpoint: payload}


def _first_stages(checkpoints: list[list[Path]], named: list[list[Path]],
                  preloaded: dict[Path, dict[str, Any]]) -> list[list[Path]]:
    """Per member, the first stage's checkpoints of a cascade's second stage (those a bundle names, else
    the runs prediction would use: autoseg/inference/cascade.py); empty for other members."""
    stages = []
    for paths, given in zip(checkpoints, named):
        if given:
            stages.append(given)
            continue
        previous = config_plan_of(_payload(paths[0], preloaded)).previous_stage
        runs = first_stage_runs_of([p.parent for p in paths], previous) if previous else []
        stages.append([resolve_checkpoint(run).resolve() for run in runs])
    return stages


def _payload(path: Path, preloaded: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    if path not in preloaded:
        preloaded[path] = _prediction_payload(path)
    return preloaded[path]


def _prediction_payload(path: Path) -> dict[str, Any]:
    """A checked checkpoint's payload without its training state; refuses files that are not model checkpoints."""
    payload = load_checkpoint(path, map_location="cpu")
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a model checkpoint (missing {', '.join(missing)}); "
                              "export a checkpoint written by `autoseg train`")
    return {k: payload[k] for k in PREDICTION_KEYS if k in payload}


def _labels_of(payload: dict[str, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in payload["labels"].items()}


def _check_bundle_labels(bundle: ModelBundle, payload: dict[str, Any], path: Path) -> None:
    if _labels_of(payload) != dict(bundle.labels):
        raise CheckpointError(f"{path}: its labels {_labels_of(payload)} differ from the bundle's {dict(bundle.labels)}; "
                              "the bundle mixes checkpoints of different datasets, re-create it (`autoseg find-best`)")


def _zip_target(out_zip: Path, name: str | None, dataset_name: str, overwrite: bool) -> Path:
    if out_zip.is_dir():
        out_zip = out_zip / f"{check_model_name(name or dataset_name or 'model')}.zip"
    elif name is not None and name != out_zip.stem:
        raise ConfigError(f"name '{name}' names the zip only when the output is a folder, but {out_zip} is a file "
                          f"path; rename the output to {out_zip.with_name(name + '.zip')} or leave the name out")
    if out_zip.suffix != ".zip":
        raise ConfigError(f"{out_zip}: a model export is a zip file; expected a path ending in .zip, found "
                          f"'{out_zip.suffix or 'no ending'}'; add .zip or pass an existing folder")
    if out_zip.exists() and not overwrite:
        raise ConfigError(f"{out_zip}: already exists; pass overwrite=True (--overwrite) to replace it, or choose another path")
    return out_zip


def _archive_names(bundle: ModelBundle, checkpoints: list[list[Path]], first_stages: list[list[Path]],
                   preloaded: dict[Path, dict[str, Any]]) -> dict[Path, str]:
    """Checkpoint file -> '<config>/<fold folder>.pt' in the zip; a cascade's second stage and its first
    stage keep a workdir's layout, '<config>/<fold folder>/<file>', so that prediction finds the first
    stage beside the second after import. A file shared by members is packed once."""
    names: dict[Path, str] = {}

    def add(path: Path, config: str, nested: bool) -> None:
        if path in names:
            return
        fold = _safe_part(path.parent.name if path.name in CHECKPOINT_PREFERENCE else path.stem)
        ending = f"/{_safe_part(path.name)}" if nested else ".pt"
        candidate, counter = f"{config}/{fold}{ending}", 2
        while candidate in names.values():
            candidate, counter = f"{config}/{fold}_{counter}{ending}", counter + 1
        names[path] = candidate

    for member, paths, first in zip(bundle.members, checkpoints, first_stages):
        for path in paths:
            add(path, _safe_part(member.config), nested=bool(first))
        for path in first:
            add(path, _safe_part(config_plan_of(_payload(path, preloaded)).name), nested=True)
    return names


def _safe_part(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", text).strip(".")
    return cleaned or "model"


# ---------------------------------------------------------------------- import
def import_model(zip_path: str | Path, workdir: str | Path | None = None, name: str | None = None,
                 overwrite: bool = False) -> Path:
    """Check a model zip and unpack it into <workdir>/models/<name>/ (name: the zip's stem).

    The folder then holds model.json and the checkpoints; use it as a model for prediction. An
    existing folder is replaced only with overwrite=True (the old one is removed after the new one
    is in place). Returns the folder.
    """
    zip_path = Path(zip_path)
    target = imported_model_dir(workdir, name or zip_path.stem)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: a model named '{target.name}' is already imported; pass overwrite=True "
                          "(--overwrite) to replace it, or choose another name (--name)")
    staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}.importing")
    try:
        with _open_zip(zip_path) as archive:
            bundle = _bundle_in_zip(archive, zip_path)
            _extract(archive, zip_path, bundle, staging)
        _check_loadable(bundle, staging, zip_path)
        command = f"autoseg predict -i INPUT -o OUTPUT --model {target}"
        schema.write_json_atomic(staging / BUNDLE_FILE, replace(bundle, predict_command=command))
        _swap_in(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("imported %s into %s", zip_path, target)
    return target


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.is_file():
        raise CheckpointError(f"{zip_path}: model zip not found; check the path (create one with `autoseg export-model`)")
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{zip_path}: not a readable zip file ({exc}); export the model again") from None


def _bundle_in_zip(archive: zipfile.ZipFile, zip_path: Path) -> ModelBundle:
    """model.json read strictly; refuses unsafe member names and checkpoints the zip lacks."""
    names = archive.namelist()
    unsafe = [n for n in names if not is_safe_member(n)]
    if unsafe:
        raise CheckpointError(f"{zip_path}: refusing a zip with member(s) that would land outside the model folder "
                              f"({', '.join(unsafe)}); expected relative paths without '..'. Do not import this file")
    if BUNDLE_FILE not in names:
        raise CheckpointError(f"{zip_path}: no {BUNDLE_FILE} at the top of the zip (found "
                              f"{', '.join(names[:5]) or 'nothing'}); expected a zip written by `autoseg export-model`")
    data = _read_json_member(archive, zip_path)
    bundle = schema.from_dict(ModelBundle, data, f"{zip_path}:{BUNDLE_FILE}", CheckpointError)
    _check_references(bundle, set(names), zip_path)
    return bundle


def _check_references(bundle: ModelBundle, names: set[str], zip_path: Path) -> None:
    if not bundle.members or any(not m.checkpoints for m in bundle.members):
        raise CheckpointError(f"{zip_path}: {BUNDLE_FILE} needs at least one member with at least one checkpoint; "
                              "export the model again")
    references = [c for m in bundle.members for c in m.files]
    problems = [_listed("outside the zip", [c for c in references if not is_safe_member(c)]),
                _listed("missing from the zip", [c for c in references
                                                 if is_safe_member(c) and PurePosixPath(c).as_posix() not in names])]
    if any(problems):
        raise CheckpointError(f"{zip_path}: {BUNDLE_FILE} references checkpoint(s) " + "; ".join(filter(None, problems))
                              + "; the zip is incomplete or was edited, export the model again")


def _listed(what: str, items: list[str]) -> str:
    return f"{what}: {', '.join(items)}" if items else ""


def _read_json_member(archive: zipfile.ZipFile, zip_path: Path) -> Any:
    try:
        return json.loads(archive.read(BUNDLE_FILE).decode("utf-8"))
    except (ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{zip_path}:{BUNDLE_FILE}: not readable JSON ({exc}); export the model again") from None


def _extract(archive: zipfile.ZipFile, zip_path: Path, bundle: ModelBundle, staging: Path) -> None:
    """Only model.json and the referenced checkpoints; a CRC error names the member."""
    wanted = [BUNDLE_FILE] + sorted({PurePosixPath(c).as_posix() for m in bundle.members for c in m.files})
    skipped = [n for n in archive.namelist() if n not in wanted and not n.endswith("/")]
    if skipped:
        log.info("%s: not extracting %d file(s) that the model does not use: %s", zip_path, len(skipped), ", ".join(skipped))
    for member in wanted:
        destination = staging / member
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(member) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise CheckpointError(f"{zip_path}:{member}: damaged ({exc}); download or export the model again") from None


def _check_loadable(bundle: ModelBundle, staging: Path, zip_path: Path) -> None:
    """Every member rebuilds as an ensemble; errors name the file inside the zip, not the staging folder."""
    for member in bundle.members:
        try:
            ensemble = load_models([staging / c for c in member.checkpoints], "cpu")
            if member.first_stage:
                load_models([staging / c for c in member.first_stage], "cpu")
        except CheckpointError as exc:
            raise CheckpointError(str(exc).replace(str(staging) + os.sep, f"{zip_path}:")) from None
        if ensemble.labels != dict(bundle.labels):
            raise CheckpointError(f"{zip_path}: member '{member.config}' predicts labels {ensemble.labels} but "
                                  f"{BUNDLE_FILE} declares {dict(bundle.labels)}; export the model again")


def _swap_in(staging: Path, target: Path) -> None:
    """Rename the new folder into place; an old one is renamed away first and removed last."""
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old") if target.exists() else None
    if old is not None:
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old, target)  # put the previous model back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

