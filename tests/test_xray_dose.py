"""The low-dose X-ray simulator (autoseg.modalities.xray_dose), PSNR/SSIM, and `autoseg simulate-dose`."""
from __future__ import annotations

import csv
import math
import shutil

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from autoseg import api
from autoseg.cli import EXIT_PROBLEM, app
from autoseg.errors import ConfigError
from autoseg.io import Geometry, read_image, write_image
from autoseg.modalities.image_quality import psnr, ssim
from autoseg.modalities.xray_dose import (
    DetectorModel, LowDoseParams, LowDoseProtocol, apply_low_dose, estimate_gain, sample_low_dose, simulate_low_dose,
)
from autoseg.phantoms import generate_case

N = 2000.0  # quanta per pixel at full dose in the linear tests


def linear(photons: float | None = N, white: float | None = None) -> DetectorModel:
    return DetectorModel("linear", full_dose_photons=photons, black=0.0, white=white)


def to_photons(values: np.ndarray, level: float) -> np.ndarray:
    return values.astype(np.float64) / level * N


# ---------------------------------------------------------------- physics
@pytest.mark.parametrize("dose", [0.5, 0.25, 0.1, 0.075])
def test_noise_variance_in_photon_units_grows_as_one_minus_f_over_f_and_the_mean_is_kept(dose):
    image = np.full((256, 256), 1000.0, np.float32)  # the brightest value: N quanta per pixel
    out = to_photons(apply_low_dose(image, LowDoseParams(dose, noise_seed=3, detector=linear())), 1000.0)
    expected = N * (1 - dose) / dose
    assert out.var() == pytest.approx(expected, rel=0.03)
    assert abs(out.mean() - N) < 4 * math.sqrt(expected / out.size)  # unbiased within 4 standard errors


def test_full_dose_without_electronic_noise_scatter_or_blur_is_an_exact_identity():
    rng = np.random.default_rng(0)
    images = [generate_case("cervical-xray").image,  # uint16 radiograph
              rng.integers(0, 256, (40, 30)).astype(np.uint8), rng.uniform(0, 7, (20, 20)).astype(np.float32)]
    for image in images:
        out = apply_low_dose(image, LowDoseParams(1.0, detector=DetectorModel()))
        assert out.dtype == image.dtype and out is not image
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(simulate_low_dose(image, 1.0, rng), image)  # sampled: no scatter or blur at f = 1


def test_same_seed_gives_byte_identical_images_and_sample_then_apply_is_simulate():
    image = generate_case("cervical-xray").image
    a = simulate_low_dose(image, 0.1, np.random.default_rng(5), spacing=(1.25, 1.25))
    b = simulate_low_dose(image, 0.1, np.random.default_rng(5), spacing=(1.25, 1.25))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != simulate_low_dose(image, 0.1, np.random.default_rng(6), spacing=(1.25, 1.25)).tobytes()
    params = sample_low_dose(0.1, np.random.default_rng(5))
    assert apply_low_dose(image, params, (1.25, 1.25)).tobytes() == a.tobytes()
    full = sample_low_dose(1.0, np.random.default_rng(5))
    assert full.scatter_to_primary == 0.0 and full.psf_fwhm_mm == 0.0


@pytest.mark.parametrize("dtype, high", [(np.uint8, 255), (np.uint16, 4095), (np.float32, 3.5)])
def test_shape_and_dtype_are_kept_for_8_and_16_bit_and_float_images(dtype, high):
    image = (np.linspace(0, high, 64 * 48).reshape(64, 48)).astype(dtype)
    out = simulate_low_dose(image, 0.075, np.random.default_rng(1))
    assert out.shape == image.shape and out.dtype == image.dtype and float(out.min()) >= 0
    assert not np.array_equal(out, image)


