"""Random training patches from preprocessed cases, with foreground oversampling.

A batch is drawn in two steps: `choose_patch_start` decides where a patch lies (the only random
step), `read_box` cuts it out of a memory-mapped case (pure, pads with 0 outside the case), so only
the patch is read from disk. The last `B - round(B * (1 - p))` samples of a batch are forced to
contain a voxel of a foreground class (chosen uniformly among the classes present in the case).

A 2D network on 3D cases (2D patch size, 3D case) samples axial slices (axis 0): a random slice, or
for a forced-foreground sample the slice through the chosen foreground voxel. With
`foreground_slice_share` s, a randomly placed sample comes with probability s from a slice that
holds foreground (any class; a task option, e.g. slices with bone) and otherwise from any slice.

With `raw_intensities` (a plan that normalizes in the loader) the cases hold raw intensities: a
batch then also carries each sample's recorded normalization and spacing (the loader's first
transforms need them), and the box outside a case is filled with the raw value that normalizes
to 0, as the zero padding of normalized cases does.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import ConfigError, PreprocessingError
from autoseg.normalization import ChannelNormalization
from autoseg.preprocessing import load_case, load_class_locations

logger = logging.getLogger(__name__)

_REPREPROCESS = "re-run `autoseg preprocess` for this configuration"


# ---------------------------------------------------------------- pure helpers (no randomness)
def patch_start_range(case_shape: Sequence[int], patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """Inclusive (low, high) start per axis so the patch lies inside the case, or, where the case is
    smaller than the patch, so the whole case lies inside the patch."""
    return [(min(0, n - p), max(0, n - p)) for n, p in zip(case_shape, patch_size)]


def read_box(array: np.ndarray, start: Sequence[int], size: Sequence[int], dtype: type,
             fill: Sequence[float] | None = None) -> np.ndarray:
    """The box [start, start + size) over the spatial axes of channel-first `array`, 0 (or per
    channel `fill`) outside it. Only the overlap is indexed, so a memory-mapped `array` reads just
    the patch from disk.
    """
    out = np.zeros((array.shape[0], *size), dtype=dtype)
    if fill is not None:
        out[...] = np.asarray(fill, dtype=dtype).reshape((-1,) + (1,) * len(size))
    source, target = [slice(None)], [slice(None)]
    for lo, n, extent in zip(start, size, array.shape[1:]):
        a, b = max(lo, 0), min(lo + n, extent)
        if b <= a:  # no overlap at all: the box lies entirely outside the case
            return out
        source.append(slice(a, b))
        target.append(slice(a - lo, b - lo))
    out[tuple(target)] = array[tuple(source)]
    return out


def forced_foreground_flags(batch_size: int, oversample_foreground: float, rng: np.random.Generator) -> list[bool]:
    """Which samples of a batch must contain foreground: the last B - round(B * (1 - p)).

    With B == 1 that count would always round to 0 for p < 0.5, so the single sample is forced
    with probability p instead.
    """
    if batch_size == 1:
        return [bool(rng.uniform() < oversample_foreground)]
    num_random = int(round(batch_size * (1 - oversample_foreground)))
    return [i >= num_random for i in range(batch_size)]


def choose_patch_start(
    rng: np.random.Generator,
    case_shape: Sequence[int],
    patch_size: Sequence[int],
    foreground_voxel: Sequence[int] | None,
) -> tuple[int, ...]:
    """Start of a patch: uniform inside the case, or, given a foreground voxel, a uniformly jittered
    position that keeps that voxel inside the patch."""
    start = []
    for axis, (low, high) in enumerate(patch_start_range(case_shape, patch_size)):
        if foreground_voxel is None:
            start.append(int(rng.integers(low, high + 1)))
        else:
            voxel = int(foreground_voxel[axis])
            jittered = int(rng.integers(voxel - patch_size[axis] + 1, voxel + 1))
            # clipping towards the valid range keeps the voxel inside (see patch_start_range)
            start.append(min(max(jittered, low), high))
    return tuple(start)


# ---------------------------------------------------------------- case files
def _open_case(folder: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Memory-mapped image (C, *spatial) and label (1, *spatial) of a preprocessed case, and its properties."""
    try:
        data, seg, properties = load_case(folder, case_id)
    except PreprocessingError as e:  # load_case names the file; say which case it belongs to
        raise PreprocessingError(f"preprocessed case '{case_id}': {e}") from None
    if seg is None:
        raise PreprocessingError(f"{folder}: preprocessed case '{case_id}' has no label file {case_id}_seg.npy, "
                                 f"so it cannot be used for training; {_REPREPROCESS}")
    return data, seg, properties


