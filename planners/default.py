"""The default planner: fingerprint + GPU memory budget -> a fully expanded Plan.

Configurations: `2d` always; `3d_fullres` for 3D data; `3d_lowres` when the fullres patch covers
less than 25% of the median image, and with it `3d_cascade_fullres` (planners/cascade.py). Each
configuration gets a target spacing, a patch fitted to the median shape and the memory budget, a U-Net topology, a batch size, normalization and resampling.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Sequence

import numpy as np

from autoseg import schema
from autoseg.config import ConfigPlan, Fingerprint, NetworkPlan, Plan, ResamplingPlan
from autoseg.errors import PlanError
from autoseg.planners.budget import GIB, fit_patch_and_batch
from autoseg.planners.cascade import CASCADE, cascade_config
from autoseg.planners.mirroring import mirror_axes_for
from autoseg.planners.normalization import plan_normalization
from autoseg.planners.spacing import fullres_target_spacing, is_anisotropic, lowres_spacing_step
from autoseg.planners.topology import Topology
from autoseg.registry import PLANNERS

log = logging.getLogger(__name__)

BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
LOWRES_THRESHOLD = 0.25
ALL_CONFIGS = ("2d", "3d_fullres", "3d_lowres")


def network_for(topology: Topology, in_channels: int, num_classes: int, name: str, base_features: int = BASE_FEATURES) -> NetworkPlan:
    ndim = len(topology.patch_size)
    features = tuple(min(base_features * 2**i, MAX_FEATURES[ndim]) for i in range(topology.num_stages))
    return NetworkPlan(name, ndim, in_channels, num_classes, features, topology.kernel_sizes, topology.strides)


def resampling_for(spacing: Sequence[float], config_ndim: int) -> ResamplingPlan:
    """Thick-slice 3D data is resampled in-plane (cubic) and across slices (nearest) separately;
    a 2d configuration of 3D data only resamples in-plane, so it needs no out-of-plane handling."""
    if config_ndim == 3 and is_anisotropic(spacing):
        return ResamplingPlan(separate_out_of_plane=True, out_of_plane_order=0, out_of_plane_axis=int(np.argmax(spacing)))
    return ResamplingPlan()


class PlanningContext:
    """What every configuration of one planning run shares."""

    def __init__(self, fingerprint: Fingerprint, gpu_memory_gb: float, network: str, base_features: int = BASE_FEATURES):
        self.fingerprint = fingerprint
        self.gpu_memory_gb = gpu_memory_gb
        self.spacings = np.array(fingerprint.spacings, dtype=float)
        self.cropped_shapes = np.array([c.cropped_shape for c in fingerprint.cases], dtype=float)
        self.fullres_spacing = np.array(fullres_target_spacing(self.spacings, self.cropped_shapes))
        self.make_network = partial(
            network_for, in_channels=len(fingerprint.channels), num_classes=len(fingerprint.labels), name=network,
            base_features=base_features,
        )
        self.normalization = plan_normalization(fingerprint)

    def median_shape_at(self, spacing: np.ndarray) -> np.ndarray:
        """Median cropped shape after resampling every case to `spacing`."""
        shapes = self.cropped_shapes * self.spacings / spacing
        return np.round(np.percentile(shapes, 50, axis=0))

    def configure(self, name: str, spacing: np.ndarray, cover_mm: Sequence[float] | None = None) -> ConfigPlan:
        """cover_mm: the patch need cover only this much (mm per axis of the configuration) of the
        median image, not all of it (planners/structures.py; time-budget plans only)."""
        if name == "2d" and self.fingerprint.ndim == 3:  # axial slices: drop the slice axis
            spacing3d, median3d = spacing, self.median_shape_at(spacing)
            spacing, median_shape = spacing3d[1:], median3d[1:]
            dataset_voxels = float(np.prod(median3d)) * len(self.fingerprint.cases)
        else:
            median_shape = self.median_shape_at(spacing)
            dataset_voxels = float(np.prod(median_shape)) * len(self.fingerprint.cases)
        covered = median_shape if cover_mm is None else np.minimum(median_shape, np.ceil(np.asarray(cover_mm) / spacing))
        fitted = fit_patch_and_batch(tuple(spacing), tuple(covered), self.make_network, self.gpu_memory_gb, dataset_voxels)
        patch = fitted.topology.patch_size
        return ConfigPlan(
            name=name,
            spacing=tuple(float(s) for s in spacing),
            median_shape=tuple(int(s) for s in median_shape),
            patch_size=tuple(int(p) for p in patch),
            batch_size=int(fitted.batch_size),
            network=fitted.network,
            normalization=self.normalization,
            resampling=resampling_for(spacing, len(patch)),
            mirror_axes=mirror_axes_for(self.fingerprint, len(patch)),
            estimated_memory_gb=round(fitted.estimated_bytes / GIB, 3),
        )

    def lowres(self, fullres: ConfigPlan) -> ConfigPlan | None:
        """Coarsen the spacing until the patch covers at least 25% of the median image."""
        median_voxels = float(np.prod(fullres.median_shape))
        if np.prod(fullres.patch_size) / median_voxels >= LOWRES_THRESHOLD:
            return None
        spacing = self.fullres_spacing.copy()
        fullres_voxels, plan = median_voxels, fullres
        while np.prod(plan.patch_size) / median_voxels < LOWRES_THRESHOLD:
            spacing = lowres_spacing_step(spacing)
            median_voxels = float(np.prod(self.median_shape_at(spacing)))
            plan = self.configure("3d_lowres", spacing)
        if fullres_voxels / median_voxels < 2:  # barely coarser than fullres: not worth a cascade stage
            log.info("no 3d_lowres: its images would be less than 2x smaller than 3d_fullres's")
            return None
        return plan


@PLANNERS.register("default")
def plan_dataset(
    fingerprint: Fingerprint,
    gpu_memory_gb: float = 8.0,
    configs: Sequence[str] | None = None,
    network: str = "unet",
) -> Plan:
    """Decide every configuration that fits the data (or only `configs`)."""
    unknown = set(configs or ()) - set(ALL_CONFIGS)
    if unknown:
        raise PlanError(f"unknown configuration(s) {sorted(unknown)}; choose from {', '.join(ALL_CONFIGS)}")
    if gpu_memory_gb <= 0:
        raise PlanError(f"--gpu-memory-gb must be positive, got {gpu_memory_gb}")
    wanted = set(configs or ALL_CONFIGS)
    ctx = PlanningContext(fingerprint, gpu_memory_gb, network)
    planned: dict[str, ConfigPlan] = {}
    if "2d" in wanted:
        planned["2d"] = ctx.configure("2d", ctx.fullres_spacing)
    if fingerprint.ndim == 3 and wanted & {"3d_fullres", "3d_lowres"}:
        fullres = ctx.configure("3d_fullres", ctx.fullres_spacing)
        if "3d_fullres" in wanted:
            planned["3d_fullres"] = fullres
        if "3d_lowres" in wanted and (lowres := ctx.lowres(fullres)) is not None:
            planned["3d_lowres"] = lowres
            planned[CASCADE] = cascade_config(fullres)  # the second stage comes with every first stage
    if not planned:
        raise PlanError(f"none of the requested configurations {sorted(wanted)} applies to {fingerprint.ndim}D data")
    return Plan(
        dataset_name=fingerprint.dataset_name,
        planner="default",
        gpu_memory_gb=float(gpu_memory_gb),
        labels=dict(fingerprint.labels),
        channel_names=tuple(c.name for c in fingerprint.channels),
        file_ending=fingerprint.file_ending,
        image_ndim=fingerprint.ndim,
        fingerprint_hash=schema.content_hash(fingerprint),
        configurations=planned,
    )
