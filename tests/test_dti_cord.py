"""The dti-cord task: DWI reading and the b=0 image, dipy's tensor fit against the log-linear one,
the eight-region rule, regional metrics and the FA-index error, and the dti-* commands (bad input:
exit code 2 naming the file, nothing written), then prediction straight from DWI folders."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg import api
from autoseg.cli import EXIT_PROBLEM, app
from autoseg.errors import ConfigError, DatasetError
from autoseg.io import Geometry, read_image, read_label, write_image
from autoseg.modalities import dti, dwi
from autoseg.phantoms import PHANTOMS, generate_case
from autoseg.tasks import task_plan
from autoseg.tasks.cord_regions import FALLBACK_HORN_DEG, REGIONS, eight_regions, fill_missing, horn_angles, physical_xy
from autoseg.tasks.dti_metrics import error_summary, fa_index_error

WIDE = {"COLUMNS": "250"}
FAST = {"epochs": 1, "iters_per_epoch": 2, "val_iters": 1, "workers": 0}


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def write_dwi(folder: Path, name: str, data: np.ndarray, bvals, bvecs, geometry: Geometry | None = None,
              gradients: str | None = None) -> Path:
    """A 4D DWI (volumes first) with NAME.bval/.bvec (or `gradients`.bval/.bvec) beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    geometry = geometry or Geometry((1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    path = write_image(folder / f"{name}.nii.gz", np.asarray(data, np.float32), geometry)
    stem = gradients or name
    dwi.write_fsl_gradients(folder / f"{stem}.bval", folder / f"{stem}.bvec", bvals, bvecs)
    return path


def tensor_signal(tensor: np.ndarray, bvals, bvecs, s0: float = 1000.0) -> np.ndarray:
    return s0 * np.exp(-np.asarray(bvals) * np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs))


def scheme(directions: int = 12, b: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    from autoseg.phantoms.dti_cord import gradient_scheme

    return gradient_scheme(directions, b)


# ---------------------------------------------------------------- the b=0 image
def test_mean_b0_takes_low_b_volumes_in_any_order():
    bvals = np.array([1000.0, 0.0, 750.0, 5.0, 1000.0, 40.0, 60.0])
    data = np.stack([np.full((2, 3, 3), float(i)) for i in range(len(bvals))])
    np.testing.assert_allclose(dwi.mean_b0(data, bvals), (1 + 3 + 5) / 3)  # b 0, 5, 40; not 60
    np.testing.assert_allclose(dwi.mean_b0(data, bvals, threshold=0), 1.0)
    with pytest.raises(DatasetError, match="no volume with b <= 50.*1000"):
        dwi.mean_b0(data[[0, 2, 4]], bvals[[0, 2, 4]])


def test_aligning_b0_volumes_undoes_a_translation():
    rng = np.random.default_rng(0)
    base = np.zeros((4, 32, 32), np.float32)
    base[:, 10:20, 12:22] = 100.0
    base += rng.normal(0, 1, base.shape).astype(np.float32)
    moved = np.roll(base, (3, -2), axis=(1, 2))
    data, bvals = np.stack([base, moved, base]), np.array([0.0, 0.0, 1000.0])
    aligned = dwi.mean_b0(data, bvals, align=True)
    plain = dwi.mean_b0(data, bvals)
    assert np.abs(aligned - base).mean() < 0.25 * np.abs(plain - base).mean()


def test_gradient_files_are_found_in_each_documented_layout(tmp_path):
    bvals, bvecs = scheme(6)
    data = np.ones((7, 2, 4, 4))
    fsl = write_dwi(tmp_path / "fsl", "sub-01_dwi", data, bvals, bvecs)
    phantom = write_dwi(tmp_path / "phantom", "cord_001_dwi", data, bvals, bvecs, gradients="cord_001")
    shared = write_dwi(tmp_path / "shared", "dmri", data, bvals, bvecs, gradients="bvals")
    (tmp_path / "shared" / "bvals.bvec").rename(tmp_path / "shared" / "bvecs")
    (tmp_path / "shared" / "bvals.bval").rename(tmp_path / "shared" / "bvals")
    assert dwi.find_gradient_files(fsl)[0].name == "sub-01_dwi.bval"
    assert dwi.find_gradient_files(phantom)[0].name == "cord_001.bval"
    assert dwi.find_gradient_files(shared) == (tmp_path / "shared" / "bvals", tmp_path / "shared" / "bvecs")
    assert [dwi.case_id_of(p) for p in (fsl, phantom, shared)] == ["sub-01", "cord_001", "dmri"]
    series = dwi.read_dwi(phantom)
    assert series.data.shape == (7, 2, 4, 4) and len(series.bvals) == 7


# ---------------------------------------------------------------- tensor fit: dipy against log-linear
def test_dipy_fit_recovers_a_known_tensor_and_names_unknown_methods():
    bvals, bvecs = scheme(12)
    tensor = np.diag([1.7e-3, 0.3e-3, 0.3e-3])
    signal = tensor_signal(tensor, bvals, bvecs).reshape(-1, 1, 1)
    for method in ("WLS", "OLS"):
        fit = dti.fit_tensor(signal, bvals, bvecs, mask=np.ones((1, 1), bool), fit_method=method)
        np.testing.assert_allclose(fit.eigenvalues[0, 0], [1.7e-3, 0.3e-3, 0.3e-3], rtol=1e-6)
        assert fit.ad[0, 0] == pytest.approx(1.7e-3) and fit.rd[0, 0] == pytest.approx(0.3e-3)
        assert fit.fa[0, 0] == pytest.approx(np.sqrt(0.5) * np.sqrt(2 * 1.4e-3**2) / np.sqrt(1.7e-3**2 + 2 * 0.3e-3**2))
    with pytest.raises(DatasetError, match="'LSQ' is unknown"):
        dti.fit_tensor(signal, bvals, bvecs, fit_method="LSQ")


def test_dipy_wls_and_log_linear_agree_on_the_noisy_phantom():
    """Tolerance: mean |FA difference| below 0.03 in white and gray matter at b=800, SNR 20 (the
    phantom's defaults); WLS is at least as close to the generating FA as the unweighted fit."""
    case = generate_case("dti-cord", seed=2)
    dwi_data, bvals, bvecs = case.extras["dwi"], case.extras["bvals"], case.extras["bvecs"]
    wls, loglinear = dti.fit_tensor(dwi_data, bvals, bvecs), dti.fit_tensor_loglinear(dwi_data, bvals, bvecs)
    cord = case.label > 0
    assert np.abs(wls.fa - loglinear.fa)[cord].mean() < 0.03
    truth = case.extras["fa"][cord]
    assert np.abs(wls.fa[cord] - truth).mean() <= np.abs(loglinear.fa[cord] - truth).mean() + 1e-3
    assert abs(wls.fa[(case.label >= 1) & (case.label <= 6)].mean() - 0.7) < 0.06


@pytest.mark.shared
def test_dipy_wls_and_log_linear_agree_on_the_real_dwi(shared_data):
    """Real DWI (b=750, 6 directions, noisy): median |FA difference| below 0.1 where the b=0
    signal is in its top tenth."""
    series = dwi.read_dwi(shared_data / "DTI_cord_raw" / "dmri.nii.gz")
    wls = dti.fit_tensor(series.data, series.bvals, series.bvecs)
    loglinear = dti.fit_tensor_loglinear(series.data, series.bvals, series.bvecs)
    bright = series.data[0] > np.percentile(series.data[0], 90)
    assert np.median(np.abs(wls.fa - loglinear.fa)[bright]) < 0.1


# ---------------------------------------------------------------- the eight-region rule
def cord_slice(shape=(40, 40), spacing=0.5, angle_deg=0.0) -> tuple[np.ndarray, np.ndarray]:
    """A cord (ellipse 6 x 4 mm) with a butterfly of gray matter, in-plane rotated by `angle_deg`;
    returns the tissue map (1 white, 2 gray) and the phantom-style region truth."""
    from autoseg.phantoms.dti_cord import gray_matter

    y, x = (np.indices(shape) - (np.array(shape)[:, None, None] - 1) / 2) * spacing
    a = np.radians(angle_deg)
    left, posterior = x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)
    cord = (posterior / 4.0) ** 2 + (left / 6.0) ** 2 <= 1
    gm = cord & gray_matter(posterior, left)
    return np.where(gm, 2, np.where(cord, 1, 0)).astype(np.uint8), left


def volume(tissue_slice: np.ndarray, slices: int = 3) -> np.ndarray:
    return np.repeat(tissue_slice[None], slices, axis=0)


GEOMETRY = Geometry((0.5, 0.5, 5.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def test_regions_of_a_symmetric_cord_mirror_left_and_right():
    tissue, left = cord_slice()
    regions = eight_regions(volume(tissue), GEOMETRY)[1]
    for name in ("wm_dorsal", "wm_lateral", "wm_ventral", "gm"):
        on_left, on_right = regions == REGIONS[f"{name}_left"], regions == REGIONS[f"{name}_right"]
        assert on_left.sum() > 0 and np.array_equal(on_left, on_right[:, ::-1]), name
        assert np.all(left[on_left] >= 0) and np.all(left[on_right] < 0)  # world +x is the patient's left (LPS)
    y = np.indices(tissue.shape)[0]
    dorsal, ventral = np.isin(regions, [1, 2]), np.isin(regions, [5, 6])
    assert y[dorsal].mean() > y[ventral].mean()  # +y is posterior
    assert np.array_equal(regions > 0, tissue > 0) and np.array_equal(np.isin(regions, [7, 8]), tissue == 2)


def test_regions_follow_the_direction_matrix_and_an_in_plane_rotation():
    tissue, _ = cord_slice()
    regions = eight_regions(volume(tissue), GEOMETRY)
    flipped = Geometry(GEOMETRY.spacing, (19.5, 0.0, 0.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))  # x stored right to left
    assert np.array_equal(eight_regions(volume(tissue[:, ::-1]), flipped)[:, :, ::-1], regions)
    rotated, _ = cord_slice(angle_deg=25.0)
    turned = eight_regions(volume(rotated), GEOMETRY)[1]
    y, x = (np.indices(tissue.shape) - 19.5) * 0.5
    a = np.radians(25.0)  # sample the unrotated regions at each rotated voxel's cord coordinates
    ly, lx = np.rint((-x * np.sin(a) + y * np.cos(a)) / 0.5 + 19.5).astype(int), np.rint((x * np.cos(a) + y * np.sin(a)) / 0.5 + 19.5).astype(int)
    inside = (turned > 0) & (ly >= 0) & (ly < 40) & (lx >= 0) & (lx < 40)
    assert (turned[inside] == regions[1][ly[inside], lx[inside]]).mean() > 0.9


def test_a_slice_without_gray_matter_borrows_its_neighbours_horns():
    tissue, _ = cord_slice()
    stack = volume(tissue, 3)
    stack[0][stack[0] == 2] = 1  # no gray matter on the first slice
    regions = eight_regions(stack, GEOMETRY)
    assert not np.isin(regions[0], [7, 8]).any()
    np.testing.assert_array_equal(regions[0][tissue == 1], regions[1][tissue == 1])
    xy = physical_xy((1, *tissue.shape), GEOMETRY)[:, 0]
    assert horn_angles(stack[0] == 1, stack[0] == 2, xy) is None
    fallback = fill_missing([None, None])[0]
    assert fallback.dorsal == (FALLBACK_HORN_DEG[0],) * 2 and fallback.ventral == (FALLBACK_HORN_DEG[1],) * 2


def test_the_rule_reproduces_most_of_the_phantoms_own_regions():
    case = generate_case("dti-cord", seed=4)
    tissue = np.where(case.label >= 7, 2, np.where(case.label > 0, 1, 0))
    regions = eight_regions(tissue, case.geometry)
    assert (regions == case.label)[case.label > 0].mean() > 0.9
    assert REGIONS == PHANTOMS.get("dti-cord").labels


def test_labels_other_than_white_and_gray_matter_are_refused():
    tissue, _ = cord_slice()
    tissue[0, 0] = 5
    with pytest.raises(DatasetError, match=r"label values \[5\]"):
        eight_regions(volume(tissue), GEOMETRY, where="x.nii.gz")


# ---------------------------------------------------------------- FA-index error
def test_fa_index_error_and_its_summary_by_hand():
    assert fa_index_error(0.45, 0.5) == pytest.approx(10.0)
    assert fa_index_error(0.55, 0.5) == pytest.approx(10.0)
    assert fa_index_error(None, 0.5) is None and fa_index_error(0.5, 0.0) is None
    rows = [{"region": "gm_left", "FA_error_percent": 4.0}, {"region": "gm_right", "FA_error_percent": 8.0},
            {"region": "gm_left", "FA_error_percent": 6.0}, {"region": "gm_right", "FA_error_percent": None}]
    summary = {row["region"]: row for row in error_summary(rows)}
    assert summary["gm"]["left_mean"] == pytest.approx(5.0) and summary["gm"]["left_sd"] == pytest.approx(1.0)
    assert summary["gm"]["right_mean"] == pytest.approx(8.0) and summary["gm"]["right_cases"] == 1
    assert summary["all"]["both_mean"] == pytest.approx(6.0)


def test_dti_metrics_fa_error_matches_a_hand_computed_value(tmp_path):
    """Noise-free voxels of two known tensors: FA sqrt(1/2) sqrt(2 x 1.4^2) / sqrt(1.7^2 + 2 x 0.3^2)
    = 0.79902 (eigenvalues 1.7, 0.3, 0.3 um^2/ms) and sqrt(1/2) sqrt(2 x 0.5^2) / sqrt(1.5) = 0.40825
    (1, 0.5, 0.5). Reference gray matter: 4 voxels of the first; prediction: 3 of them and 1 of the
    second, so FA(pred) = (3 x 0.79902 + 0.40825) / 4 = 0.70133 and the error is 12.23 %."""
    bvals, bvecs = scheme(12)
    strong, weak = np.diag([1.7e-3, 0.3e-3, 0.3e-3]), np.diag([1.0e-3, 0.5e-3, 0.5e-3])
    data = np.zeros((len(bvals), 1, 2, 4))
    data[:, 0, 0, :] = tensor_signal(strong, bvals, bvecs)[:, None]
    data[:, 0, 1, :] = tensor_signal(weak, bvals, bvecs)[:, None]
    geometry = Geometry((1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_dwi(tmp_path / "dwi", "c1_dwi", data, bvals, bvecs, geometry, gradients="c1")
    ref, pred = np.zeros((1, 2, 4), np.uint8), np.zeros((1, 2, 4), np.uint8)
    ref[0, 0, :] = 2
    pred[0, 0, :3], pred[0, 1, 0] = 2, 2
    write_image(tmp_path / "ref" / "c1.nii.gz", ref, geometry)
    write_image(tmp_path / "pred" / "c1.nii.gz", pred, geometry)
    result = invoke("dti-metrics", "-i", tmp_path / "dwi", "-p", tmp_path / "pred", "-r", tmp_path / "ref",
                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    fa_strong, fa_weak = 0.79902, 0.40825
    expected = abs((3 * fa_strong + fa_weak) / 4 - fa_strong) / fa_strong * 100
    rows = {r["region"]: r for r in csv.DictReader((tmp_path / "out" / "fa_error.csv").open())}
    assert float(rows["gray_matter"]["FA_error_percent"]) == pytest.approx(expected, rel=1e-3)
    assert expected == pytest.approx(12.23, abs=0.01)
    sct = list(csv.DictReader((tmp_path / "out" / "dti_metrics.csv").open()))
    gm_fa = [r for r in sct if r["Metric"] == "FA" and r["Label"] == "gray_matter"]
    assert gm_fa[0]["Size [vox]"] == "4" and float(gm_fa[0]["BIN()"]) == pytest.approx((3 * fa_strong + fa_weak) / 4, rel=1e-3)
    assert {r["Metric"] for r in sct} == {"FA", "MD", "AD", "RD"}


# ---------------------------------------------------------------- commands refuse bad input, naming the file
@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return api.example("dti-cord", tmp_path_factory.mktemp("dti") / "data", cases=3, seed=0, scale=0.5, slices=4)


def test_dti_prepare_writes_a_valid_dataset_with_tensor_channels(phantom, tmp_path):
    result = invoke("dti-prepare", phantom, "-o", tmp_path / "prep", "--channels", "b0,fa,md")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "prep" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR_B0", "1": "FA", "2": "MD"} and meta["numTraining"] == 3
    assert meta["task"] == {"name": "dti-cord", "options": task_plan("dti-cord", {"channels": ["b0", "fa", "md"]}).options}
    assert invoke("validate", tmp_path / "prep").exit_code == 0
    b0, _ = read_image(tmp_path / "prep" / "imagesTr" / "cord_001_0000.nii.gz")
    original, _ = read_image(phantom / "imagesTr" / "cord_001_0000.nii.gz")
    np.testing.assert_allclose(b0, original, rtol=1e-6)  # one b=0 volume: the mean is that volume
    fa, _ = read_image(tmp_path / "prep" / "imagesTr" / "cord_001_0001.nii.gz")
    label, _ = read_label(tmp_path / "prep" / "labelsTr" / "cord_001.nii.gz")
    assert fa[0][np.isin(label, [1, 2, 3, 4, 5, 6])].mean() > fa[0][np.isin(label, [7, 8])].mean() + 0.2
    refused = invoke("dti-prepare", phantom, "-o", tmp_path / "prep")
    assert refused.exit_code == EXIT_PROBLEM and "must be new or empty" in refused.output


@pytest.mark.parametrize("problem", ["short_bval", "three_d", "no_gradients"])
def test_bad_dwi_input_is_refused_naming_the_file_and_nothing_is_written(tmp_path, problem):
    bvals, bvecs = scheme(6)
    raw = tmp_path / "raw"
    if problem == "three_d":
        write_image(raw / "scan.nii.gz", np.ones((2, 4, 4), np.float32), GEOMETRY)
        expected = "scan.nii.gz: a 3D image where a 4D diffusion series is expected"
    else:
        write_dwi(raw, "scan", np.ones((7, 2, 4, 4)), bvals[:6] if problem == "short_bval" else bvals,
                  bvecs[:6] if problem == "short_bval" else bvecs)
        if problem == "no_gradients":
            (raw / "scan.bvec").unlink()
            expected = "scan.nii.gz: no gradient files beside it"
        else:
            expected = "scan.nii.gz: 7 volumes, but"
    for command in (("dti-prepare", raw / "scan.nii.gz", "-o", tmp_path / "out"),
                    ("dti-metrics", "-i", raw / "scan.nii.gz", "-p", raw, "-o", tmp_path / "out")):
        result = invoke(*command)
        assert result.exit_code == EXIT_PROBLEM, result.output
        assert expected in " ".join(result.output.split()), result.output
        assert files_under(tmp_path / "out") == []


def test_bval_and_bvec_files_that_disagree_are_refused(tmp_path):
    bvals, bvecs = scheme(6)
    path = write_dwi(tmp_path, "scan", np.ones((7, 2, 4, 4)), bvals, bvecs)
    (tmp_path / "scan.bvec").write_text("0 1\n0 0\n0 0\n")
    with pytest.raises(DatasetError, match="scan.bval.*scan.bvec: 7 b-values but 2 directions"):
        dwi.read_dwi(path)


def test_dti_regions_turns_a_dataset_into_an_eight_region_dataset(tmp_path, make_dataset):
    tissue, _ = cord_slice()
    source = tmp_path / "Dataset001_Cord"
    for name in ("a", "b"):
        write_image(source / "imagesTr" / f"{name}_0000.nii.gz", volume(tissue).astype(np.float32) * 100, GEOMETRY)
        write_image(source / "labelsTr" / f"{name}.nii.gz", volume(tissue), GEOMETRY)
    (source / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2star"}, "numTraining": 2,
                                                     "labels": {"background": 0, "white_matter": 1, "gray_matter": 2},
                                                     "file_ending": ".nii.gz"}))
    result = invoke("dti-regions", source, "-o", tmp_path / "regions")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "regions" / "dataset.json").read_text())["labels"] == REGIONS
    labels, geometry = read_label(tmp_path / "regions" / "labelsTr" / "a.nii.gz")
    assert set(np.unique(labels)) == set(REGIONS.values()) and geometry.matches(GEOMETRY)
    assert invoke("validate", tmp_path / "regions").exit_code == 0
    bad = volume(tissue)
    bad[0, 0, 0] = 3
    write_image(source / "labelsTr" / "b.nii.gz", bad, GEOMETRY)
    refused = invoke("dti-regions", source / "labelsTr", "-o", tmp_path / "refused")
    assert refused.exit_code == EXIT_PROBLEM and "b.nii.gz: label values [3]" in " ".join(refused.output.split())
    assert files_under(tmp_path / "refused") == []


def test_task_options_are_checked():
    with pytest.raises(ConfigError, match="channels"):
        task_plan("dti-cord", {"channels": ["b0", "adc"]})
    with pytest.raises(ConfigError, match="fit_method"):
        task_plan("dti-cord", {"fit_method": "LSQ"})


# ---------------------------------------------------------------- prediction straight from DWI folders
@pytest.fixture(scope="module")
def dti_model(phantom, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dti_work")
    api.plan(phantom, work, workers=1, task="dti-cord")
    return api.train(phantom, "2d", 0, work, **FAST)


def test_predict_reads_dwi_folders_and_reports_fa_per_region(phantom, dti_model, tmp_path):
    result = invoke("predict", "-i", phantom / "dwi", "-o", tmp_path / "pred", "-m", dti_model, "--no-tta")
    assert result.exit_code == 0, result.output
    labels = sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz"))
    assert labels == ["cord_000.nii.gz", "cord_001.nii.gz", "cord_002.nii.gz"]  # "_dwi" dropped
    predicted, geometry = read_label(tmp_path / "pred" / "cord_001.nii.gz")
    _, b0_geometry = read_image(phantom / "imagesTr" / "cord_001_0000.nii.gz")
    assert geometry == b0_geometry
    report = json.loads((tmp_path / "pred" / "cord_001.report.json").read_text())
    assert report["input"] == "dwi" and "FA_gm_left" in report and "MD_wm_dorsal_right" in report
    from_b0 = invoke("predict", "-i", phantom / "imagesTr", "-o", tmp_path / "b0", "-m", dti_model, "--no-tta")
    assert from_b0.exit_code == 0, from_b0.output
    np.testing.assert_array_equal(read_label(tmp_path / "b0" / "cord_001.nii.gz")[0], predicted)  # same input channel


def test_predict_refuses_a_dwi_without_gradients_before_writing(phantom, dti_model, tmp_path):
    folder = tmp_path / "dwi"
    folder.mkdir()
    for name in ("cord_000_dwi.nii.gz", "cord_000.bval", "cord_000.bvec", "cord_001_dwi.nii.gz", "cord_001.bval"):
        (folder / name).write_bytes((phantom / "dwi" / name).read_bytes())
    result = invoke("predict", "-i", folder, "-o", tmp_path / "pred", "-m", dti_model, "--no-tta")
    assert result.exit_code == EXIT_PROBLEM
    assert "cord_001_dwi.nii.gz: no gradient files beside it" in " ".join(result.output.split())
    assert files_under(tmp_path / "pred") == []


@pytest.mark.shared
def test_dti_prepare_and_metrics_on_the_real_dwi(shared_data, tmp_path):
    result = invoke("dti-prepare", shared_data / "DTI_cord_raw", "-o", tmp_path / "prep")
    assert result.exit_code == 0, result.output
    assert invoke("validate", tmp_path / "prep").exit_code == 0
    measured = invoke("dti-metrics", "-i", tmp_path / "prep", "-p", tmp_path / "prep" / "labelsTr",
                      "-o", tmp_path / "metrics")
    assert measured.exit_code == 0, measured.output
    rows = list(csv.DictReader((tmp_path / "metrics" / "dti_metrics.csv").open()))
    found = {(r["Metric"], r["Label"]): r for r in rows}
    assert found[("FA", "white_matter")]["Size [vox]"] == "422" and found[("MD", "gray_matter")]["Size [vox]"] == "98"
    assert 0 < float(found[("FA", "white_matter")]["BIN()"]) <= 1


def test_dti_metrics_refuses_unknown_label_values_naming_the_file(tmp_path):
    bvals, bvecs = scheme(6)
    geometry = Geometry((1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_dwi(tmp_path / "dwi", "c1", np.full((7, 1, 2, 2), 100.0), bvals, bvecs, geometry)
    write_image(tmp_path / "pred" / "c1.nii.gz", np.full((1, 2, 2), 9, np.uint8), geometry)
    result = invoke("dti-metrics", "-i", tmp_path / "dwi", "-p", tmp_path / "pred", "-o", tmp_path / "out")
    assert result.exit_code == EXIT_PROBLEM
    assert "c1.nii.gz: label values [9]" in " ".join(result.output.split())
    assert files_under(tmp_path / "out") == []