def _raw_info(folder: Path, case_id: str, properties: dict, net_ndim: int) -> dict:
    """What a raw-intensity sample carries: its case's recorded normalization and spacing."""
    if "normalization" not in properties:
        raise PreprocessingError(f"{folder}: preprocessed case '{case_id}' holds no recorded normalization, but the "
                                 f"plan normalizes in the loader; {_REPREPROCESS}")
    return {"normalization": properties["normalization"],
            "spacing": [float(s) for s in properties["spacing_after"][-net_ndim:]]}


def _pick_foreground_voxel(folder: Path, case_id: str, rng: np.random.Generator) -> np.ndarray | None:
    """A stored voxel of a class chosen uniformly among those present in the case; None if none is."""
    try:
        locations = load_class_locations(folder, case_id)
    except PreprocessingError as e:
        raise PreprocessingError(f"class locations of preprocessed case '{case_id}': {e}") from None
    classes = sorted(locations)  # sorted: the draw must not depend on the archive's order
    if not classes:
        return None
    voxels = locations[classes[int(rng.integers(len(classes)))]]
    return voxels[int(rng.integers(len(voxels)))] if len(voxels) else None


def _case_probabilities(case_ids: Sequence[str], weights: Sequence[float] | None) -> np.ndarray | None:
    """Per-case draw probabilities from non-negative weights (a task's case_weights), checked."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(case_ids),) or not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"case_weights: expected one non-negative weight per case ({len(case_ids)}) with a "
                          f"positive sum, found {weights.tolist()}")
    return weights / weights.sum()


# ---------------------------------------------------------------- sampler
class PatchSampler:
    """Draws training batches {"data": float32 (B, C, *S), "target": int16 (B, 1, *S), "case_ids"}.

    S is `sample_size` (default `patch_size`): a larger pre-augmentation box, centred on where the
    `patch_size` patch was placed, so a rotation/scaling followed by a centre crop has real data at
    its borders. The network's dimensionality is len(patch_size). Deterministic given `seed`;
    holds no open files, so it can be pickled into worker processes.
    """

    def __init__(
        self,
        folder: str | Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        oversample_foreground: float = 1 / 3,
        seed: int = 0,
        sample_size: Sequence[int] | None = None,
        raw_intensities: bool = False,
        foreground_slice_share: float = 0.0,
        case_weights: Sequence[float] | None = None,
    ):
        self.folder = Path(folder)
        self.case_probabilities = _case_probabilities(case_ids, case_weights)  # None: cases drawn uniformly
        self.foreground_slice_share = float(foreground_slice_share)
        self._foreground_slices: dict[str, np.ndarray] = {}  # case id -> slices holding foreground, read once
        self.raw_intensities = bool(raw_intensities)
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.sample_size = tuple(int(s) for s in (sample_size if sample_size is not None else patch_size))
        self.batch_size = int(batch_size)
        self.oversample_foreground = float(oversample_foreground)
        self._check_arguments()
        self._check_files()
        self.rng = np.random.default_rng(seed)

    def _check_arguments(self) -> None:
        if not self.case_ids:
            raise ConfigError(f"{self.folder}: no training cases given; expected at least one case id")
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ConfigError(f"patch_size {self.patch_size}: expected 2 or 3 positive sizes")
        if len(self.sample_size) != len(self.patch_size) or any(s < p for s, p in zip(self.sample_size, self.patch_size)):
            raise ConfigError(f"sample_size {self.sample_size}: expected one size per patch axis, "
                              f"each >= patch_size {self.patch_size}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size {self.batch_size}: expected at least 1")
        if not 0.0 <= self.oversample_foreground <= 1.0:
            raise ConfigError(f"oversample_foreground {self.oversample_foreground}: expected a fraction in [0, 1]")
        if not 0.0 <= self.foreground_slice_share <= 1.0:
            raise ConfigError(f"foreground_slice_share {self.foreground_slice_share}: expected a share in [0, 1]")

    def _check_files(self) -> None:
        """Fail at construction, not minutes into training, when a case's files are absent."""
        endings = (".npy", "_seg.npy", "_locations.npz")
        missing = [f"{c}{e}" for c in self.case_ids for e in endings if not (self.folder / f"{c}{e}").is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise PreprocessingError(f"{self.folder}: preprocessed files are missing: {shown}; {_REPREPROCESS}")

    def reseeded(self, seed: int) -> "PatchSampler":
        """A copy drawing an independent stream (one per loader worker)."""
        clone = copy.copy(self)
        clone.rng = np.random.default_rng(seed)
        return clone

    def sample_batch(self) -> dict:
        """One batch; the last samples are forced to contain foreground (forced_foreground_flags)."""
        flags = forced_foreground_flags(self.batch_size, self.oversample_foreground, self.rng)
        samples = [self._sample_one(forced) for forced in flags]
        batch = {
            "data": np.stack([s[0] for s in samples]),
            "target": np.stack([s[1] for s in samples]),
            "case_ids": [s[2] for s in samples],
        }
        if self.raw_intensities:
            batch["normalization"] = [s[3]["normalization"] for s in samples]
            batch["spacing"] = [s[3]["spacing"] for s in samples]
        return batch

    def _case_index(self) -> int:
        if self.case_probabilities is None:
            return int(self.rng.integers(len(self.case_ids)))
        return int(self.rng.choice(len(self.case_ids), p=self.case_probabilities))

    def _sample_one(self, force_foreground: bool) -> tuple[np.ndarray, np.ndarray, str, dict | None]:
        case_id = self.case_ids[self._case_index()]
        data, seg, properties = _open_case(self.folder, case_id)
        info = _raw_info(self.folder, case_id, properties, len(self.patch_size)) if self.raw_intensities else None
        fill = [ChannelNormalization.from_dict(n).zero_value for n in info["normalization"]] if info else None
        voxel = _pick_foreground_voxel(self.folder, case_id, self.rng) if force_foreground else None
        if force_foreground and voxel is None:
            logger.debug("case %s has no foreground; sampling a random patch instead", case_id)
        data, seg, voxel = self._network_view(case_id, data, seg, voxel)
        start = choose_patch_start(self.rng, data.shape[1:], self.patch_size, voxel)
        # widen the patch box symmetrically to the pre-augmentation box
        box_start = [s - (n - p) // 2 for s, n, p in zip(start, self.sample_size, self.patch_size)]
        try:
            return (read_box(data, box_start, self.sample_size, np.float32, fill),
                    read_box(seg, box_start, self.sample_size, np.int16), case_id, info)
        except (OSError, ValueError) as e:  # e.g. a file truncated after it was mapped
            raise PreprocessingError(
                f"{self.folder}: reading a patch of case '{case_id}' failed ({e}); {_REPREPROCESS}") from e

    def _random_slice(self, case_id: str, seg: np.ndarray) -> int:
        """An axial slice: from those holding foreground with probability foreground_slice_share."""
        if self.foreground_slice_share > 0 and self.rng.uniform() < self.foreground_slice_share:
            if case_id not in self._foreground_slices:
                self._foreground_slices[case_id] = np.flatnonzero(np.any(np.asarray(seg[0]) > 0, axis=(1, 2)))
            slices = self._foreground_slices[case_id]
            if len(slices):
                return int(slices[int(self.rng.integers(len(slices)))])
        return int(self.rng.integers(seg.shape[1]))

    def _network_view(
        self, case_id: str, data: np.ndarray, seg: np.ndarray, voxel: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The arrays as the network sees them: one axial slice for a 2D network on a 3D case."""
        case_ndim, net_ndim = data.ndim - 1, len(self.patch_size)
        if case_ndim == net_ndim:
            return data, seg, voxel
        if case_ndim == 3 and net_ndim == 2:
            z = int(voxel[0]) if voxel is not None else self._random_slice(case_id, seg)
            return data[:, z], seg[:, z], (voxel[1:] if voxel is not None else None)
        raise ConfigError(
            f"case '{case_id}' in {self.folder} is {case_ndim}D but the patch size {self.patch_size} is {net_ndim}D; "
            "a 3D patch needs 3D cases (use the 2d configuration for 2D data)"
        )
