"""Predict label maps for new images with a trained ensemble; outputs keep the input's geometry.

Per case: preprocess exactly as in training (crop, normalize, resample; `preprocess_case`) ->
sliding window per ensemble member (mirror TTA over the plan's axes) -> softmax of each member's
averaged logits, averaged over members -> back to the original grid (`restore_original`) ->
argmax to label values -> optional largest-component clean-up -> the task's post steps and report
when the model carries out a task (autoseg/tasks; a report per case as <case>.report.json and
task_report.csv for the folder) -> written with the input's exact spacing, origin and direction.

Folders are predicted case by case; while case i+1 runs through the network, case i is restored
and written by one background thread (the network and the resampling/writing then overlap).
Every case is checked (headers, channel count, output ending) before the first output is written.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autoseg import io
from autoseg.atomic import sweep_stale_temporaries
from autoseg.ensembling import labels_from_probabilities, save_probabilities
from autoseg.errors import ConfigError
from autoseg.devices import PRECISION_NAMES, resolve_device, resolve_precision
from autoseg.inference.cascade import previous_stage_for
from autoseg.inference.ensemble import Ensemble, Member, load_models
from autoseg.inference.inputs import CaseInput, channel_count_message, check_case_headers, discover_cases, inputs_folder
from autoseg.inference.sliding_window import predict_slices, sliding_window_predict
from autoseg.malloc import reuse_freed_memory
from autoseg.inference.tiling import DEFAULT_MAX_GROWTH, choose_tile, patches_per_forward
from autoseg.postprocessing import keep_largest_component
from autoseg.preprocessing import preprocess_case, restore_original
from autoseg.progress import ProgressFactory, task
from autoseg.tasks import PredictedCase, finish_folder, finish_prediction, finishes_predictions
from autoseg.tasks.profile import collecting_case_outputs, raw_input
from autoseg.tasks import reports as task_reports
from autoseg.workdir import make_folder

log = logging.getLogger(__name__)

__all__ = ["Predictor", "predict", "load_models",
           "probabilities_path", "check_options"]

OUTPUT_FOLDER = "output folder (-o)"
# --continue leaves a temporary younger than this alone: another prediction may be writing it
SWEEP_MIN_AGE_S = 60.0


@dataclass
class Inferred:
    """Ensemble probabilities on the preprocessed grid, plus what is needed to restore them."""

    probabilities: np.ndarray  # (K, *resampled) float32
    properties: dict[str, Any]  # from preprocess_case
    image: np.ndarray | None = None  # the input, kept when the model's task finishes predictions with it
    extras: dict[str, Any] | None = None  # what the task's raw_input and case steps kept for post steps and report


def check_options(step_fraction: float = 0.5, max_tile_growth: float = DEFAULT_MAX_GROWTH, precision: str = "auto",
                  tile_batch_size: int | None = None) -> None:
    """The prediction options, checked in one place (the Predictor, and the API before loading models)."""
    if not 0 < step_fraction <= 1:
        raise ConfigError(f"step_fraction (--step) must be in (0, 1] (0.5 = tiles overlap by half), found {step_fraction}")
    if not (math.isfinite(max_tile_growth) and max_tile_growth >= 1):
        raise ConfigError(f"max_tile_growth (--max-tile-growth) must be a number >= 1 (1: patch-sized tiles; "
                          f"1.5: tiles up to 1.5x the patch), found {max_tile_growth}")
    if precision not in PRECISION_NAMES:
        raise ConfigError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISION_NAMES)}")
    if tile_batch_size is not None and tile_batch_size < 1:
        raise ConfigError(f"tile_batch_size must be at least 1 (or None for the default), found {tile_batch_size}")


def probabilities_path(output_path: Path) -> Path:
    """<case>.npz beside the label file <case><ending>."""
    ending = io.file_ending(output_path)
    return output_path.with_name(output_path.name[: len(output_path.name) - len(ending)] + ".npz")


class Predictor:
    """Runs an ensemble on arrays, files and folders. Options are fixed at construction.

    keep_largest: False, True (every foreground class) or the label values whose largest
    connected component alone is kept; applies to the label map, not to the probabilities.
    """

    def __init__(self, ensemble: Ensemble, device: str | torch.device = "auto", precision: str = "auto",
                 tta: bool = True, step_fraction: float = 0.5, tile_batch_size: int | None = None,
                 keep_largest: bool | Sequence[int] = False, max_tile_growth: float = DEFAULT_MAX_GROWTH,
                 slicewise: bool = False):
        check_options(step_fraction, max_tile_growth, precision, tile_batch_size)
        reuse_freed_memory()  # tiles' activations are reused instead of re-faulted for every forward
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, inference=True)
        self.ensemble = ensemble.to(self.device)
        # a cascade's second stage runs its first stage for extra input channels (inference/cascade.py)
        self.previous_stage = previous_stage_for(
            self.ensemble, lambda runs: Predictor(load_models(runs, self.device), self.device, precision, tta, step_fraction))
        self.tta, self.step_fraction, self.tile_batch_size = tta, step_fraction, tile_batch_size
        self.keep_largest = keep_largest
        self.max_tile_growth = max_tile_growth  # 1.0: always the training patch (nnU-Net's tiling)
        self.slicewise = slicewise  # a model trained on 2D images may predict 3D volumes slice by slice
        self.task = ensemble.config.task  # post steps and report after prediction, if any
        self._keep_inputs = finishes_predictions(self.task)
        self._raw_input = raw_input(self.task)  # the task's own input kind (e.g. 4D DWI), if any
        if slicewise and ensemble.image_ndim != 2:
            raise ConfigError(f"slicewise (--slicewise) applies to models trained on 2D images, but {self._model_name()} "
                              f"was trained on {ensemble.image_ndim}D images; leave it out")

    # ------------------------------------------------------------------ arrays
    def predict_array(self, image: np.ndarray, geometry: io.Geometry, case_id: str = "case") -> tuple[np.ndarray, np.ndarray]:
        """image (C, *spatial) -> (label (*spatial) uint8/int16, probabilities (K, *spatial) float32)."""
        label, probabilities, _ = self._finish_case(self.infer(image, geometry, case_id))
        return label, probabilities

    def infer(self, image: np.ndarray, geometry: io.Geometry, case_id: str = "case") -> Inferred:
        """The network part: preprocess, run every member, average their softmax probabilities."""
        self._check_image(image, geometry, case_id)
        with collecting_case_outputs() as kept:  # a case step's by-products (a body mask) for the post steps
            data, _, properties = preprocess_case(np.asarray(image, dtype=np.float32), geometry, None,
                                                  self.ensemble.config, case_id)
        if self.previous_stage is not None:
            data = self.previous_stage.add_channels(data, np.asarray(image, dtype=np.float32), geometry, properties)
        tensor = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        total: torch.Tensor | None = None
        for member in self.ensemble.members:
            probabilities = torch.softmax(self._member_logits(member, tensor), dim=0)
            total = probabilities if total is None else total.add_(probabilities)
        total /= len(self.ensemble.members)
        if not self._keep_inputs:
            return Inferred(total.numpy(), properties)
        return Inferred(total.numpy(), properties, image, dict(kept) or None)

    def finish(self, inferred: Inferred) -> tuple[np.ndarray, np.ndarray]:
        """The CPU part: restore to the original grid, then argmax and post-processing."""
        probabilities = restore_original(inferred.probabilities, inferred.properties, self.ensemble.config)
        return self._labels(probabilities), probabilities

    def _finish_case(self, inferred) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """`finish`, then the task's post steps and report (None without a task that writes one)."""
        label, probabilities = self.finish(inferred)
        if getattr(inferred, "image", None) is None:
            return label, probabilities, None
        properties = inferred.properties
        case = PredictedCase(properties["case_id"], inferred.image, io.Geometry.from_dict(properties["original_geometry"]),
                             label, dict(self.ensemble.labels), extras=getattr(inferred, "extras", None) or {})
        label, report = finish_prediction(self.task, case)
        return label, probabilities, report

    def _member_logits(self, member: Member, data: torch.Tensor) -> torch.Tensor:
        config = member.config
        options: dict[str, Any] = {"step_fraction": self.step_fraction, "device": self.device,
                                   "precision": self.precision,
                                   "mirror_axes": tuple(config.mirror_axes) if self.tta else ()}
        if self.tile_batch_size is not None:
            options["tile_batch_size"] = self.tile_batch_size
        spatial = data.shape[1:] if config.network.ndim == data.ndim - 1 else data.shape[2:]
        tile = choose_tile(config.network, config.patch_size, spatial, self.device, self.max_tile_growth, self.step_fraction)
        options["max_patches_per_forward"] = patches_per_forward(config.network, (1, *tile)[-config.network.ndim:], self.device)
        args = (member.model, data, tile, config.network.num_classes)
        if config.network.ndim == data.ndim - 1:
            return sliding_window_predict(*args, **options)
        return predict_slices(*args, **options)  # a 2D network on a 3D volume, slice by slice

    def _labels(self, probabilities: np.ndarray) -> np.ndarray:
        label = labels_from_probabilities(probabilities, self.ensemble.label_values)
        if self.keep_largest is False:
            return label
        classes = None if self.keep_largest is True else list(self.keep_largest)
        return keep_largest_component(label, classes)

    def _check_image(self, image: np.ndarray, geometry: io.Geometry, case_id: str) -> None:
        expected = self.ensemble.in_channels
        if image.ndim != geometry.ndim + 1:
            raise ConfigError(f"case '{case_id}': image of shape {image.shape} does not match its {geometry.ndim}D "
                              "geometry; expected (channels, *spatial)")
        if image.shape[0] != expected:
            raise ConfigError(f"case '{case_id}': the model expects {expected} input channel(s), found "
                              f"{image.shape[0]} (image shape {image.shape}, channels first)")
        self._check_dimensions(geometry.ndim, f"case '{case_id}'")

    def _check_dimensions(self, ndim: int, what: str) -> None:
        """Images of the dimensionality the model was trained on (a 2d configuration of 3D data was
        trained on 3D images); with slicewise, a model trained on 2D images also takes 3D volumes."""
        trained = self.ensemble.image_ndim
        if ndim == trained or (self.slicewise and (trained, ndim) == (2, 3)):
            return
        hint = ", or pass slicewise=True (--slicewise) to predict it slice by slice" if (trained, ndim) == (2, 3) else ""
        channels = ", ".join(self.ensemble.channel_names) or f"{self.ensemble.in_channels} channel(s)"
        raise ConfigError(f"{what}: is a {ndim}D image, but {self._model_name()} was trained on {trained}D images "
                          f"({channels}); use a model trained on {ndim}D images{hint}")

    def _model_name(self) -> str:
        first = self.ensemble.members[0]
        return f"the model '{first.config.name}' of {self.ensemble.dataset_name or 'its dataset'} ({first.source})"

    # ------------------------------------------------------------------ files
    def predict_file(self, inputs: Sequence[str | Path] | str | Path, output_path: str | Path,
                     save_probabilities: bool = False) -> Path:
        """Predict one case (one file per channel, or one colour/4D file) and write its label map."""
        files = tuple(Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs))
        output_path = Path(output_path)
        _refuse_overwriting(files, [output_path, probabilities_path(output_path)] if save_probabilities else [output_path])
        ending = io.file_ending(output_path)
        case = CaseInput(output_path.name[: len(output_path.name) - len(ending)], files, ending)
        self._check_case(case, output_path)
        image, geometry, extras = self._read_input(case)
        return self._write(self._infer_with(extras, image, geometry, case.case_id), geometry, output_path,
                           save_probabilities)

    def _check_case(self, case: CaseInput, output_path: Path) -> None:
        """Everything checkable from headers: readable, channel count, an ending that can hold the result."""
        shape = (self._raw_input[0].check(case.files, self._raw_input[1]) if self._is_raw_input(case)
                 else check_case_headers(case, self.ensemble.in_channels))
        if shape is not None:  # a DICOM series is checked once read (_check_image)
            self._check_dimensions(len(shape), f"case '{case.case_id}' ({', '.join(str(f) for f in case.files)})")
        ending = io.file_ending(output_path)
        if ending not in io.IMAGE_ENDINGS:
            raise ConfigError(f"{output_path}: unsupported output ending '{ending}'; use one of {', '.join(io.IMAGE_ENDINGS)}")
        if shape is not None and ending in io.PLAIN_2D_ENDINGS and len(shape) != 2:
            raise ConfigError(f"{output_path}: {ending} holds 2D images only but case '{case.case_id}' is "
                              f"{len(shape)}D; use .nii.gz")

    def _is_raw_input(self, case: CaseInput) -> bool:
        return self._raw_input is not None and self._raw_input[0].recognizes(case.files)

    def _read_input(self, case: CaseInput) -> tuple[np.ndarray, io.Geometry, dict[str, Any] | None]:
        """The case's channels, read by the task when it is the task's own input kind (with its extras)."""
        if not self._is_raw_input(case):
            return (*self._read_case(case), None)
        raw = self._raw_input[0].read(case.files, self._raw_input[1])
        return raw.image, raw.geometry, raw.extras

    def _infer_with(self, extras: dict[str, Any] | None, *args) -> Inferred:
        inferred = self.infer(*args)
        if extras is not None and self._keep_inputs:
            inferred.extras = {**(inferred.extras or {}), **extras}  # a bundle's combined result takes the attribute as well
        return inferred

    def _read_case(self, case: CaseInput) -> tuple[np.ndarray, io.Geometry]:
        """All channels as (C, *spatial), with the first channel's geometry."""
        arrays, geometries = zip(*(io.read_image(path) for path in case.files))
        if len({a.shape[1:] for a in arrays}) > 1:
            shapes = ", ".join(f"{p.name} {a.shape[1:]}" for p, a in zip(case.files, arrays))
            raise ConfigError(f"case '{case.case_id}': channel files have different shapes ({shapes}); "
                              "all channels of a case must share one grid")
        image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        if image.shape[0] != self.ensemble.in_channels:
            raise ConfigError(channel_count_message(case.case_id, case.files, self.ensemble.in_channels, image.shape[0]))
        return image, geometries[0]

    def _write(self, inferred: Inferred, geometry: io.Geometry, output_path: Path, save_probabilities: bool) -> Path:
        """Restore and write one case; the label map goes last, so its presence means the case is done."""
        label, probabilities, report = self._finish_case(inferred)
        if save_probabilities:
            self._write_probabilities(probabilities_path(output_path), probabilities)
        if report is not None:
            task_reports.write_case_report(output_path, report)
        io.write_image(output_path, label, geometry)
        log.info("wrote %s", output_path)
        return output_path

    def _write_probabilities(self, path: Path, probabilities: np.ndarray) -> None:
        save_probabilities(path, probabilities, self.ensemble.label_values, self.ensemble.label_names)

    # ------------------------------------------------------------------ folders
    def predict_folder(self, input_dir_or_files: str | Path | Sequence[str | Path], output_dir: str | Path,
                       save_probabilities: bool = False, skip_existing: bool = False,
                       progress: ProgressFactory | None = None, output_ending: str | None = None) -> list[Path]:
        """Predict every case of a folder (nnU-Net naming, plain files, DICOM series) or a file list.

        Writes output_dir/<case><ending> (the input's ending unless `output_ending`; DICOM gives
        .nii.gz). skip_existing: leave cases whose output exists (and remove temporaries an
        interrupted run left there). Returns the paths written.
        """
        output_dir = Path(output_dir)
        cases = self._task_case_ids(discover_cases(input_dir_or_files))
        _refuse_input_folder(input_dir_or_files, cases, output_dir)
        make_folder(output_dir, OUTPUT_FOLDER)
        if skip_existing:
            sweep_stale_temporaries(output_dir, min_age_s=SWEEP_MIN_AGE_S)
        targets = {c.case_id: output_dir / c.output_name(output_ending) for c in cases}
        todo = [c for c in cases if not (skip_existing and _done(targets[c.case_id], save_probabilities))]
        if len(todo) < len(cases):
            log.info("skipping %d case(s) whose output exists in %s", len(cases) - len(todo), output_dir)
        for case in todo:  # fail before writing anything
            self._check_case(case, targets[case.case_id])
        advance = task(progress, "Predicting", len(cases))
        advance(len(cases) - len(todo))
        written = self._run_cases(todo, targets, save_probabilities, advance)
        if self._keep_inputs:
            summary = task_reports.write_summary(output_dir, [targets[c.case_id] for c in cases])
            log.info("task reports of %s: %s", self.task.name, summary)
        for path in finish_folder(self.task, inputs_folder(input_dir_or_files, cases), output_dir, dict(self.ensemble.labels)):
            log.info("task report of %s: %s", self.task.name, path)
        return written

    def _task_case_ids(self, cases: list[CaseInput]) -> list[CaseInput]:
        """Cases of the task's own input kind, renamed as the task names them (e.g. 'x_dwi' -> 'x')."""
        rename = self._raw_input[0].case_id if self._raw_input is not None else None
        if rename is None:
            return cases
        return [replace(c, case_id=rename(c.case_id)) if self._is_raw_input(c) else c for c in cases]

    def _run_cases(self, cases: list[CaseInput], targets: dict[str, Path], save_probabilities: bool, advance) -> list[Path]:
        written: list[Path] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoseg-writer") as writer:
            pending: Future | None = None
            for case in cases:
                image, geometry, extras = self._read_input(case)
                inferred = self._infer_with(extras, image, geometry, case.case_id)
                del image  # the writer needs only the geometry
                if pending is not None:
                    written.append(pending.result())  # a writer error surfaces here
                    advance(1)
                pending = writer.submit(self._write, inferred, geometry, targets[case.case_id], save_probabilities)
            if pending is not None:
                written.append(pending.result())
                advance(1)
        return written


