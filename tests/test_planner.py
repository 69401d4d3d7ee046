"""Default planner: golden plans (each sanity-checked against nnU-Net v2's ExperimentPlanner on the
same facts), invariants over random inputs, configuration selection, and strict plan.json loading.

Golden values were produced once by the current planner and compared with nnU-Net 2.8.1 via
benchmarks/plan_vs_nnunet.py: target spacings and kernel/stride rules match nnU-Net exactly; patch
and batch differ only through the memory model (autoseg asks its network, nnU-Net scales reference
constants) and stay within a factor of 2 (nnU-Net's values are noted next to each golden).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoseg import schema
from autoseg.config import (
    SCHEMA_VERSION, CaseFingerprint, ChannelFingerprint, ConfigPlan, Fingerprint, IntensityStats, NormalizationPlan,
    Plan, ResamplingPlan, load_plan,
)
from autoseg.errors import PlanError
from autoseg.planners import plan_dataset

MR_STATS = IntensityStats(mean=400.0, std=120.0, median=390.0, min=100.0, max=800.0,
                          percentile_00_5=110.0, percentile_99_5=780.0)
CT_STATS = IntensityStats(mean=250.0, std=180.0, median=230.0, min=-300.0, max=1800.0,
                          percentile_00_5=-80.0, percentile_99_5=1200.0)
MAX_FEATURES = {2: 512, 3: 320}


def make_fingerprint(spacings, shapes, *, channel: str = "T1", modality: str = "MR", stats: IntensityStats = MR_STATS,
                     cropped_shapes=None, num_labels: int = 2) -> Fingerprint:
    """One CaseFingerprint per (spacing, shape) pair, one channel."""
    cropped_shapes = cropped_shapes or shapes
    cases = tuple(
        CaseFingerprint(f"case_{i:03d}", tuple(map(float, sp)), tuple(sh), tuple(cr),
                        {"0": 0.9, "1": 0.1}, {"0": 0, "1": 1})
        for i, (sp, sh, cr) in enumerate(zip(spacings, shapes, cropped_shapes))
    )
    labels = {"background": 0, **{f"label{v}": v for v in range(1, num_labels)}}
    return Fingerprint("Dataset999_Test", len(shapes[0]), ".nii.gz", labels, (ChannelFingerprint(channel, modality, stats),),
                       cases)


def uniform(spacing, shape, n: int, **kwargs) -> Fingerprint:
    """n identical cases."""
    return make_fingerprint([spacing] * n, [shape] * n, **kwargs)


def summary(config: ConfigPlan) -> dict:
    return {"spacing": config.spacing, "median_shape": config.median_shape,
            "patch": config.patch_size, "batch": config.batch_size, "stages": config.network.num_stages}


def golden(spacing, median_shape, patch, batch, stages) -> dict:
    return {"spacing": pytest.approx(spacing, rel=1e-4), "median_shape": median_shape, "patch": patch,
            "batch": batch, "stages": stages}


def pools_per_axis(config: ConfigPlan) -> list[int]:
    return [sum(1 for s in config.network.strides if s[a] == 2) for a in range(len(config.patch_size))]


def check_valid(config: ConfigPlan, fingerprint: Fingerprint, budget_gb: float) -> None:
    """Invariants every planned configuration must satisfy."""
    ndim, net = len(config.patch_size), config.network
    divisible_by = [2**p for p in pools_per_axis(config)]
    for patch, median, div in zip(config.patch_size, config.median_shape, divisible_by):
        assert patch % div == 0
        assert patch <= math.ceil(median / div) * div  # never beyond the median image (after padding)
    assert config.batch_size >= 2
    assert config.estimated_memory_gb <= budget_gb + 1e-3
    assert net.ndim == ndim and net.num_stages >= 2
    assert net.features == tuple(min(32 * 2**i, MAX_FEATURES[ndim]) for i in range(net.num_stages))
    assert len(net.kernel_sizes) == len(net.strides) == net.num_stages
    assert net.strides[0] == (1,) * ndim
    assert all(k in (1, 3) for kernel in net.kernel_sizes for k in kernel)
    cascade_channels = net.num_classes - 1 if config.previous_stage else 0  # the first stage's one-hot prediction
    assert net.in_channels == len(fingerprint.channels) + cascade_channels and net.num_classes == len(fingerprint.labels)
    assert len(config.normalization) == len(fingerprint.channels)
    assert config.mirror_axes == tuple(range(ndim))


def round_trip(plan: Plan) -> Plan:
    return schema.from_dict(Plan, json.loads(schema.dumps(plan)))


# ---------------------------------------------------------------- golden plans
def test_isotropic_3d_mr_golden():
    fp = uniform((1.0, 1.0, 1.0), (160, 160, 160), 10)
    plan = plan_dataset(fp)
    assert list(plan.configurations) == ["2d", "3d_fullres"]  # the patch covers the image: no lowres
    # nnU-Net: 2d 160x160 batch 80; 3d_fullres 128x128x128 batch 2, 6 stages.
    assert summary(plan.configurations["2d"]) == golden((1.0, 1.0), (160, 160), (160, 160), 80, 6)
    fullres = plan.configurations["3d_fullres"]
    assert summary(fullres) == golden((1.0, 1.0, 1.0), (160, 160, 160), (160, 160, 160), 2, 6)
    assert fullres.network.kernel_sizes == ((3, 3, 3),) * 6
    assert fullres.network.features == (32, 64, 128, 256, 320, 320)
    assert fullres.resampling == ResamplingPlan()
    assert fullres.normalization == (NormalizationPlan("zscore", use_mask=False),)


def test_anisotropic_3d_golden_uses_10th_percentile_slice_spacing():
    # Slices vary (3, 4, then 5 mm): median 5 mm, 10th percentile 3.9 mm; 40 slices vs 320 in-plane.
    fp = make_fingerprint([(s, 0.8, 0.8) for s in (3, 4, 5, 5, 5, 5, 5, 5, 5, 5)], [(40, 320, 320)] * 10)
    plan = plan_dataset(fp)
    assert list(plan.configurations) == ["2d", "3d_fullres"]
    fullres = plan.configurations["3d_fullres"]
    # nnU-Net: spacing 3.9x0.8x0.8, patch 32x224x224, batch 2, 6 stages, kernels (1,3,3),(1,3,3),(3,3,3)...
    assert summary(fullres) == golden((3.9, 0.8, 0.8), (51, 320, 320), (40, 256, 256), 2, 7)
    assert fullres.network.kernel_sizes == ((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5
    assert fullres.network.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert fullres.resampling == ResamplingPlan(separate_out_of_plane=True, out_of_plane_order=0, out_of_plane_axis=0)
    twod = plan.configurations["2d"]  # nnU-Net: 320x320 batch 26
    assert summary(twod) == golden((0.8, 0.8), (320, 320), (320, 320), 26, 7)
    assert twod.resampling == ResamplingPlan()  # axial slices need no out-of-plane handling


def test_thick_slices_with_many_voxels_keep_the_median_spacing():
    # Anisotropic spacing alone is not enough: 200 slices x 3 > 320 voxels in-plane, so no 10th percentile.
    fp = make_fingerprint([(s, 0.8, 0.8) for s in (3, 4, 5, 5, 5, 5, 5, 5, 5, 5)], [(200, 320, 320)] * 10)
    assert plan_dataset(fp, configs=["3d_fullres"]).configurations["3d_fullres"].spacing == pytest.approx((5.0, 0.8, 0.8))


def test_2d_xray_golden():
    fp = uniform((1.0, 1.0), (512, 256), 100, channel="xray", modality="xray")
    plan = plan_dataset(fp)
    assert list(plan.configurations) == ["2d"] and plan.image_ndim == 2
    config = plan.configurations["2d"]  # nnU-Net: identical (512x256, batch 5, 7 stages)
    assert summary(config) == golden((1.0, 1.0), (512, 256), (512, 256), 5, 7)
    assert config.network.features == (32, 64, 128, 256, 512, 512, 512)
    assert config.normalization == (NormalizationPlan("zscore", use_mask=False),)


def test_ct_golden_normalizes_with_fingerprint_percentiles_and_moments():
    fp = uniform((2.0, 0.8, 0.8), (150, 400, 400), 12, channel="CT", modality="CT", stats=CT_STATS)
    plan = plan_dataset(fp)
    ct = NormalizationPlan("ct", use_mask=False, clip_low=-80.0, clip_high=1200.0, mean=250.0, std=180.0)
    assert all(c.normalization == (ct,) for c in plan.configurations.values())
    # nnU-Net: 2d 448x448 batch 16; 3d_fullres 64x192x160 batch 2; 3d_lowres 2.32x1.17x1.17, 80x192x160.
    assert summary(plan.configurations["2d"]) == golden((0.8, 0.8), (400, 400), (448, 448), 28, 7)
    assert summary(plan.configurations["3d_fullres"]) == golden((2.0, 0.8, 0.8), (150, 400, 400), (80, 192, 192), 2, 6)
    # a lowres stage would only shrink the median image 1.6x (150x316x316): dropped, as nnU-Net does below 2x
    assert "3d_lowres" not in plan.configurations
    # 2.5x anisotropy: kernels 1 along z first (ratio >= 2), but no separate z resampling (ratio <= 3).
    assert plan.configurations["3d_fullres"].network.kernel_sizes[0] == (1, 3, 3)
    assert not plan.configurations["3d_fullres"].resampling.separate_out_of_plane


def test_cropped_images_zscore_inside_the_mask_but_ct_never_does():
    shapes, cropped = [(64, 64, 64)] * 4, [(40, 40, 40)] * 4  # 24% of the voxels remain
    mr = make_fingerprint([(1.0, 1.0, 1.0)] * 4, shapes, cropped_shapes=cropped)
    ct = make_fingerprint([(1.0, 1.0, 1.0)] * 4, shapes, cropped_shapes=cropped, channel="CT", modality="CT", stats=CT_STATS)
    assert plan_dataset(mr, configs=["2d"]).configurations["2d"].normalization[0] == NormalizationPlan("zscore", use_mask=True)
    assert plan_dataset(ct, configs=["2d"]).configurations["2d"].normalization[0].use_mask is False


# ---------------------------------------------------------------- agreement with nnU-Net v2
def anisotropic_ct() -> Fingerprint:
    """The same 60 cases as benchmarks/plan_vs_nnunet.py's Dataset901_SynthThickCT (keep in sync)."""
    spacings, shapes = [], []
    for i in range(60):
        slice_mm, in_plane = 2.5 + 2.5 * ((i * 5) % 11) / 10, 0.7 + 0.1 * ((i * 7) % 11) / 10
        spacings.append((slice_mm, in_plane, in_plane))
        shapes.append((round((200 + 100 * ((i * 3) % 7) / 6) / slice_mm), 512, 512))
    return make_fingerprint(spacings, shapes, channel="CT", modality="CT", stats=CT_STATS)


