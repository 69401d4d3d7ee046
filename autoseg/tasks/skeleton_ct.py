"""`skeleton-ct`: every bone in whole-body or femur-to-head CT, segmented slice by slice.

The design of the skeleton CT study: remove the stretcher/table, threshold and clip intensities,
normalize across patients or within each one, then a U-Net segments 2D slices. Every step is an
option recorded in the plan, so its effect can be measured (benchmarks/skeleton_ct.py).

- Configurations: 2d by default (3d_fullres on request).
- One case step, in preprocessing, so training and prediction apply it identically:
  1. table removal (`remove_table`): the body mask of autoseg.modalities.ct_body (threshold at
     `body_threshold_hu`, in-plane opening by `opening_mm`, largest 3D component, holes filled
     per slice); everything outside the body becomes air (-1000 HU). Preprocessing for training
     keeps the mask as <case_id>_body_mask.nii.gz beside the preprocessed case;
  2. the bone prior (`bone_prior`): a 0/1 channel of voxels above `bone_prior_hu`, appended
     after the CT (so a plan with it has one more input channel than the dataset has files);
  3. clipping to `clip_hu` (planning fills it with the dataset's foreground 0.5/99.5 percentiles
     unless given) and, for `normalization="intra"`, the patient's own mean and std within the
     body mask. `"inter"` leaves the plan's CT scheme in place: dataset-wide foreground mean/std.
- Training: a share `bone_slice_share` of the 2D slices drawn at random comes from slices that
  hold bone (the others from anywhere, as usual).
- Post step, with table removal: predicted bone outside the body mask (recomputed from the input)
  becomes background, since the network only ever saw air there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from autoseg.config import NormalizationPlan
from autoseg.errors import ConfigError, PreprocessingError
from autoseg.io import Geometry
from autoseg.modalities.ct_body import AIR_HU, NoBodyFound, body_mask
from autoseg.tasks.profile import PredictedCase, TaskProfile, keep_case_output, register

log = logging.getLogger(__name__)

NAME = "skeleton-ct"
BONE_PRIOR_CHANNEL = "bone_prior"
_MIN_STD = 1e-6


@dataclass(frozen=True)
class SkeletonCtOptions:
    """The study's preprocessing steps, each one switchable so its effect can be measured."""

    remove_table: bool = True
    body_threshold_hu: float = -500.0  # tissue above, air/foam pads below
    opening_mm: float = 6.0  # cuts contacts with the table thinner than about twice this
    clip_hu: tuple[float, float] | None = None  # None when planning: the dataset's foreground 0.5/99.5 percentiles
    normalization: Literal["inter", "intra"] = "inter"  # dataset-wide or per-patient (within the body)
    bone_prior: bool = False  # append a 0/1 channel of voxels above bone_prior_hu
    bone_prior_hu: float = 200.0
    bone_slice_share: float = 0.5  # share of randomly placed 2D samples taken from slices holding bone

    def __post_init__(self) -> None:
        problems = []
        if self.opening_mm < 0:
            problems.append(f"opening_mm {self.opening_mm}: expected >= 0")
        if self.clip_hu is not None and not self.clip_hu[0] < self.clip_hu[1]:
            problems.append(f"clip_hu {list(self.clip_hu)}: expected [low, high] with low < high")
        if not 0.0 <= self.bone_slice_share <= 1.0:
            problems.append(f"bone_slice_share {self.bone_slice_share}: expected a share in [0, 1]")
        if problems:
            raise ConfigError(f"task '{NAME}' options: " + "; ".join(problems))


# ---------------------------------------------------------------- planning
def fill_clip_window(options: SkeletonCtOptions, planned: tuple[NormalizationPlan, ...]) -> SkeletonCtOptions:
    """The clip window, when not given: the planner's CT window (dataset foreground 0.5/99.5 percentiles)."""
    if options.clip_hu is not None:
        return options
    ct = planned[0]
    if ct.scheme != "ct":
        raise ConfigError(f"task '{NAME}': the dataset's first channel is not CT (planned as '{ct.scheme}'); "
                          "name it \"CT\" in dataset.json channel_names, or give clip_hu explicitly")
    return replace(options, clip_hu=(float(ct.clip_low), float(ct.clip_high)))


