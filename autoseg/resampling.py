"""Resampling images, labels and probability maps between voxel spacings.

How: spline interpolation is a tensor product, so resampling a volume equals resampling one
axis after another. Each axis is therefore resampled with a small (n_out, n_in) matrix built once
from `scipy.ndimage.map_coordinates` (spline prefilter included) and applied with a BLAS
matrix product. This is much faster than a 3D `ndimage.zoom` (4 taps per axis instead of
4**3 per voxel for cubic), axes whose size does not change are skipped for free (a 2D
configuration of 3D data only touches y and x), and every axis can have its own order, which is
the anisotropic path: with `plan.separate_out_of_plane` the coarse axis uses
`plan.out_of_plane_order` (0 = nearest: no interpolation between far-apart slices) while the
in-plane axes use the image or label order.

Grid convention: the field of view is kept (voxel edges align, "align corners = False"), so
output voxel j sits at input coordinate (j + 0.5) * n_in / n_out - 0.5; beyond the edges values
are continued from the nearest voxel. The output shape is round(shape * spacing_from /
spacing_to) unless `out_shape` is given (going back to an exact original shape).

Images and probabilities are clipped to each channel's input range: cubic splines overshoot at
sharp edges (bone next to air), and values that were never measured would only confuse the
network. Labels are resampled per value as one-hot maps and the highest score wins (ties go to
the lower value), so labels never blur into each other and no new values appear.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import ndimage

from autoseg.config import ResamplingPlan
from autoseg.errors import PlanError

_NEGLIGIBLE = 1e-6  # matrix weights below this are treated as zero when restricting to a label's box
_TIE = 1e-6  # label scores closer than this count as a tie (the lower label value wins)


def output_shape(shape: Sequence[int], spacing_from: Sequence[float], spacing_to: Sequence[float]) -> tuple[int, ...]:
    """round(shape * spacing_from / spacing_to) per axis, at least 1."""
    if not len(shape) == len(spacing_from) == len(spacing_to):
        raise ValueError(f"shape {tuple(shape)}, spacing_from {tuple(spacing_from)} and spacing_to {tuple(spacing_to)} differ in length")
    return tuple(max(1, int(round(n * f / t))) for n, f, t in zip(shape, spacing_from, spacing_to))


def axis_orders(ndim: int, plan: ResamplingPlan, order: int) -> list[int]:
    """Interpolation order per spatial axis: `order`, except the out-of-plane axis when separated."""
    orders = [order] * ndim
    if plan.separate_out_of_plane and plan.out_of_plane_axis is not None:
        if not 0 <= plan.out_of_plane_axis < ndim:
            raise PlanError(
                f"resampling.out_of_plane_axis is {plan.out_of_plane_axis} but the data has {ndim} spatial axes "
                f"(expected 0..{ndim - 1}); fix the plan or re-run `autoseg plan`"
            )
        orders[plan.out_of_plane_axis] = plan.out_of_plane_order
    return orders


@lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix that resamples a line of n_in samples to n_out (read-only, cached)."""
    coords = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5)[None]
    unit = np.eye(n_in)
    # Column j is the response to the unit impulse e_j: the operator is linear, so this is exact.
    columns = [ndimage.map_coordinates(unit[j], coords, order=order, mode="nearest") for j in range(n_in)]
    matrix = np.stack(columns, axis=1).astype(np.float32)
    matrix[np.abs(matrix) < _NEGLIGIBLE] = 0  # spline prefilter tails: keeps label boxes tight
    matrix.flags.writeable = False
    return matrix


def _apply_along(matrix: np.ndarray, array: np.ndarray, axis: int, nearest: bool) -> np.ndarray:
    """Multiply `array` by `matrix` along `axis` (nearest: a plain gather, exact and cheaper)."""
    if nearest:
        return np.take(array, np.argmax(matrix, axis=1), axis=axis)
    moved = np.tensordot(matrix, array, axes=([1], [axis]))
    return np.moveaxis(moved, 0, axis)


def _resample_float(array: np.ndarray, target: Sequence[int], orders: Sequence[int], lead: int) -> np.ndarray:
    """Resample the spatial axes (after `lead` leading axes) of a float32 array to `target`."""
    spatial = array.shape[lead:]
    changed = [a for a in range(len(spatial)) if spatial[a] != target[a]]
    changed.sort(key=lambda a: target[a] / spatial[a])  # shrink first: later passes touch less data
    for a in changed:
        matrix = interpolation_matrix(spatial[a], int(target[a]), orders[a])
        array = _apply_along(matrix, array, lead + a, nearest=orders[a] == 0)
    return np.ascontiguousarray(array, dtype=np.float32)