# Produced by nnU-Net 2.8.1 (ExperimentPlanner, 8 GB) via benchmarks/plan_vs_nnunet.py on this fingerprint.
NNUNET_THICK_CT = {
    "3d_fullres": {"spacing": (2.725, 0.75, 0.75), "patch": (40, 224, 224), "batch": 2},
    "2d": {"spacing": (0.75, 0.75), "patch": (512, 512), "batch": 12},
}


@pytest.mark.parametrize("name", sorted(NNUNET_THICK_CT))
def test_anisotropic_ct_matches_nnunet_v2(name):
    ours, theirs = plan_dataset(anisotropic_ct()).configurations[name], NNUNET_THICK_CT[name]
    assert ours.spacing == pytest.approx(theirs["spacing"], rel=1e-6)
    assert 0.5 <= math.prod(ours.patch_size) / math.prod(theirs["patch"]) <= 2
    assert all(0.5 <= a / b <= 2 for a, b in zip(ours.patch_size, theirs["patch"]))
    assert 0.5 <= ours.batch_size / theirs["batch"] <= 2


# ---------------------------------------------------------------- invariants
@st.composite
def fingerprints(draw) -> Fingerprint:
    ndim = draw(st.sampled_from((2, 3)))
    # Axes >= 12 voxels: smaller ones can hit the topology bug of test_extreme_inputs_still_give_a_valid_plan.
    shape = draw(st.lists(st.integers(8, 600), min_size=ndim, max_size=ndim))
    spacing = draw(st.lists(st.floats(0.3, 8.0), min_size=ndim, max_size=ndim))
    return uniform(tuple(spacing), tuple(shape), draw(st.integers(1, 30)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fp=fingerprints(), budget_gb=st.sampled_from((4.0, 8.0, 24.0, 80.0)))
def test_any_reasonable_input_gives_a_valid_plan(fp, budget_gb):
    plan = plan_dataset(fp, gpu_memory_gb=budget_gb)
    assert {"2d", "3d_fullres"} <= set(plan.configurations) if fp.ndim == 3 else set(plan.configurations) == {"2d"}
    for config in plan.configurations.values():
        check_valid(config, fp, budget_gb)
    assert round_trip(plan) == plan


@pytest.mark.parametrize("spacing, shape", [
    ((6.0, 2.78), (349, 9)),  # the fine axis is too short to pool alone and blocks the coarse one
    ((8.0, 2.5), (8, 11)),  # small and anisotropic: no axis may pool under the rules
    ((0.3023, 6.0317, 6.8594), (74, 556, 249)),  # 3d_lowres coarsening shrinks the fine axis below 12
])
def test_extreme_inputs_still_give_a_valid_plan(spacing, shape):
    fp = uniform(spacing, shape, 3)
    for config in plan_dataset(fp).configurations.values():
        check_valid(config, fp, 8.0)


def test_smaller_budget_gives_smaller_patches_within_budget():
    fp = uniform((1.0, 1.0, 1.0), (160, 160, 160), 10)
    small, large = (plan_dataset(fp, gpu_memory_gb=b, configs=["3d_fullres"]).configurations["3d_fullres"] for b in (4, 8))
    assert math.prod(small.patch_size) < math.prod(large.patch_size)
    assert small.estimated_memory_gb <= 4.0
    check_valid(small, fp, 4.0)


def test_batch_grows_with_the_dataset_until_memory_bounds_it():
    configs = [plan_dataset(uniform((1.0, 1.0), (512, 256), n)).configurations["2d"] for n in (10, 100, 5000)]
    assert configs[0].batch_size == 2  # 5% of 10 images is less than one patch: the minimum of 2
    assert configs[1].batch_size == 5  # 5% of 100 images
    assert 5 < configs[2].batch_size < 250  # memory, not the 5% cap (250), decides
    assert configs[2].estimated_memory_gb <= 8.0


def test_budget_below_the_cuda_overhead_asks_for_more_memory():
    with pytest.raises(PlanError, match="--gpu-memory-gb"):
        plan_dataset(uniform((1.0, 1.0, 1.0), (160, 160, 160), 10), gpu_memory_gb=0.5)


# ---------------------------------------------------------------- configurations
def test_lowres_appears_for_a_large_3d_dataset_only():
    large = uniform((1.0, 1.0, 1.0), (400, 512, 512), 10)
    plan = plan_dataset(large)
    assert list(plan.configurations) == ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"]  # the cascade comes with lowres
    fullres, lowres = plan.configurations["3d_fullres"], plan.configurations["3d_lowres"]
    assert math.prod(fullres.patch_size) / math.prod(fullres.median_shape) < 0.25
    assert math.prod(lowres.patch_size) / math.prod(lowres.median_shape) >= 0.25
    assert all(lo > full for lo, full in zip(lowres.spacing, fullres.spacing))
    check_valid(lowres, large, 8.0)
    small = plan_dataset(uniform((1.0, 1.0, 1.0), (160, 160, 160), 10)).configurations
    assert "3d_lowres" not in small and "3d_cascade_fullres" not in small


@pytest.mark.parametrize("wanted", [["2d"], ["3d_fullres"], ["3d_lowres"], ["2d", "3d_lowres"]])
def test_configs_selects_configurations(wanted):
    plan = plan_dataset(uniform((1.0, 1.0, 1.0), (400, 512, 512), 10), configs=wanted)
    assert sorted(plan.configurations) == sorted(wanted + (["3d_cascade_fullres"] if "3d_lowres" in wanted else []))


def test_unknown_configuration_is_a_plan_error_naming_it_and_the_choices():
    with pytest.raises(PlanError, match=r"'4d'.*2d, 3d_fullres, 3d_lowres"):
        plan_dataset(uniform((1.0, 1.0, 1.0), (64, 64, 64), 2), configs=["2d", "4d"])


def test_3d_configuration_of_2d_data_is_a_plan_error():
    with pytest.raises(PlanError, match="2D"):
        plan_dataset(uniform((1.0, 1.0), (64, 64), 2), configs=["3d_fullres"])


def test_non_positive_budget_is_a_plan_error():
    with pytest.raises(PlanError, match="gpu-memory-gb"):
        plan_dataset(uniform((1.0, 1.0), (64, 64), 2), gpu_memory_gb=0)


def test_plan_records_the_dataset_and_is_deterministic():
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(64, 64, 64)] * 3, num_labels=4)
    plan = plan_dataset(fp)
    assert plan == plan_dataset(fp)
    assert (plan.dataset_name, plan.planner, plan.gpu_memory_gb) == ("Dataset999_Test", "default", 8.0)
    assert plan.labels == fp.labels and plan.channel_names == ("T1",) and plan.image_ndim == 3
    assert plan.fingerprint_hash == schema.content_hash(fp)
    assert plan.configurations["3d_fullres"].network.num_classes == 4


