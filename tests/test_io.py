"""Image IO: exact round trips with geometry, channel handling, atomic writes and readable errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # only to build inputs autoseg.io does not write itself (DICOM, raw 4D)

from autoseg import io
from autoseg.errors import ImageIOError
from autoseg.io import Geometry, file_ending, read_image, read_image_info, read_label, write_image


def rotation_zyx(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation (orthonormal, det +1) from three angles in radians, so NIfTI can store it."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


OBLIQUE = Geometry(spacing=(0.7, 1.3, 3.1), origin=(-12.345, 67.891, -3.21),
                   direction=tuple(rotation_zyx(0.4, -0.6, 0.9).ravel().tolist()))


def assert_geometry_equal(found: Geometry, expected: Geometry, atol: float = 0.0) -> None:
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(found, name), getattr(expected, name), rtol=0, atol=atol, err_msg=name)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ---------------------------------------------------------------- 3D round trips
# NIfTI stores geometry as float32 (exact to ~1e-6 mm); the text headers of NRRD/MHA/MHD keep doubles.
@pytest.mark.parametrize("ending, atol", [(".nii.gz", 2e-6), (".nii", 2e-6), (".nrrd", 1e-12), (".mha", 1e-12),
                                          (".mhd", 1e-12)])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_3d_round_trip_keeps_values_and_geometry(tmp_path, ending, atol, dtype):
    array = (np.random.default_rng(1).normal(size=(5, 6, 7)) * 100).astype(dtype)  # (z, y, x), all sizes differ
    path = write_image(tmp_path / f"img{ending}", array, OBLIQUE)
    found, geometry = read_image(path)
    assert found.shape == (1, 5, 6, 7) and found.dtype == dtype
    np.testing.assert_array_equal(found[0], array)
    assert_geometry_equal(geometry, OBLIQUE, atol)
    assert geometry.spacing_zyx == pytest.approx((3.1, 1.3, 0.7))


def test_mhd_writes_header_and_data_and_no_temp_files(tmp_path):
    write_image(tmp_path / "img.mhd", np.ones((2, 3, 4), np.uint8), OBLIQUE)
    assert leftovers(tmp_path, set()) == ["img.mhd", "img.zraw"]
    assert read_image(tmp_path / "img.mhd")[0].sum() == 24


def test_read_image_info_matches_full_read_for_header_formats(tmp_path):
    path = write_image(tmp_path / "img.nrrd", np.zeros((5, 6, 7), np.float32), OBLIQUE)
    shape, components, geometry = read_image_info(path)
    assert (shape, components) == ((5, 6, 7), 1)
    assert geometry == read_image(path)[1]


# ---------------------------------------------------------------- 2D formats
@pytest.mark.parametrize("ending, dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint16),
                                           (".tiff", np.uint8)])
def test_2d_round_trip_is_exact(tmp_path, ending, dtype):
    array = random_2d(dtype)
    found, geometry = read_image(write_image(tmp_path / f"img{ending}", array, Geometry.default(2, (0.7, 0.3))))
    assert found.shape == (1, 9, 13) and found.dtype == dtype
    np.testing.assert_array_equal(found[0], array)
    assert geometry.spacing_zyx == pytest.approx((0.7, 0.3), rel=1e-6)  # PNG and TIFF headers keep spacing


def random_2d(dtype: type) -> np.ndarray:
    high = 255 if dtype == np.uint8 else 60000
    array = np.random.default_rng(2).integers(0, high, size=(9, 13)).astype(dtype)
    array[0, 0] = high  # keep uint16 data above 255 so the writer cannot narrow it
    return array


def test_bmp_round_trip_keeps_pixel_values(tmp_path):
    array = random_2d(np.uint8)
    found, geometry = read_image(write_image(tmp_path / "img.bmp", array, Geometry.default(2)))
    assert all(np.array_equal(channel, array) for channel in found)
    assert geometry.spacing == (1.0, 1.0)


def test_grayscale_bmp_reads_as_one_channel(tmp_path):
    found, _ = read_image(write_image(tmp_path / "img.bmp", random_2d(np.uint8), Geometry.default(2)))
    assert found.shape == (1, 9, 13)


def test_jpg_round_trip_is_close(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48]
    array = (2 * yy + 3 * xx).astype(np.uint8)  # smooth, so lossy compression stays near
    found, _ = read_image(write_image(tmp_path / "img.jpg", array, Geometry.default(2)))
    assert found.shape == (1, 32, 48)
    assert np.abs(found[0].astype(int) - array).mean() < 3


def test_rgb_png_reads_as_three_channels(tmp_path):
    rgb = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 120, 250)])
    path = write_image(tmp_path / "rgb.png", rgb, Geometry.default(2))
    found, geometry = read_image(path)
    assert found.shape == (3, 4, 5) and geometry.ndim == 2
    np.testing.assert_array_equal(found, rgb)
    assert read_image_info(path)[:2] == ((4, 5), 3)


# ---------------------------------------------------------------- DICOM and 4D
def write_dicom_series(folder: Path, volume: np.ndarray, spacing_xyz: tuple[float, float, float],
                       origin_xyz: tuple[float, float, float]) -> None:
    """One file per slice with the tags a series reader needs to stack and place the slices."""
    folder.mkdir()
    uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z, plane in enumerate(volume):
        image = sitk.GetImageFromArray(plane)
        image.SetSpacing(spacing_xyz[:2])
        position = f"{origin_xyz[0]}\\{origin_xyz[1]}\\{origin_xyz[2] + z * spacing_xyz[2]}"
        tags = {"0008|0060": "CT", "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0008|0018": f"{uid}.3.{z}",
                "0020|0013": str(z + 1), "0020|0032": position, "0020|0037": "1\\0\\0\\0\\1\\0",
                "0018|0050": str(spacing_xyz[2])}
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder_reads_as_volume(tmp_path):
    volume = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 3 - 100)
    write_dicom_series(tmp_path / "series", volume, (0.7, 0.9, 2.5), (-10.5, 20.25, 5.0))
    found, geometry = read_image(tmp_path / "series")
    assert found.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(found[0], volume)
    assert geometry.spacing_zyx == pytest.approx((2.5, 0.9, 0.7))
    assert geometry.origin == pytest.approx((-10.5, 20.25, 5.0))
    assert read_image_info(tmp_path / "series")[0] == (4, 5, 6)


def test_folder_without_dicom_series_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageIOError, match="empty: no DICOM series"):
        read_image(tmp_path / "empty")


def test_4d_nifti_reads_as_channels_over_3d_grid(tmp_path):
    volumes = np.random.default_rng(3).normal(size=(3, 4, 5, 6)).astype(np.float32)  # (t, z, y, x)
    image = sitk.GetImageFromArray(volumes, isVector=False)
    image.SetSpacing((0.8, 0.9, 2.0, 1.0))
    image.SetOrigin((1.5, -2.5, 7.0, 0.0))
    sitk.WriteImage(image, str(tmp_path / "dwi.nii.gz"))
    found, geometry = read_image(tmp_path / "dwi.nii.gz")
    np.testing.assert_array_equal(found, volumes)
    assert geometry.ndim == 3 and geometry.spacing == pytest.approx((0.8, 0.9, 2.0))
    assert geometry.origin == pytest.approx((1.5, -2.5, 7.0))


def test_channels_written_as_4d_round_trip(tmp_path):
    channels = np.random.default_rng(4).normal(size=(2, 4, 5, 6)).astype(np.float32)
    found, geometry = read_image(write_image(tmp_path / "multi.nii.gz", channels, OBLIQUE))
    np.testing.assert_array_equal(found, channels)
    assert_geometry_equal(geometry, OBLIQUE, 2e-6)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd"])
def test_non_finite_values_are_an_error_naming_the_file(tmp_path, ending):
    # The NIfTI library behind SimpleITK would read NaN/inf as 0; io reads NIfTI voxels itself to see them.
    array = np.zeros((2, 3, 4), np.float32)
    array[0, 0, :2] = [np.nan, np.inf]
    path = write_image(tmp_path / f"a{ending}", array, Geometry.default(3))
    with pytest.raises(ImageIOError, match="2 NaN/inf value") as info:
        read_image(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- labels
def test_read_label_returns_integers_from_whole_float_values(tmp_path):
    path = write_image(tmp_path / "lab.nii.gz", np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32), Geometry.default(3))
    label, _ = read_label(path)
    assert np.issubdtype(label.dtype, np.integer) and label.shape == (1, 2, 2)
    np.testing.assert_array_equal(label.ravel(), [0, 1, 2, 3])


@pytest.mark.parametrize("array, ending, message", [
    (np.array([[[0.0, 1.5]]], np.float32), ".nii.gz", "whole numbers"),
    (np.zeros((3, 4, 5), np.uint8), ".png", "must have one channel, found 3"),
])
def test_read_label_rejects_non_labels(tmp_path, array, ending, message):
    geometry = Geometry.default(2 if ending == ".png" else 3)
    path = write_image(tmp_path / f"lab{ending}", array, geometry)
    with pytest.raises(ImageIOError, match=message) as info:
        read_label(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- atomic writes
def test_successful_write_leaves_no_temp_files(tmp_path):
    for ending in (".nii.gz", ".png", ".nrrd"):
        write_image(tmp_path / f"a{ending}", np.zeros((3, 4), np.uint8), Geometry.default(2))
    assert leftovers(tmp_path, set()) == ["a.nii.gz", "a.nrrd", "a.png"]


def test_failed_write_keeps_old_target_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = write_image(tmp_path / "a.nii.gz", np.ones((2, 3, 4), np.uint8), Geometry.default(3))
    before = target.read_bytes()

    def write_half_then_fail(image, name, *args):
        Path(name).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.sitk, "WriteImage", write_half_then_fail)
    with pytest.raises(Exception):
        write_image(target, np.zeros((2, 3, 4), np.uint8), Geometry.default(3))
    with pytest.raises(Exception):
        write_image(tmp_path / "new.nii.gz", np.zeros((2, 3, 4), np.uint8), Geometry.default(3))
    assert leftovers(tmp_path, set()) == ["a.nii.gz"]
    assert target.read_bytes() == before


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = write_image(tmp_path / "a.nii.gz", np.zeros((2, 3, 4), np.uint8), Geometry.default(3))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_writer_failure_is_an_image_io_error_naming_the_file(tmp_path):
    with pytest.raises(ImageIOError, match="a.jpg"):
        write_image(tmp_path / "a.jpg", np.full((3, 4), 1000, np.uint16), Geometry.default(2))  # JPEG is 8-bit


@pytest.mark.parametrize("name, array, message", [
    ("a.gif", np.zeros((3, 4), np.uint8), "unsupported ending '.gif'"),
    ("a.png", np.full((3, 4), -5, np.int16), "values outside 0..65535"),
    ("a.nii.gz", np.zeros((2, 3, 4, 5, 6), np.float32), "cannot write an array of shape"),
])
def test_unwritable_requests_are_rejected_before_writing(tmp_path, name, array, message):
    with pytest.raises(ImageIOError, match=message):
        write_image(tmp_path / name, array, Geometry.default(2 if name.endswith(".png") or name.endswith(".gif") else 3))
    assert leftovers(tmp_path, set()) == []


def test_3d_array_to_png_is_rejected(tmp_path):
    with pytest.raises(ImageIOError, match="a.png"):
        write_image(tmp_path / "a.png", np.zeros((3, 4, 5), np.uint8), Geometry.default(3))


def test_fractional_values_to_png_are_rejected(tmp_path):
    with pytest.raises(ImageIOError, match="a.png"):
        write_image(tmp_path / "a.png", np.full((3, 4), 0.7, np.float32), Geometry.default(2))


# ---------------------------------------------------------------- unreadable files
@pytest.mark.parametrize("name, content", [("bad.nii.gz", b"\x00garbage"), ("bad.png", b"garbage"),
                                           ("empty.nrrd", b""), ("bad.mha", b"ObjectType = Image\nNDims = 3\n")])
def test_unreadable_file_raises_image_io_error_naming_it(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    for reader in (read_image, read_image_info, read_label):
        with pytest.raises(ImageIOError) as info:
            reader(path)
        assert str(path) in str(info.value) and "cannot be read" in str(info.value)


def test_missing_file_raises_image_io_error_naming_it(tmp_path):
    with pytest.raises(ImageIOError, match=r"nothere\.nii\.gz: file not found"):
        read_image(tmp_path / "nothere.nii.gz")


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_truncated_nifti_is_an_error(tmp_path, ending):
    path = write_image(tmp_path / f"a{ending}", np.random.default_rng(5).normal(size=(8, 9, 10)), Geometry.default(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageIOError, match=path.name):
        read_image(path)


# ---------------------------------------------------------------- helpers
def test_file_ending_treats_nii_gz_as_one_ending():
    assert [file_ending(n) for n in ("a.nii.gz", "B.NII.GZ", "c.nii", "d.PNG", "e.v1.nrrd")] == [
        ".nii.gz", ".nii.gz", ".nii", ".png", ".nrrd"]


def test_geometry_dict_round_trip_and_matching():
    assert Geometry.from_dict(OBLIQUE.to_dict()) == OBLIQUE
    nudged = Geometry(OBLIQUE.spacing, tuple(o + 1e-6 for o in OBLIQUE.origin), OBLIQUE.direction)
    moved = Geometry(OBLIQUE.spacing, (0.0, 0.0, 0.0), OBLIQUE.direction)
    assert OBLIQUE.matches(nudged) and not OBLIQUE.matches(moved)
    assert not OBLIQUE.matches(Geometry.default(2))
