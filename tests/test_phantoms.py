"""Synthetic phantoms (dataset layout, anatomy, physics) and the DTI fit (the low-dose simulator: test_xray_dose.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.modalities import dti
from autoseg.modalities.dwi import read_fsl_gradients, write_fsl_gradients
from autoseg.errors import ConfigError, DatasetError, RegistryError
from autoseg.io import read_image, read_label
from autoseg.phantoms import PHANTOMS, generate_case, write_example
from autoseg.phantoms.radiography import XRAY_MU, expose, project
from autoseg.phantoms.solids import Grid, Part, Solid, axial_rotation, coronal_rotation, sagittal_rotation

NAMES = ("cervical-xray", "lumbar-xray", "lumbar-ct", "skeleton-ct", "dti-cord")
CASES = 3


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """Every phantom written once (3 cases, seed 7) for the layout tests."""
    root = tmp_path_factory.mktemp("phantoms")
    return {name: write_example(name, root, cases=CASES, seed=7) for name in NAMES}


def read_case(folder: Path, case_id: str, ending: str):
    image, image_geometry = read_image(folder / "imagesTr" / f"{case_id}_0000{ending}")
    label, label_geometry = read_label(folder / "labelsTr" / f"{case_id}{ending}")
    return image[0], label, image_geometry, label_geometry


# ---------------------------------------------------------------- dataset layout, every phantom
def test_all_five_phantoms_are_registered():
    assert PHANTOMS.names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_phantom_writes_a_valid_nnunet_folder(datasets, name):
    folder = datasets[name]
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert meta["numTraining"] == CASES and list(meta["channel_names"]) == ["0"]
    assert sorted(meta["labels"].values()) == list(range(len(meta["labels"]))) and meta["labels"]["background"] == 0
    ending = meta["file_ending"]
    images, labels = sorted((folder / "imagesTr").iterdir()), sorted((folder / "labelsTr").iterdir())
    assert len(images) == len(labels) == CASES
    assert all(p.name.endswith(f"_0000{ending}") for p in images) and all(p.name.endswith(ending) for p in labels)
    seen = set()
    for path in labels:
        case_id = path.name[: -len(ending)]
        image, label, image_geometry, label_geometry = read_case(folder, case_id, ending)
        assert image.shape == label.shape and image_geometry.matches(label_geometry)
        assert np.unique(label).size >= 2, f"{case_id} has no foreground"
        seen |= set(np.unique(label).tolist())
    assert seen == set(meta["labels"].values())


@pytest.mark.parametrize("name", NAMES)
def test_cases_are_deterministic_per_seed_and_differ_between_cases(name):
    first, again = generate_case(name, index=1, seed=3), generate_case(name, index=1, seed=3)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    other_case, other_seed = generate_case(name, index=2, seed=3), generate_case(name, index=1, seed=4)
    for other in (other_case, other_seed):
        assert first.image.shape != other.image.shape or not np.array_equal(first.image, other.image)
        assert first.label.shape != other.label.shape or not np.array_equal(first.label, other.label)


def test_written_files_match_the_in_memory_case(datasets):
    case = generate_case("lumbar-ct", index=2, seed=7)
    image, label, geometry, _ = read_case(datasets["lumbar-ct"], "lct_002", ".nii.gz")
    np.testing.assert_array_equal(image, case.image)
    np.testing.assert_array_equal(label, case.label)
    assert geometry.matches(case.geometry)


def test_scale_option_makes_bigger_images():
    small, big = generate_case("lumbar-ct", scale=1.0), generate_case("lumbar-ct", scale=1.5)
    assert all(b > s for b, s in zip(big.image.shape, small.image.shape))
    assert big.geometry.spacing_zyx[1] < small.geometry.spacing_zyx[1]


# ---------------------------------------------------------------- user mistakes
def test_unknown_phantom_suggests_the_closest_name(tmp_path):
    with pytest.raises(RegistryError, match="Did you mean 'lumbar-ct'"):
        write_example("lumbar_ct", tmp_path)


def test_bad_options_and_counts_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*'shape'.*known options: .*scale"):
        write_example("lumbar-ct", tmp_path, shape=2)
    with pytest.raises(ConfigError, match="'scale'.*positive"):
        write_example("lumbar-ct", tmp_path, scale=-1.0)
    with pytest.raises(ConfigError, match="cases"):
        write_example("lumbar-ct", tmp_path, cases=0)
    with pytest.raises(ConfigError, match="at least 6 gradient directions"):
        generate_case("dti-cord", directions=5)


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    folder = write_example("lumbar-ct", tmp_path, cases=2)
    with pytest.raises(ConfigError, match="already holds a dataset.*overwrite"):
        write_example("lumbar-ct", tmp_path, cases=1)
    (folder / "notes.txt").write_text("mine")
    write_example("lumbar-ct", tmp_path, cases=1, overwrite=True)
    assert len(list((folder / "imagesTr").iterdir())) == 1
    assert (folder / "notes.txt").read_text() == "mine"  # only phantom files are replaced


# ---------------------------------------------------------------- anatomy and intensities
def test_lumbar_ct_is_anisotropic_hu_with_bone_in_every_level(datasets):
    image, label, geometry, _ = read_case(datasets["lumbar-ct"], "lct_000", ".nii.gz")
    assert np.issubdtype(image.dtype, np.integer) and image.min() >= -1024
    assert (image[label == 0] < -900).any(), "air outside the body"
    for value in range(1, 7):
        assert image[label == value].mean() > 200, f"label {value} is not bone-dense"
    dz, dy, dx = geometry.spacing_zyx
    assert dz > 2 * dy and dy == pytest.approx(dx)
    assert any(abs(o) > 1.0 for o in geometry.origin)


def test_skeleton_ct_has_dense_table_outside_the_bone_label(datasets):
    image, label, _, _ = read_case(datasets["skeleton-ct"], "skel_000", ".nii.gz")
    assert image[label == 1].mean() > 200
    posterior_bone = np.nonzero(label.any(axis=(0, 2)))[0].max()  # y grows toward the table
    below = (label[:, posterior_bone + 1 :, :] == 0) & (image[:, posterior_bone + 1 :, :] > 200)
    assert below.sum() > 100, "no dense table plate below the patient"


def test_skeleton_ct_lungs_are_optional():
    with_lungs, without = generate_case("skeleton-ct", lungs=True), generate_case("skeleton-ct", lungs=False)
    np.testing.assert_array_equal(with_lungs.label, without.label)  # same patient, same bones
    became_lung = (with_lungs.image < -700) & (without.image > -300)
    assert became_lung.sum() > 500
    assert ((without.image < -700) & (with_lungs.image > -300)).sum() == 0


def test_lumbar_xray_records_cycling_positions(datasets):
    positions = json.loads((datasets["lumbar-xray"] / "cases.json").read_text())
    assert [positions[f"lxr_{i:03d}"]["position"] for i in range(CASES)] == ["AP", "lateral", "oblique"]
    for entry, nominal in zip(positions.values(), (0.0, 90.0, 45.0)):
        assert abs(entry["angle_deg"] - nominal) <= 6.0


def test_radiographs_show_bone_brighter_than_surroundings(datasets):
    for name, case_id in (("cervical-xray", "cxr_000"), ("lumbar-xray", "lxr_001")):
        image, label, _, _ = read_case(datasets[name], case_id, ".png")
        assert image.dtype == np.uint16 and image.max() > 255
        assert image[label > 0].mean() > np.median(image[label == 0])


def test_dti_cord_writes_consistent_4d_diffusion_data(datasets):
    folder = datasets["dti-cord"]
    b0, label, geometry, _ = read_case(folder, "cord_001", ".nii.gz")
    dwi, dwi_geometry = read_image(folder / "dwi" / "cord_001_dwi.nii.gz")
    bvals, bvecs = read_fsl_gradients(folder / "dwi" / "cord_001.bval", folder / "dwi" / "cord_001.bvec")
    assert dwi.shape[0] >= 7 and dwi.shape[1:] == b0.shape and dwi_geometry.matches(geometry)
    assert len(bvals) == len(bvecs) == dwi.shape[0] and bvals[0] == 0
    np.testing.assert_allclose(np.linalg.norm(bvecs[bvals > 0], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(dwi[0], b0, rtol=1e-6)
    dz, dy, dx = geometry.spacing_zyx
    assert dz >= 4 * dy and dy == pytest.approx(dx)


# ---------------------------------------------------------------- DTI fitting
def test_fa_from_noiseless_phantom_matches_the_generating_fa():
    case = generate_case("dti-cord", snr=float("inf"))
    fit = dti.fit_tensor(case.extras["dwi"], case.extras["bvals"], case.extras["bvecs"])
    white = (case.label >= 1) & (case.label <= 6)
    assert np.abs(fit.fa[white] - case.extras["fa"][white]).max() < 0.05
    assert np.abs(fit.fa[white] - 0.7).max() < 0.05


def test_regional_metrics_on_noisy_phantom_separate_white_and_gray_matter():
    case = generate_case("dti-cord", seed=1)
    fit = dti.fit_tensor(case.extras["dwi"], case.extras["bvals"], case.extras["bvecs"])
    metrics = dti.regional_metrics(fit.fa, case.label, PHANTOMS.get("dti-cord").labels, md=fit.md)
    assert "background" not in metrics and len(metrics) == 8
    assert all(metrics[f"wm_lateral_{s}"]["FA_mean"] > metrics[f"gm_{s}"]["FA_mean"] + 0.2 for s in ("left", "right"))
    assert all(1e-4 < m["MD_mean"] < 3e-3 and m["voxels"] > 0 for m in metrics.values())


def test_tensor_fit_recovers_an_oblique_tensor_exactly():
    rotation = sagittal_rotation(30) @ coronal_rotation(-20) @ axial_rotation(50)
    tensor = rotation @ np.diag([1.7e-3, 0.5e-3, 0.3e-3]) @ rotation.T
    bvals = np.array([0.0] + [1000.0] * 12)
    bvecs = np.vstack([np.zeros(3), np.random.default_rng(0).normal(size=(12, 3))])
    bvecs[1:] /= np.linalg.norm(bvecs[1:], axis=1, keepdims=True)
    signal = 500.0 * np.exp(-bvals * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))
    fit = dti.fit_tensor(signal.reshape(-1, 1, 1), bvals, bvecs, mask=np.ones((1, 1), bool))
    np.testing.assert_allclose(fit.eigenvalues[0, 0], [1.7e-3, 0.5e-3, 0.3e-3], rtol=1e-6)
    assert fit.s0[0, 0] == pytest.approx(500.0)
    assert fit.md[0, 0] == pytest.approx(2.5e-3 / 3)


def test_fractional_anisotropy_limits_and_regional_metrics_bookkeeping():
    fa = dti.fractional_anisotropy(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(fa, [0.0, 1.0, 0.0], atol=1e-12)
    label = np.array([[1, 1, 0], [2, 0, 0]])
    fa_map = np.array([[0.2, 0.4, 0.9], [0.6, 0.9, 0.9]])
    metrics = dti.regional_metrics(fa_map, label, {"background": 0, "a": 1, "b": 2, "empty": 3})
    assert metrics["a"] == {"FA_mean": pytest.approx(0.3), "MD_mean": None, "voxels": 2}
    assert metrics["empty"] == {"FA_mean": None, "MD_mean": None, "voxels": 0}


def test_fsl_gradient_files_round_trip_and_reject_garbage(tmp_path):
    bvals, bvecs = np.array([0.0, 800.0, 800.0]), np.array([[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8]])
    write_fsl_gradients(tmp_path / "a.bval", tmp_path / "a.bvec", bvals, bvecs)
    assert len((tmp_path / "a.bvec").read_text().splitlines()) == 3
    read_vals, read_vecs = read_fsl_gradients(tmp_path / "a.bval", tmp_path / "a.bvec")
    np.testing.assert_allclose(read_vals, bvals)
    np.testing.assert_allclose(read_vecs, bvecs)
    (tmp_path / "a.bval").write_text("0 800\n")
    with pytest.raises(DatasetError, match="2 b-values but 3 directions"):
        read_fsl_gradients(tmp_path / "a.bval", tmp_path / "a.bvec")
    with pytest.raises(DatasetError, match="at least 6 non-collinear"):
        dti.fit_tensor(np.ones((3, 2, 2)), bvals, bvecs)


# ---------------------------------------------------------------- geometry and X-ray physics
@pytest.mark.parametrize("kind", ["ellipsoid", "cylinder", "box"])
def test_ray_silhouettes_agree_with_dense_inside_tests(kind):
    solid = Solid.make(kind, (1.0, -2.0, 3.0), (9.0, 5.0, 4.0), sagittal_rotation(35) @ axial_rotation(-50))
    z, y = np.meshgrid(np.linspace(-14, 16, 61), np.linspace(-16, 12, 57), indexing="ij")
    x = np.linspace(-20, 26, 1500)  # dense samples along each ray
    dense = solid.contains(z[..., None], y[..., None], x[None, None, :]).any(axis=-1)
    exact = solid.hit_by_rays(z, y)
    assert dense.sum() > 200 and (dense != exact).mean() < 0.01


def test_projection_follows_beer_lambert_and_poisson_statistics():
    slab = Part(Solid.make("box", (0.0, 0.0, 0.0), (40.0, 40.0, 50.0)), "water")  # 100 mm along x
    grid = Grid.centered((8, 8, 60), (2.0, 2.0, 2.5), (0.0, 0.0, 0.0))
    rng = np.random.default_rng(0)
    line, label = project([slab], 90.0, grid, XRAY_MU, lambda p: 1, (1,), rng)  # lateral beam: rays along x
    np.testing.assert_allclose(line, XRAY_MU["water"] * 100.0, rtol=0.03)
    assert label.all()
    counts, i0 = expose(np.full((200, 200), 2.0), 400.0, np.ones((200, 200), bool), rng)
    assert i0 == pytest.approx(400.0 * np.exp(2.0))
    assert counts.mean() == pytest.approx(400.0, rel=0.01) and counts.var() == pytest.approx(400.0, rel=0.05)