def ct_normalization(options: SkeletonCtOptions, planned: tuple[NormalizationPlan, ...]) -> tuple[NormalizationPlan, ...]:
    """inter: the planner's CT scheme with the task's window; intra: the case step normalizes, so none."""
    low, high = options.clip_hu
    ct = replace(planned[0], clip_low=low, clip_high=high) if options.normalization == "inter" else NormalizationPlan("none")
    return (ct, *planned[1:])


def added_channels(options: SkeletonCtOptions) -> tuple[str, ...]:
    return (BONE_PRIOR_CHANNEL,) if options.bone_prior else ()


def slice_share(options: SkeletonCtOptions) -> float:
    return options.bone_slice_share


# ---------------------------------------------------------------- the case step, piece by piece
def body_of(hu: np.ndarray, geometry: Geometry, options: SkeletonCtOptions, case_id: str) -> np.ndarray:
    """The patient's body (bool, the image's spatial shape); a volume without one is a per-case error."""
    try:
        return body_mask(hu, geometry.spacing_zyx, options.body_threshold_hu, options.opening_mm)
    except NoBodyFound as exc:
        raise PreprocessingError(f"case '{case_id}': no body found for task '{NAME}' ({exc}); check that the image "
                                 "holds CT numbers in HU, or lower the task option body_threshold_hu") from None


def clip_window(hu: np.ndarray, options: SkeletonCtOptions) -> np.ndarray:
    if options.clip_hu is None:
        raise ConfigError(f"task '{NAME}': no clip window; plan the dataset with `autoseg plan --task {NAME}` "
                          "(it fills clip_hu from the dataset) or give clip_hu")
    return np.clip(hu, *options.clip_hu)


def intra_normalized(clipped: np.ndarray, body: np.ndarray) -> np.ndarray:
    """(x - mean) / std with the patient's own statistics inside the body, applied to every voxel
    (outside the body, after table removal, that is clipped air)."""
    inside = clipped[body] if body.any() else clipped.ravel()
    mean, std = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
    return ((clipped - mean) / max(std, _MIN_STD)).astype(np.float32)


def prepare_skeleton_ct(image: np.ndarray, geometry: Geometry, options: SkeletonCtOptions, case_id: str) -> np.ndarray:
    """Table removal -> bone prior -> clip (and intra normalization) of the CT channel (channel 0)."""
    hu = image[0].astype(np.float32)
    needs_body = options.remove_table or options.normalization == "intra"
    body = body_of(hu, geometry, options, case_id) if needs_body else None
    if options.remove_table:
        hu = np.where(body, hu, np.float32(AIR_HU))
        keep_case_output("body_mask", body.astype(np.uint8))
    prior = [(hu > options.bone_prior_hu).astype(np.float32)] if options.bone_prior else []
    ct = clip_window(hu, options)
    if options.normalization == "intra":
        ct = intra_normalized(ct, body)
    rest = [image[c].astype(np.float32) for c in range(1, image.shape[0])]
    return np.stack([ct, *rest, *prior])


# ---------------------------------------------------------------- after prediction
def bone_inside_body(case: PredictedCase, options: SkeletonCtOptions) -> np.ndarray:
    """Labels outside the body mask set to background (only where table removal is on)."""
    if not options.remove_table:
        return case.labels
    body = case.extras.get("body_mask")  # kept by the case step; computed again only where it was not
    if body is None:
        body = body_of(case.image[0].astype(np.float32), case.geometry, options, case.case_id)
    return np.where(body, case.labels, 0).astype(case.labels.dtype)


PROFILE = register(TaskProfile(
    name=NAME,
    summary="whole-skeleton bone on CT: table removal, HU clipping, inter/intra-patient normalization, "
            "optional bone-prior channel, bone-weighted 2D slices",
    phantom="skeleton-ct",
    options=SkeletonCtOptions,
    configurations=("2d",),
    case_steps=(prepare_skeleton_ct,),
    post_steps=(bone_inside_body,),
    plan_options=fill_clip_window,
    normalization=ct_normalization,
    extra_channels=added_channels,
    foreground_slice_share=slice_share,
))