# ---------------------------------------------------------------- plan.json strictness
@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    plan = plan_dataset(uniform((3.0, 0.8, 0.8), (40, 96, 96), 4))
    return schema.write_json_atomic(tmp_path / "plan.json", plan)


def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_plan_json_round_trip(plan_file):
    plan = load_plan(plan_file)
    assert plan == plan_dataset(uniform((3.0, 0.8, 0.8), (40, 96, 96), 4))
    assert round_trip(plan) == plan


@pytest.mark.parametrize("change, key_path, found", [
    (lambda d: d["configurations"]["2d"].update(patch_size="big"), "configurations.2d.patch_size", "big"),
    (lambda d: d["configurations"]["2d"]["patch_size"].__setitem__(1, 1.5), "configurations.2d.patch_size[1]", "1.5"),
    (lambda d: d["configurations"]["3d_fullres"].update(batch_size=True), "configurations.3d_fullres.batch_size", "True"),
    (lambda d: d["configurations"]["2d"]["normalization"][0].update(scheme="minmax"),
     "configurations.2d.normalization[0].scheme", "minmax"),
    (lambda d: d.update(gpu_memory_gb="8"), "plan.json.gpu_memory_gb", "'8'"),
])
def test_plan_json_wrong_type_names_the_key(plan_file, change, key_path, found):
    with pytest.raises(PlanError) as info:
        load_plan(edit(plan_file, change))
    assert key_path in str(info.value) and found in str(info.value)