def test_scatter_veil_lowers_contrast_by_one_plus_the_scatter_to_primary_ratio_at_most():
    image = np.full((96, 96), 1000.0, np.float32)
    image[:, 48:] = 3000.0
    params = LowDoseParams(1.0, scatter_to_primary=0.5, scatter_fwhm_mm=300.0, detector=linear(1e9))
    out = apply_low_dose(image, params)
    contrast = out[:, 64:].mean() - out[:, :32].mean()
    assert 2000 / 1.5 - 1 <= contrast < 2000 * 0.85  # at least 1/(1+spr) of it stays: the veil adds some back
    assert out.mean() == pytest.approx(image.mean(), rel=0.02)  # the exposure control keeps the signal


def test_detector_blur_is_a_gaussian_of_the_given_fwhm_in_mm():
    image = np.zeros((41, 41), np.float32)
    image[20, 20] = 1.0
    params = LowDoseParams(1.0, psf_fwhm_mm=2.0, detector=linear(1e9))
    out = apply_low_dose(image, params, spacing=(0.5, 0.5)).astype(np.float64)
    profile = out[20] / out[20].sum()
    x = np.arange(41) - 20
    sigma_px = math.sqrt(float((profile * x**2).sum()))
    assert sigma_px * 0.5 * 2.3548 == pytest.approx(2.0, rel=0.05)  # FWHM in mm


def test_electronic_noise_matters_more_as_the_dose_falls():
    image = np.full((200, 200), 1000.0, np.float32)
    added = []
    for dose in (0.5, 0.1):
        quiet = to_photons(apply_low_dose(image, LowDoseParams(dose, noise_seed=1, detector=linear())), 1000.0)
        noisy = to_photons(apply_low_dose(image, LowDoseParams(dose, electronic_noise=20.0, noise_seed=1, detector=linear())), 1000.0)
        added.append(noisy.var() - quiet.var())
        assert added[-1] == pytest.approx(20.0**2 * (1 - dose**2) / dose**2, rel=0.15)
    assert added[1] > 10 * added[0]


@pytest.mark.parametrize("gain", [200.0, 5000.0])
def test_quanta_per_pixel_are_estimated_from_the_images_own_noise(gain):
    signal = np.tile(np.linspace(0.2, 1.0, 160), (160, 1))
    counts = np.random.default_rng(0).poisson(gain * signal)
    assert estimate_gain(counts / gain) == pytest.approx(gain, rel=0.15)
    assert estimate_gain(np.full((50, 50), 0.5)) is None  # no noise, nothing to measure


def test_bad_dose_fractions_and_negative_images_are_refused_naming_the_value():
    rng = np.random.default_rng(0)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=f"dose fraction {bad}"):
            simulate_low_dose(np.ones((8, 8)), bad, rng)
    with pytest.raises(ConfigError, match="non-negative.*minimum -1"):
        simulate_low_dose(np.full((8, 8), -1.0), 0.5, rng)
    with pytest.raises(ConfigError, match="log_range"):
        sample_low_dose(0.5, rng, LowDoseProtocol(detector=DetectorModel(log_range=0.0)))


# ---------------------------------------------------------------- image quality
def _reference_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Wang et al. 2004 written out: Gaussian window sigma 1.5 (11 taps), population covariances."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    blur = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s[5:-5, 5:-5].mean())


def test_psnr_and_ssim_of_identical_images():
    image = generate_case("cervical-xray").image
    assert psnr(image, image) == math.inf and ssim(image, image) == 1.0


def test_psnr_and_ssim_of_a_known_perturbation_use_the_originals_range():
    image = generate_case("cervical-xray").image  # 12-bit values in a 16-bit image: the range is 4095, not 65535
    shifted = image.astype(np.float64) + 10.0
    assert psnr(image, shifted) == pytest.approx(20 * math.log10(4095 / 10.0), abs=1e-9)
    noisy = image + np.random.default_rng(0).normal(0, 80.0, image.shape)
    assert ssim(image, noisy) == pytest.approx(_reference_ssim(image, noisy, 4095.0), abs=1e-9)
    assert ssim(image, noisy) < ssim(image, image + np.random.default_rng(0).normal(0, 20.0, image.shape))


# ---------------------------------------------------------------- simulate-dose
def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return api.example("cervical-xray", tmp_path_factory.mktemp("phantom"), cases=2, seed=1, scale=0.5)


