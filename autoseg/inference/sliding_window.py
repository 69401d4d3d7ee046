"""Sliding-window inference: predict a whole image with a model trained on patches.

The image is covered by overlapping patch-sized tiles. Each tile's logits are weighted by a
gaussian importance map (centre counts more than border) and summed; the result is the
weighted average of the logits over all tiles covering a voxel, and over mirrored copies when
test-time mirroring is on. Softmax/argmax is the caller's business.

Everything here is a pure function of (model, image, settings): no files, no global state
beyond the cached gaussian map. The model must already be on `device` and in eval mode.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import numbers
from typing import Callable, ContextManager, Sequence

import torch

from autoseg.errors import ConfigError
from autoseg.inference.gaussian import gaussian_importance
from autoseg.networks.layout import runs_channels_last, to_channels_last

logger = logging.getLogger(__name__)

Model = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]
Progress = Callable[[int, int], None]  # (tiles done, tiles total)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TILE_BATCH = 4


def tile_starts(
    image_size: Sequence[int], patch_size: Sequence[int], step_fraction: float = 0.5
) -> list[list[int]]:
    """Per axis, the start index of every tile.

    Tiles are at most `step_fraction * patch` apart (and at least 1 voxel), evenly spread, the
    first at 0 and the last flush with the end, so every voxel is covered. An axis shorter
    than the patch gets a single tile at 0: the caller pads it to the patch size first.
    """
    _check_sizes(image_size, patch_size)
    _check_step(step_fraction)
    return [_axis_starts(int(s), int(p), step_fraction) for s, p in zip(image_size, patch_size)]


def _axis_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    span = size - patch
    if span <= 0:
        return [0]
    n_steps = math.ceil(span / max(1.0, patch * step_fraction))
    # Integer arithmetic for round(i * span / n_steps), so the last start is exactly `span`.
    return [(2 * i * span + n_steps) // (2 * n_steps) for i in range(n_steps + 1)]


def _check_sizes(image_size: Sequence[int], patch_size: Sequence[int]) -> None:
    if len(image_size) != len(patch_size) or not patch_size:
        raise ConfigError(
            f"Sliding window: patch_size {list(patch_size)} must have one entry per spatial axis of "
            f"the image (spatial shape {list(image_size)}). Use a patch size from the plan of the "
            "same dimensionality (2D plans with predict_slices for 3D volumes)."
        )
    if any(int(p) < 1 for p in patch_size) or any(int(s) < 1 for s in image_size):
        raise ConfigError(
            f"Sliding window: image size {list(image_size)} and patch_size {list(patch_size)} must "
            "be positive integers."
        )


def _check_step(step_fraction: float) -> None:
    if not 0 < step_fraction <= 1:
        raise ConfigError(
            f"Sliding window: step_fraction must be in (0, 1] (fraction of the patch between tile "
            f"starts; 0.5 = half-overlapping tiles), got {step_fraction}."
        )


@torch.inference_mode()
def sliding_window_predict(
    model: Model,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    tile_batch_size: int = DEFAULT_TILE_BATCH,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Progress | None = None,
    max_patches_per_forward: int | None = None,
) -> torch.Tensor:
    """Predict logits (num_classes, *spatial), float32 on CPU, for image (C, *spatial).

    The logits are averaged over the tiles covering each voxel with gaussian weights, and over
    the 2**len(mirror_axes) mirror combinations of `mirror_axes` (spatial axes, 0-based).
    Axes shorter than the patch are zero-padded symmetrically and cropped back. One forward
    call sees `tile_batch_size * 2**len(mirror_axes)` patches; on CUDA out-of-memory that batch
    is split, and never exceeds `max_patches_per_forward` (a memory bound; on the CPU running out
    of memory is fatal). `precision` "bf16"/"fp16" enables autocast on CUDA (and "bf16" on CPU).
    """
    logit_sum, weight_sum = sliding_window_accumulate(
        model, image, patch_size, num_classes, step_fraction, tile_batch_size, mirror_axes, device, precision,
        progress, max_patches_per_forward,
    )
    return logit_sum.div_(weight_sum)  # broadcasts over the class axis


@torch.inference_mode()
def sliding_window_accumulate(
    model: Model,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    tile_batch_size: int = DEFAULT_TILE_BATCH,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Progress | None = None,
    max_patches_per_forward: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `sliding_window_predict` but return the raw sums, both float32 on CPU.

    Returns (weighted logit sum (num_classes, *spatial), weight sum (*spatial)); their ratio
    is the prediction. Useful to combine several models with one division, and to inspect
    the tile coverage (the weight sum is > 0 wherever a tile reached).
    """
    logit_sum, weight_sum, crop = _accumulate(
        model, image, patch_size, num_classes, step_fraction,
        tile_batch_size, mirror_axes, torch.device(device), precision, progress, max_patches_per_forward,
    )
    return logit_sum[(slice(None), *crop)].to("cpu").contiguous(), weight_sum[crop].to("cpu").contiguous()


