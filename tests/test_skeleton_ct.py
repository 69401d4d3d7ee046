"""skeleton-ct (autoseg/tasks/skeleton_ct.py): table removal scored on the phantom that knows its
table, on a volume without one and on an empty one; clipping, both normalizations and the bone
prior against hand-computed values; the plan records every option; training preprocessing and
prediction apply the same step; 2D slices weighted toward bone; connected-component backends agree."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg import api
from autoseg.cli import app
from autoseg.config import ConfigPlan, NetworkPlan, NormalizationPlan, Plan, ResamplingPlan, load_plan
from autoseg.data.sampling import PatchSampler
from autoseg.errors import ConfigError, PreprocessingError
from autoseg.io import Geometry, read_image
from autoseg.modalities.ct_body import AIR_HU, body_mask, largest_component
from autoseg.normalization import normalize
from autoseg.phantoms import generate_case
from autoseg.preprocessing import load_case, preprocess_case, write_case
from autoseg.tasks import task_plan
from autoseg.tasks.profile import apply_task, resolve
from autoseg.tasks.skeleton_ct import SkeletonCtOptions, ct_normalization, prepare_skeleton_ct

NAME = "skeleton-ct"


def removal_figures(case) -> tuple[float, float]:
    """(share of table voxels removed, share of body voxels kept) for the phantom case."""
    body = body_mask(case.image.astype(np.float32), case.geometry.spacing_zyx)
    table, truth = case.extras["table_mask"], case.extras["body_mask"]
    return 1 - np.count_nonzero(body & table) / np.count_nonzero(table), np.count_nonzero(body & truth) / np.count_nonzero(truth)


def options(**given) -> SkeletonCtOptions:
    return SkeletonCtOptions(**{"clip_hu": (-200.0, 1200.0), **given})


# ---------------------------------------------------------------- table removal
@pytest.mark.parametrize("prone", [False, True])
def test_table_removal_on_the_phantom_removes_the_table_and_keeps_the_body(prone):
    removed, kept = removal_figures(generate_case(NAME, 1, seed=0, scale=1.5, prone=prone))
    assert removed >= 0.99
    assert kept >= 0.999


def test_a_volume_without_a_table_loses_nothing():
    trunk = _trunk_with_arms()
    out = prepare_skeleton_ct(trunk[None], Geometry.default(3, (5.0, 2.0, 2.0)), options(clip_hu=(-1024.0, 3071.0)), "bare")
    assert np.array_equal(out[0], trunk)  # nothing removed
    case = generate_case(NAME, 2, seed=0, scale=1.0)
    hu = np.where(case.extras["table_mask"], np.int16(AIR_HU), case.image).astype(np.float32)  # the phantom, table taken away
    out = prepare_skeleton_ct(hu[None], case.geometry, options(clip_hu=(-1024.0, 3071.0)), "notable")
    tissue = hu > -500
    assert np.count_nonzero((out[0] != hu) & tissue) <= 1e-4 * np.count_nonzero(tissue)


def _trunk_with_arms() -> np.ndarray:
    """A trunk with an arm on each side, joined to it by the shoulders in the top slices only."""
    hu = np.full((12, 40, 60), AIR_HU, np.float32)
    y, x = np.ogrid[:40, :60]
    hu[:, ((y - 18) / 12.0) ** 2 + ((x - 30) / 16.0) ** 2 <= 1] = 40.0
    for cx in (6, 54):
        hu[:, (y - 18) ** 2 + (x - cx) ** 2 <= 16] = 50.0
    hu[:3, 14:22, 6:54] = 45.0
    return hu


def test_arms_joined_at_the_shoulders_are_kept_and_a_touching_table_is_cut_off():
    hu = _trunk_with_arms()
    hu[:, 31:33, 2:58] = 600.0  # a dense table plate ...
    hu[:, 30, 28:32] = 300.0  # ... touching the back along a thin bridge
    body = body_mask(hu, (5.0, 2.0, 2.0), opening_mm=4.0)
    assert body[:, 18, 6].all() and body[:, 18, 54].all()  # both arms, in every slice
    assert not body[:, 31:33, 2:20].any() and not body[:, 31:33, 40:58].any()  # the table


def test_an_empty_volume_is_a_per_case_error_naming_the_case():
    config = _planned_config()
    air = np.full((1, 8, 16, 16), AIR_HU, np.float32)
    with pytest.raises(PreprocessingError, match="case 'empty_01'.*no body found"):
        preprocess_case(air, Geometry.default(3, (5.0, 2.0, 2.0)), None, config, "empty_01")


def test_cc3d_and_scipy_find_the_same_largest_component():
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(20, 30, 30)) > 0.6
    assert np.array_equal(largest_component(mask, "cc3d"), largest_component(mask, "scipy"))


# ---------------------------------------------------------------- clipping, normalization, bone prior
def _square_body() -> tuple[np.ndarray, Geometry]:
    """Air around a 6x6 block whose values are known: -400 (below the window), 0, 100, 2000 (above)."""
    hu = np.full((2, 12, 12), AIR_HU, np.float32)
    hu[:, 3:9, 3:9] = np.array([-400.0, 0.0, 100.0, 2000.0] * 9, np.float32).reshape(6, 6)
    return hu[None], Geometry.default(3, (3.0, 1.0, 1.0))


def test_clipping_and_the_bone_prior_by_hand():
    image, geometry = _square_body()
    out = prepare_skeleton_ct(image, geometry, options(clip_hu=(-200.0, 1200.0), bone_prior=True, bone_prior_hu=150.0,
                                                       opening_mm=0.0, body_threshold_hu=-500.0), "square")
    assert out.shape == (2, 2, 12, 12)
    body = out[0][:, 3:9, 3:9]
    assert set(np.unique(body)) == {-200.0, 0.0, 100.0, 1200.0}  # -400 -> -200, 2000 -> 1200
    assert (out[0][:, :3] == -200.0).all()  # air clipped to the window's floor
    assert np.array_equal(out[1] == 1.0, image[0] > 150.0) and set(np.unique(out[1])) == {0.0, 1.0}


def test_intra_normalization_uses_the_patients_own_statistics_inside_the_body():
    image, geometry = _square_body()
    out = prepare_skeleton_ct(image, geometry, options(normalization="intra", opening_mm=0.0), "square")
    inside = np.array([-200.0, 0.0, 100.0, 1200.0])  # clipped block values, equally often
    mean, std = inside.mean(), inside.std()
    assert np.allclose(out[0][:, 3:9, 3:9], (np.clip(image[0][:, 3:9, 3:9], -200, 1200) - mean) / std, atol=1e-5)
    assert np.allclose(out[0][:, 0, 0], (-200.0 - mean) / std)  # outside: the clipped air, same statistics


def test_inter_normalization_is_the_dataset_ct_scheme_with_the_task_window():
    planned = (NormalizationPlan("ct", False, -100.0, 900.0, 250.0, 300.0),)
    inter = ct_normalization(options(clip_hu=(-200.0, 1200.0)), planned)
    assert inter == (NormalizationPlan("ct", False, -200.0, 1200.0, 250.0, 300.0),)
    image, _ = _square_body()
    expected = (np.clip(image, -200.0, 1200.0) - 250.0) / 300.0
    assert np.allclose(normalize(image, inter), expected)
    assert ct_normalization(options(normalization="intra"), planned) == (NormalizationPlan("none"),)


# ---------------------------------------------------------------- the plan and the two paths through the step
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return api.example(NAME, tmp_path_factory.mktemp("skel") / "data", cases=2, seed=0, scale=0.5)


def _planned_config(**given):
    """A 2d configuration with the task applied, without planning a dataset (window given)."""
    network = NetworkPlan("unet", 2, 1, 2, (8, 16), ((3, 3), (3, 3)), ((1, 1), (2, 2)))
    config = ConfigPlan("2d", (2.0, 2.0), (16, 16), (16, 16), 2, network,
                        (NormalizationPlan("ct", False, -100.0, 900.0, 250.0, 300.0),), ResamplingPlan(), ())
    plan = Plan("Dataset999_T", "default", 8.0, {"background": 0, "bone": 1}, ("CT",), ".nii.gz", 3, "x", {"2d": config})
    return apply_task(plan, task_plan(NAME, given)).configurations["2d"]


def test_plan_cli_records_every_option_and_the_added_channel(phantom, tmp_path):
    result = CliRunner().invoke(app, ["plan", str(phantom), "-w", str(tmp_path / "work"), "--task", NAME,
                                      "--normalization", "intra", "--task-option", "bone_prior=true",
                                      "--task-option", "opening_mm=8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    plan_path = next((tmp_path / "work").rglob("plan.json"))
    config = json.loads(plan_path.read_text())["configurations"]["2d"]
    recorded = config["task"]["options"]
    assert set(recorded) == set(SkeletonCtOptions.__dataclass_fields__)
    assert recorded["normalization"] == "intra" and recorded["bone_prior"] is True and recorded["opening_mm"] == 8.0
    assert recorded["remove_table"] is True and len(recorded["clip_hu"]) == 2  # the window filled from the dataset
    assert config["network"]["in_channels"] == 2
    assert [n["scheme"] for n in config["normalization"]] == ["none", "none"]  # intra in the step; the prior as is
    assert list(load_plan(plan_path).configurations) == ["2d"]


def test_task_options_without_a_task_are_refused(phantom, tmp_path):
    result = CliRunner().invoke(app, ["plan", str(phantom), "-w", str(tmp_path / "work"), "--normalization", "intra"])
    assert result.exit_code == 2 and "--task" in result.output
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("plan.json"))


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ConfigError, match="bone_slice_share"):
        task_plan(NAME, {"bone_slice_share": 1.5})
    with pytest.raises(ConfigError, match="normalization"):
        task_plan(NAME, {"normalization": "global"})


def test_training_preprocessing_and_prediction_apply_the_same_step(phantom, tmp_path):
    plan, _ = api.plan(phantom, tmp_path / "work", workers=1, task=NAME, task_options={"bone_prior": True})
    folder = api.preprocess(phantom, "2d", tmp_path / "work", workers=1)
    image, geometry = read_image(phantom / "imagesTr" / "skel_000_0000.nii.gz")
    stored, _, _ = load_case(folder, "skel_000", mmap=False)
    predicted, _, _ = preprocess_case(image.astype(np.float32), geometry, None, plan.configurations["2d"], "skel_000")
    assert stored.shape[0] == 2 and np.array_equal(stored, predicted)  # CT and bone prior, byte for byte
    mask, mask_geometry = read_image(folder / "skel_000_body_mask.nii.gz")  # kept beside the case
    assert mask_geometry == geometry and mask.shape[1:] == image.shape[1:]
    table = generate_case(NAME, 0, seed=0, scale=0.5).extras["table_mask"]
    assert not (mask[0].astype(bool) & table).any()


def test_the_model_takes_the_dataset_channels_and_adds_the_prior_itself():
    config = _planned_config(bone_prior=True)
    from autoseg.inference.ensemble import Ensemble, Member

    ensemble = Ensemble((Member(Path("x"), None, config, 3),), {"background": 0, "bone": 1}, ("CT",))
    assert config.network.in_channels == 2 and ensemble.in_channels == 1
    assert resolve(config.task)[1].clip_hu == (-100.0, 900.0)  # filled from the planned CT window


def test_predicted_bone_outside_the_body_becomes_background():
    from autoseg.tasks.profile import PredictedCase
    from autoseg.tasks.skeleton_ct import bone_inside_body

    hu = _trunk_with_arms()
    labels = np.ones(hu.shape, np.uint8)  # bone everywhere, the air around the patient included
    case = PredictedCase("c", hu[None], Geometry.default(3, (5.0, 2.0, 2.0)), labels, {"background": 0, "bone": 1})
    kept = bone_inside_body(case, options())
    assert np.array_equal(kept.astype(bool), body_mask(hu, (5.0, 2.0, 2.0)))
    assert kept[hu > -500].all() and not kept[:, :4, :].any()  # every tissue voxel, none of the air above
    assert np.array_equal(bone_inside_body(case, options(remove_table=False)), labels)  # without removal: as predicted


# ---------------------------------------------------------------- bone-weighted slices
def _slab_folder(folder: Path) -> None:
    """A 20-slice case whose foreground fills slices 3 and 4 only."""
    seg = np.zeros((1, 20, 8, 8), np.int8)
    seg[0, 3:5] = 1
    spatial = [20, 8, 8]
    properties = {"case_id": "vol", "original_shape": spatial, "original_geometry": Geometry.default(3).to_dict(),
                  "crop_bbox": [[0, n] for n in spatial], "cropped_shape": spatial, "resampled_shape": spatial,
                  "spacing_before": [1.0] * 3, "spacing_after": [1.0] * 3, "class_locations_file": "vol_locations.npz"}
    write_case(folder, np.zeros((1, 20, 8, 8), np.float32), seg, properties)


@pytest.mark.parametrize("share, low, high", [(0.0, 0.0, 0.25), (0.5, 0.4, 0.7), (1.0, 1.0, 1.0)])
def test_random_2d_slices_come_from_bone_slices_with_the_given_share(tmp_path, share, low, high):
    _slab_folder(tmp_path)
    sampler = PatchSampler(tmp_path, ["vol"], (8, 8), batch_size=4, oversample_foreground=0.0, seed=0,
                           foreground_slice_share=share)
    hits = [bool(t.any()) for _ in range(100) for t in sampler.sample_batch()["target"]]
    assert low <= np.mean(hits) <= high  # without the share 2 of 20 slices: 10%


def test_a_plan_without_the_share_samples_as_before(tmp_path):
    _slab_folder(tmp_path)
    plain = PatchSampler(tmp_path, ["vol"], (8, 8), 4, oversample_foreground=0.0, seed=3)
    zero = PatchSampler(tmp_path, ["vol"], (8, 8), 4, oversample_foreground=0.0, seed=3, foreground_slice_share=0.0)
    assert all(np.array_equal(plain.sample_batch()["target"], zero.sample_batch()["target"]) for _ in range(10))


# ---------------------------------------------------------------- autoseg remove-table
def test_remove_table_cli_writes_the_ct_without_table_mask_and_picture_with_the_input_geometry(tmp_path):
    from autoseg.io import write_image

    hu = _trunk_with_arms()
    hu[:, 31:33, 2:58] = 600.0  # a table plate under the patient
    geometry = Geometry((2.0, 2.0, 5.0), (1.0, -2.0, 3.0), tuple(float(v) for v in np.eye(3).ravel()))  # x, y, z
    write_image(tmp_path / "ct.nii.gz", hu.astype(np.int16), geometry)
    result = CliRunner().invoke(app, ["remove-table", str(tmp_path / "ct.nii.gz"), str(tmp_path / "clean.nii.gz"),
                                      "--mask", str(tmp_path / "body.nii.gz"), "--picture", str(tmp_path / "look.png"),
                                      "--opening-mm", "4"])
    assert result.exit_code == 0, result.output
    clean, clean_geometry = read_image(tmp_path / "clean.nii.gz")
    assert clean_geometry == read_image(tmp_path / "ct.nii.gz")[1] and clean.dtype == np.int16
    assert (clean[0][:, 31:33, 2:20] == AIR_HU).all() and np.array_equal(clean[0][hu == 40.0], hu[hu == 40.0])
    assert read_image(tmp_path / "body.nii.gz")[0].max() == 1 and (tmp_path / "look.png").stat().st_size > 0


def test_remove_table_cli_refuses_an_empty_volume_and_writes_nothing(tmp_path):
    from autoseg.io import write_image

    write_image(tmp_path / "air.nii.gz", np.full((4, 8, 8), -1000, np.int16), Geometry.default(3, (5.0, 2.0, 2.0)))
    result = CliRunner().invoke(app, ["remove-table", str(tmp_path / "air.nii.gz"), str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 2 and "no body found" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["air.nii.gz"]