def test_simulate_dose_writes_one_valid_dataset_per_dose_and_the_quality_csv(phantom, tmp_path):
    result = invoke("simulate-dose", phantom, "-o", tmp_path / "sim", "--doses", "0.5,0.1,0.075", "--seed", "4")
    assert result.exit_code == 0, result.output
    folders = [tmp_path / "sim" / f"{phantom.name}_dose{d}" for d in ("0.5", "0.1", "0.075")]
    for folder in folders:
        api.validate(folder, workers=1)
        for label in (phantom / "labelsTr").iterdir():
            assert (folder / "labelsTr" / label.name).read_bytes() == label.read_bytes()
        for original in (phantom / "imagesTr").iterdir():
            (a, ga), (b, gb) = read_image(original), read_image(folder / "imagesTr" / original.name)
            assert a.shape == b.shape and a.dtype == b.dtype and ga == gb and not np.array_equal(a, b)
    rows = list(csv.DictReader((tmp_path / "sim" / "dose_quality.csv").open()))
    assert len(rows) == 3 * 2 and {r["image"] for r in rows} == {f"imagesTr/{p.name}" for p in (phantom / "imagesTr").iterdir()}
    summary = list(csv.DictReader((tmp_path / "sim" / "dose_quality_summary.csv").open()))
    psnrs, ssims = [float(r["psnr_db_mean"]) for r in summary], [float(r["ssim_mean"]) for r in summary]
    assert psnrs == sorted(psnrs, reverse=True) and ssims == sorted(ssims, reverse=True)
    again = invoke("simulate-dose", phantom, "-o", tmp_path / "again", "--doses", "0.1", "--seed", "4")
    assert again.exit_code == 0
    for image in (folders[1] / "imagesTr").iterdir():
        assert (tmp_path / "again" / folders[1].name / "imagesTr" / image.name).read_bytes() == image.read_bytes()


def test_simulate_dose_takes_a_plain_image_folder(tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "a.png", np.tile(np.arange(0, 250, 5, dtype=np.uint8), (40, 1)), Geometry.default(2))
    result = invoke("simulate-dose", folder, "-o", tmp_path / "sim", "--doses", "0.25")
    assert result.exit_code == 0, result.output
    out, _ = read_image(tmp_path / "sim" / "dose0.25" / "a.png")
    assert out.dtype == np.uint8 and out.shape == (1, 40, 50)


@pytest.mark.parametrize("doses, message", [("0.5,1.5", "dose fraction 1.5"), ("0,0.5", "dose fraction 0.0"),
                                            ("0.5,abc", "'abc' is not a number"), ("0.5,0.5", "listed twice")])
def test_simulate_dose_refuses_doses_outside_0_1_with_exit_2_and_writes_nothing(phantom, tmp_path, doses, message):
    result = invoke("simulate-dose", phantom, "-o", tmp_path / "sim", "--doses", doses)
    assert result.exit_code == EXIT_PROBLEM and message in result.output
    assert not (tmp_path / "sim").exists()


def test_simulate_dose_refuses_a_negative_image_naming_it_and_writes_nothing(tmp_path):
    folder = tmp_path / "images"
    write_image(folder / "good.nii.gz", np.full((16, 16), 5.0, np.float32), Geometry.default(2))
    write_image(folder / "bad.nii.gz", np.full((16, 16), -2.0, np.float32), Geometry.default(2))
    result = invoke("simulate-dose", folder, "-o", tmp_path / "sim", "--doses", "0.5")
    assert result.exit_code == EXIT_PROBLEM
    assert "bad.nii.gz" in result.output and "non-negative" in result.output
    assert not (tmp_path / "sim").exists()


def test_simulate_dose_refuses_a_dataset_whose_labels_do_not_match(phantom, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(phantom, broken)
    label = sorted((broken / "labelsTr").iterdir())[0]
    label.unlink()
    result = invoke("simulate-dose", broken, "-o", tmp_path / "sim", "--doses", "0.5")
    assert result.exit_code == EXIT_PROBLEM and label.name in result.output
    assert not (tmp_path / "sim").exists()