def _accumulate(
    model: Model,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float,
    tile_batch_size: int,
    mirror_axes: Sequence[int],
    device: torch.device,
    precision: str,
    progress: Progress | None,
    max_patches_per_forward: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[slice, ...]]:
    """Weighted logit and weight sums over the padded image, plus the crop back to the input."""
    _check_inputs(image, patch_size, num_classes, tile_batch_size, mirror_axes, precision)
    _warn_if_training(model)
    patch = tuple(int(p) for p in patch_size)
    placed, crop = _place_image(image, patch, device)
    padded_size = tuple(placed.shape[1:])
    logit_sum, weight_sum = _allocate_accumulators(num_classes, padded_size, device)
    importance = gaussian_importance(patch, device=logit_sum.device)
    forward = _TileForward(model, num_classes, mirror_axes, _autocast(device, precision), channels_last=runs_channels_last(device))
    forward.max_batch = max_patches_per_forward
    tiles = _tile_slices(padded_size, patch, step_fraction)
    for first in range(0, len(tiles), tile_batch_size):
        batch_slices = tiles[first:first + tile_batch_size]
        batch = torch.stack([placed[(slice(None), *s)] for s in batch_slices]).to(device)
        weighted = forward(batch).to(logit_sum.device)  # (B, K, *patch), a fresh tensor
        weighted *= importance
        for tile_slices, tile_logits in zip(batch_slices, weighted):
            logit_sum[(slice(None), *tile_slices)] += tile_logits
            weight_sum[tile_slices] += importance
        if progress is not None:
            progress(first + len(batch_slices), len(tiles))
    return logit_sum, weight_sum, crop


def _check_inputs(
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    tile_batch_size: int,
    mirror_axes: Sequence[int],
    precision: str,
) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != len(patch_size) + 1:
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConfigError(
            f"Sliding window: expected a channel-first image tensor (C, *spatial) with "
            f"{len(patch_size)} spatial axes to match patch_size {list(patch_size)}, got {found}. "
            "Add the channel axis (image[None]) if it is missing."
        )
    _check_sizes(image.shape[1:], patch_size)
    if num_classes < 1 or tile_batch_size < 1:
        raise ConfigError(
            f"Sliding window: num_classes ({num_classes}) and tile_batch_size ({tile_batch_size}) "
            "must be at least 1."
        )
    if precision not in PRECISIONS:
        raise ConfigError(f"Sliding window: precision must be one of {list(PRECISIONS)}, got '{precision}'.")
    _check_mirror_axes(mirror_axes, len(patch_size))


def _check_mirror_axes(mirror_axes: Sequence[int], n_spatial: int) -> None:
    valid = all(isinstance(a, numbers.Integral) and 0 <= a < n_spatial for a in mirror_axes)
    if not valid or len(set(mirror_axes)) != len(mirror_axes):
        raise ConfigError(
            f"Sliding window: mirror_axes must be distinct spatial axes in 0..{n_spatial - 1} "
            f"(batch and channel axes excluded), got {list(mirror_axes)}."
        )


def _warn_if_training(model: Model) -> None:
    if isinstance(model, torch.nn.Module) and model.training:
        logger.warning("Sliding window: the model is in training mode; call model.eval() first "
                       "(dropout and batch-norm statistics change predictions).")


def _tile_slices(size: Sequence[int], patch: Sequence[int], step_fraction: float) -> list[tuple[slice, ...]]:
    per_axis = tile_starts(size, patch, step_fraction)
    return [
        tuple(slice(start, start + p) for start, p in zip(starts, patch))
        for starts in itertools.product(*per_axis)
    ]