def _resample_channels(array: np.ndarray, target: tuple[int, ...], orders: list[int]) -> np.ndarray:
    """Resample (C, *spatial) and clip each channel to its input range when splines may overshoot."""
    out = _resample_float(array.astype(np.float32, copy=False), target, orders, lead=1)
    if max(orders) > 1:
        for c in range(array.shape[0]):
            np.clip(out[c], array[c].min(), array[c].max(), out=out[c])
    return out


def _target(shape: tuple[int, ...], spacing_from, spacing_to, out_shape) -> tuple[int, ...]:
    if out_shape is not None:
        if len(out_shape) != len(shape):
            raise ValueError(f"out_shape {tuple(out_shape)} does not have {len(shape)} axes")
        return tuple(int(s) for s in out_shape)
    return output_shape(shape, spacing_from, spacing_to)


def resample_image(
    image: np.ndarray,
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    plan: ResamplingPlan,
    out_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample an image (C, *spatial) with `plan.image_order`; float32 result, or `image` itself
    (no copy) when the shape does not change."""
    shape = tuple(image.shape[1:])
    target = _target(shape, spacing_from, spacing_to, out_shape)
    if target == shape:
        return image
    return _resample_channels(image, target, axis_orders(len(shape), plan, plan.image_order))


def resample_probabilities(
    probabilities: np.ndarray,
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    plan: ResamplingPlan,
    out_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample class probabilities (K, *spatial) with `plan.label_order` (soft labels); float32.

    With the default order 1 probabilities stay in [0, 1] and keep summing to 1.
    """
    shape = tuple(probabilities.shape[1:])
    target = _target(shape, spacing_from, spacing_to, out_shape)
    if target == shape:
        return probabilities
    return _resample_channels(probabilities, target, axis_orders(len(shape), plan, plan.label_order))


def _label_region(box: tuple[slice, ...], matrices: list[np.ndarray | None]):
    """Output slices and sub-matrices that a label confined to input `box` can reach; None when it
    reaches no output voxel (a thin label falling between samples when downsampling)."""
    out_slices, sub_matrices = [], []
    for sl, matrix in zip(box, matrices):
        if matrix is None:  # axis not resampled
            out_slices.append(sl)
            sub_matrices.append(None)
            continue
        rows = np.flatnonzero(np.any(matrix[:, sl] != 0, axis=1))
        if rows.size == 0:
            return None
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        out_slices.append(slice(lo, hi))
        sub_matrices.append(matrix[lo:hi, sl])
    return tuple(out_slices), sub_matrices


def _label_score(onehot: np.ndarray, sub_matrices: list, orders: list[int]) -> np.ndarray:
    for axis, (matrix, order) in enumerate(zip(sub_matrices, orders)):
        if matrix is not None:
            onehot = _apply_along(matrix, onehot, axis, nearest=order == 0)
    return onehot


def resample_label(
    label: np.ndarray,
    spacing_from: Sequence[float],
    spacing_to: Sequence[float],
    plan: ResamplingPlan,
    out_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample an integer label map (*spatial); same dtype, only values present in the input.

    Each value's one-hot map is interpolated inside its own bounding box only (exact: it is zero
    elsewhere). The lowest value (normally background, the biggest region) is never interpolated:
    interpolation weights sum to 1, so its score is 1 minus the sum of the others.
    """
    shape = tuple(label.shape)
    target = _target(shape, spacing_from, spacing_to, out_shape)
    if target == shape:
        return label
    orders = axis_orders(len(shape), plan, plan.label_order)
    matrices = [None if n == m else interpolation_matrix(n, m, o) for n, m, o in zip(shape, target, orders)]
    low = label.min()
    shifted = label if low == 0 else label - low  # find_objects needs the values to box as 1..max
    result = np.full(target, low, dtype=label.dtype)
    best = np.zeros(target, dtype=np.float32)
    total = np.zeros(target, dtype=np.float32)
    for k, box in enumerate(ndimage.find_objects(shifted), start=1):
        if box is None:  # value absent
            continue
        region = _label_region(box, matrices)
        if region is None:
            continue
        out_box, sub_matrices = region
        score = _label_score((shifted[box] == k).astype(np.float32), sub_matrices, orders)
        total[out_box] += score
        better = score > best[out_box] + _TIE  # ascending values: a tie keeps the lower one
        best[out_box][better] = score[better]
        result[out_box][better] = low + k
    result[(1 - total) >= best - _TIE] = low  # the lowest value wins its ties too
    return result
