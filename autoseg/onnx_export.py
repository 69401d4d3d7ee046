"""Export one trained network to ONNX, checked against PyTorch with onnxruntime.

The ONNX graph takes `image` (batch, channels, *patch_size) float32 and returns `logits`
(batch, classes, *patch_size). The batch axis is dynamic; the spatial axes are fixed to the plan's
patch size (the traced input-size checks of the network become constants), so callers tile larger
images into patches, exactly as autoseg's sliding window does. Preprocessing is not part of the
graph: the configuration plan, labels and channel names ride along as JSON in the model's
metadata (keys `autoseg.config_plan`, `autoseg.labels`, `autoseg.channel_names`,
`autoseg.dataset_name`, `autoseg.image_ndim`), so a consumer can normalize and resample as in
training. The checkpoint is read as data only and checked (checksums, finite weights) first.

Uses the TorchScript exporter (`dynamo=False`): it needs only the `onnx` package, while the
torch.export-based exporter would also need `onnxscript`. Requires the `onnx` extra
(`pip install autoseg[onnx]`: onnx, onnxruntime).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.atomic import atomic_write
from autoseg.errors import CheckpointError, ConfigError
from autoseg.inference.bundle import BUNDLE_FILE, load_bundle
from autoseg.inference.ensemble import load_member

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3  # max |onnxruntime - PyTorch| over all logits of a random input
INPUT_NAME, OUTPUT_NAME = "image", "logits"
CHECK_BATCH = 2  # the check runs a batch of 2, so the dynamic batch axis is exercised too


def export_onnx(run_or_checkpoint: str | Path, out_onnx: str | Path, opset: int = DEFAULT_OPSET, check: bool = True,
                tolerance: float = DEFAULT_TOLERANCE, overwrite: bool = False) -> dict[str, Any]:
    """Write one run's network (final, else best, else latest checkpoint; or a .pt file) as ONNX.

    With check, onnxruntime (CPUExecutionProvider) and PyTorch run the same random input of
    batch 2; if their logits differ by more than `tolerance` (default 1e-3, absolute) anywhere,
    CheckpointError is raised and no file is written. The file appears atomically; an existing
    one is replaced only with overwrite=True.
    Returns {"path", "max_abs_diff" (None without check), "input_shape" (batch 1), "opset"}.
    """
    source, out_onnx = Path(run_or_checkpoint), Path(out_onnx)
    _check_options(source, out_onnx, tolerance, overwrite, check)
    member, payload = load_member(source, torch.device("cpu"))
    model = member.model
    input_shape = (1, member.config.network.in_channels, *member.config.patch_size)
    with atomic_write(out_onnx, suffix=".onnx") as tmp:
        _export(model, input_shape, tmp, opset, member.source)
        _add_metadata(tmp, payload)
        max_abs_diff = _compare(model, tmp, input_shape, tolerance, member.source) if check else None
    checked = "not checked" if max_abs_diff is None else f"max |ONNX - PyTorch| {max_abs_diff:.2e}"
    log.info("exported %s to %s (opset %d, %s)", member.source, out_onnx, opset, checked)
    return {"path": str(out_onnx), "max_abs_diff": max_abs_diff, "input_shape": list(input_shape), "opset": opset}


def _check_options(source: Path, out_onnx: Path, tolerance: float, overwrite: bool, check: bool) -> None:
    """Fail on user mistakes before loading anything."""
    missing = [m for m in ("onnx",) + (("onnxruntime",) if check else ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export needs the package(s) {', '.join(missing)}, which are not installed; "
                          "install them with `pip install autoseg[onnx]`")
    if source.is_dir() and (source / BUNDLE_FILE).is_file():
        raise ConfigError(f"{source}: is a model bundle; an ONNX file holds one network, so pass one of its "
                          f"checkpoints ({_bundle_checkpoints(source)}) or a run folder")
    if out_onnx.suffix != ".onnx":
        raise ConfigError(f"{out_onnx}: expected a path ending in .onnx, found '{out_onnx.suffix or 'no ending'}'")
    if out_onnx.exists() and not overwrite:
        raise ConfigError(f"{out_onnx}: already exists; pass overwrite=True (--overwrite) to replace it, or choose another path")
    if not tolerance > 0:
        raise ConfigError(f"tolerance must be a positive number (max absolute logit difference), found {tolerance}")


def _bundle_checkpoints(folder: Path) -> str:
    try:
        bundle, base = load_bundle(folder)
    except CheckpointError:
        return f"see its {BUNDLE_FILE}"
    return ", ".join(str(base / c) for member in bundle.members for c in member.checkpoints)


def _export(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int, source: Path) -> None:
    dummy = torch.zeros(input_shape)
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with warnings.catch_warnings():
            # the legacy-exporter deprecation notice and tracer notes about the (constant) shape checks
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(path), opset_version=opset, dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic)
    except Exception as exc:  # the exporter raises many types for unsupported operators or opsets
        raise CheckpointError(f"{source}: ONNX export with opset {opset} failed ({type(exc).__name__}: {exc}); "
                              f"try another opset (e.g. --opset {DEFAULT_OPSET})") from None


def _add_metadata(path: Path, payload: dict[str, Any]) -> None:
    """What a consumer needs to preprocess inputs and read outputs, as JSON strings."""
    import onnx

    model = onnx.load(str(path))
    entries = {"autoseg.config_plan": payload["config_plan"], "autoseg.labels": payload["labels"],
               "autoseg.channel_names": list(payload.get("channel_names", ())),
               "autoseg.dataset_name": payload.get("dataset_name", ""), "autoseg.image_ndim": payload["image_ndim"]}
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    onnx.save(model, str(path))


def _compare(model: torch.nn.Module, path: Path, input_shape: tuple[int, ...], tolerance: float, source: Path) -> float:
    """Max |onnxruntime - PyTorch| on a random input; raises above tolerance."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((CHECK_BATCH, *input_shape[1:]), generator=generator)
    with torch.no_grad():
        expected = model(image).numpy()
    found = _onnx_logits(path, image.numpy())
    if found.shape != expected.shape:
        raise CheckpointError(f"{source}: the ONNX model returns shape {found.shape}, PyTorch {expected.shape}; "
                              "the export is wrong, try another opset")
    max_abs_diff = float(np.abs(found - expected).max())
    if max_abs_diff > tolerance:
        raise CheckpointError(f"{source}: ONNX logits differ from PyTorch's by up to {max_abs_diff:.3g} "
                              f"(tolerance {tolerance:g}); nothing was written. Try another opset, or raise the "
                              "tolerance if the difference is acceptable")
    return max_abs_diff


def _onnx_logits(path: Path, image: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: image})[0]