def _place_image(
    image: torch.Tensor, patch: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad axes shorter than the patch and move the image to `device` once (CPU if it won't fit)."""
    size = tuple(image.shape[1:])
    padded_size = tuple(max(s, p) for s, p in zip(size, patch))
    crop = tuple(slice((ps - s) // 2, (ps - s) // 2 + s) for s, ps in zip(size, padded_size))
    try:
        return _padded_copy(image, padded_size, crop, device), crop
    except RuntimeError as err:
        if device.type == "cpu" or not _is_out_of_memory(err):
            raise
    _release_cached_memory()
    logger.warning("Sliding window: the image does not fit on %s; keeping it on the CPU and "
                   "moving one tile batch at a time.", device)
    return _padded_copy(image, padded_size, crop, torch.device("cpu")), crop


def _padded_copy(
    image: torch.Tensor, padded_size: tuple[int, ...], crop: tuple[slice, ...], device: torch.device
) -> torch.Tensor:
    if tuple(image.shape[1:]) == padded_size:
        return image.to(device=device, dtype=torch.float32)  # no copy when already there
    padded = torch.zeros((image.shape[0], *padded_size), dtype=torch.float32, device=device)
    padded[(slice(None), *crop)] = image
    return padded


def _allocate_accumulators(
    num_classes: int, size: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed (num_classes, *size) logit and (*size) weight buffers; on the CPU if `device` is full."""
    try:
        return _zeros((num_classes, *size), device), _zeros(size, device)
    except RuntimeError as err:
        if device.type == "cpu" or not _is_out_of_memory(err):
            raise
    _release_cached_memory()
    logger.warning("Sliding window: accumulation buffers do not fit on %s; accumulating on the "
                   "CPU while the model keeps running on %s.", device, device)
    cpu = torch.device("cpu")
    return _zeros((num_classes, *size), cpu), _zeros(size, cpu)


def _zeros(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float32, device=device)


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _release_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _autocast(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """Factory of the autocast context: one code path, simply disabled where it does not apply."""
    dtype = PRECISIONS[precision]
    enabled = dtype is not None and (device.type == "cuda" or (device.type == "cpu" and precision == "bf16"))
    if dtype is not None and not enabled:
        logger.info("Sliding window: %s autocast is not used on %s; running in fp32.", precision, device)
    if device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=enabled)


class _TileForward:
    """Model call on a tile batch (B, C, *patch) -> float32 logits (B, K, *patch), with mirroring.

    All mirror combinations go through the model in one forward call (concatenated along the
    batch axis). On CUDA out-of-memory the call is split in halves, and the smaller size is
    remembered for the following batches. `channels_last` feeds the model channels-last tiles
    (faster on CPU: networks/layout.py).
    """

    def __init__(self, model: Model, num_classes: int, mirror_axes: Sequence[int],
                 autocast: Callable[[], ContextManager], channels_last: bool = False):
        self.model = model
        self.num_classes = num_classes
        self.autocast = autocast
        self.channels_last = channels_last
        # Tensor dims to flip, per combination; the first one () is the unmirrored input.
        axes = [int(a) + 2 for a in mirror_axes]
        self.flips = [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]
        self.max_batch: int | None = None

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        mirrored = torch.cat([_flip(tiles, dims) for dims in self.flips]) if len(self.flips) > 1 else tiles
        logits = self._run_in_chunks(mirrored)
        per_flip = logits.split(tiles.shape[0])
        mean = per_flip[0]  # unmirrored; summed into in place (a fresh tensor we own)
        for dims, flipped in zip(self.flips[1:], per_flip[1:]):
            mean += _flip(flipped, dims)  # flip back to the original orientation
        if len(self.flips) > 1:
            mean /= len(self.flips)
        return mean

    def _run_in_chunks(self, batch: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        done = 0
        while done < len(batch):
            chunk = batch[done:done + (self.max_batch or len(batch))]
            try:
                outputs.append(self._run_model(chunk))
                done += len(chunk)
                continue
            except RuntimeError as err:
                if not _is_out_of_memory(err) or len(chunk) == 1:
                    raise
            # Outside the except block, so the failed call's tensors are already released.
            self.max_batch = len(chunk) // 2
            _release_cached_memory()
            logger.warning("Sliding window: out of memory with %d patches per forward; retrying "
                           "with %d.", len(chunk), self.max_batch)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_model(self, chunk: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            output = self.model(to_channels_last(chunk) if self.channels_last else chunk)
        if isinstance(output, (list, tuple)):  # deep supervision: full resolution comes first
            output = output[0]
        expected = (chunk.shape[0], self.num_classes, *chunk.shape[2:])
        if tuple(output.shape) != expected:
            raise ConfigError(
                f"Sliding window: the model returned shape {tuple(output.shape)} for input "
                f"{tuple(chunk.shape)}; expected {expected} (batch, num_classes, *patch). Check "
                "num_classes against the plan's labels and that the patch size suits the network."
            )
        return output.to(torch.float32, memory_format=torch.contiguous_format)  # callers add into it in place


def _flip(tensor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(tensor, dims) if dims else tensor


@torch.inference_mode()
def predict_slices(
    model2d: Model,
    image3d: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    tile_batch_size: int = 16,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: Progress | None = None,
    max_patches_per_forward: int | None = None,
) -> torch.Tensor:
    """Predict a 3D volume (C, z, y, x) with a 2D model, slice by slice along axis 0.

    `patch_size` and `mirror_axes` refer to the 2D (y, x) slice. Runs as a 3D sliding window
    with a (1, py, px) patch, so tiles from several slices share one forward call. Returns
    logits (num_classes, z, y, x), float32 on CPU.
    """
    if not isinstance(image3d, torch.Tensor) or image3d.ndim != 4 or len(patch_size) != 2:
        found = tuple(image3d.shape) if isinstance(image3d, torch.Tensor) else type(image3d).__name__
        raise ConfigError(
            f"predict_slices: expected a channel-first volume (C, z, y, x) and a 2D patch_size, got "
            f"image {found} and patch_size {list(patch_size)}. Use sliding_window_predict for 2D images."
        )
    _check_mirror_axes(mirror_axes, 2)

    def model_on_slabs(tiles: torch.Tensor) -> torch.Tensor:  # (B, C, 1, py, px)
        output = model2d(tiles[:, :, 0])
        if isinstance(output, (list, tuple)):
            output = output[0]
        return output.unsqueeze(2)

    _warn_if_training(model2d)
    return sliding_window_predict(
        model_on_slabs, image3d, (1, *patch_size), num_classes, step_fraction,
        tile_batch_size, [int(a) + 1 for a in mirror_axes], device, precision, progress, max_patches_per_forward,
    )