def _done(output_path: Path, save_probabilities: bool) -> bool:
    return output_path.is_file() and (not save_probabilities or probabilities_path(output_path).is_file())


def _refuse_overwriting(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    sources = {p.resolve() for p in inputs}
    for output in outputs:
        if output.resolve() in sources:
            raise ConfigError(f"{output}: is one of the input files; predictions never overwrite inputs; "
                              "choose another output path")


def _refuse_input_folder(source: str | Path | Sequence[str | Path], cases: list[CaseInput], output_dir: Path) -> None:
    """Outputs never go into a folder holding inputs: a case's output could replace an input file."""
    out = output_dir.resolve()
    forbidden = set().union(*(c.input_folders for c in cases))
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        forbidden.add(Path(source).resolve())
    dicom_folders = [f.resolve() for c in cases for f in c.files if f.is_dir()]
    if out in forbidden or any(out.is_relative_to(d) for d in dicom_folders):
        raise ConfigError(f"{output_dir}: this folder holds input images; predictions are never written next to "
                          "their inputs (they could overwrite them); choose another output folder")


# ---------------------------------------------------------------------- in-memory API
def predict(image: Any, models: Predictor | Ensemble | str | Path | Sequence[str | Path],
            spacing: Sequence[float] | None = None, **options: Any) -> Any:
    """Predict one image in memory.

    image: a numpy array (*spatial) or (C, *spatial) with `spacing` in numpy order (a 2D
    single-channel array may omit it: 1.0 per pixel, as for PNGs) -> a numpy label array; or a
    SimpleITK image -> a SimpleITK label image with the same geometry. models: run folders or
    checkpoints (loaded on each call), an Ensemble, or a Predictor. options: Predictor's.
    """
    predictor = _as_predictor(models, options)
    if hasattr(image, "GetSpacing"):
        if spacing is not None:
            raise ConfigError("spacing was given for a SimpleITK image, which carries its own; leave spacing out")
        array, geometry = io.array_from_sitk(image)
        return io.sitk_from_array(predictor.predict_array(array, geometry)[0], geometry)
    array, geometry = _array_and_geometry(np.asarray(image), spacing)
    return predictor.predict_array(array, geometry)[0]


def _as_predictor(models: Any, options: dict[str, Any]) -> Predictor:
    if isinstance(models, Predictor):
        if options:
            raise ConfigError(f"options {sorted(options)} cannot change an existing Predictor; pass them when creating it")
        return models
    ensemble = models if isinstance(models, Ensemble) else load_models(models, options.get("device", "auto"))
    return Predictor(ensemble, **options)


def _array_and_geometry(array: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, io.Geometry]:
    if spacing is None:
        if array.ndim != 2:
            raise ConfigError(f"an array of shape {array.shape} needs spacing (numpy order) to say which axes are "
                              "spatial: spacing=(sz, sy, sx) for a volume, (sy, sx) for a 2D image with channels")
        spacing = (1.0, 1.0)
    ndim = len(spacing)
    if array.ndim not in (ndim, ndim + 1) or ndim not in (2, 3):
        raise ConfigError(f"an array of shape {array.shape} does not fit spacing {tuple(spacing)}; expected "
                          f"(*spatial) or (channels, *spatial) with {ndim} spatial axes")
    if any(float(s) <= 0 for s in spacing):
        raise ConfigError(f"spacing must be positive, found {tuple(spacing)}")
    image = array[None] if array.ndim == ndim else array
    return image, io.Geometry.default(ndim, tuple(float(s) for s in spacing))