def test_plan_json_unknown_key_names_it_and_the_known_keys(plan_file):
    edit(plan_file, lambda d: d["configurations"]["2d"]["network"].update(dropout=0.1))
    with pytest.raises(PlanError, match=r"configurations\.2d\.network: unknown key\(s\) \['dropout'\].*known keys"):
        load_plan(plan_file)


def test_plan_json_missing_key_names_it(plan_file):
    edit(plan_file, lambda d: d["configurations"]["3d_fullres"].pop("batch_size"))
    with pytest.raises(PlanError, match=r"configurations\.3d_fullres: missing key 'batch_size'"):
        load_plan(plan_file)


def test_plan_json_unsupported_schema_version_says_replan(plan_file):
    edit(plan_file, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(PlanError, match=rf"schema_version {SCHEMA_VERSION + 1} is not supported.*autoseg plan"):
        load_plan(plan_file)


def test_plan_json_that_is_not_json_names_the_file_and_line(plan_file):
    plan_file.write_text('{\n  "dataset_name": "x",\n  oops\n}')
    with pytest.raises(PlanError, match=r"plan\.json: not valid JSON .* line 3"):
        load_plan(plan_file)


def test_missing_plan_file_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="file not found"):
        load_plan(tmp_path / "nowhere" / "plan.json")
