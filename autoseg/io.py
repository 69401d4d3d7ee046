"""Image reading and writing: the only module that imports SimpleITK.

Arrays use numpy axis order (z, y, x) with a leading channel axis for images; `Geometry` keeps
SimpleITK's own (x, y, z) spacing, origin and direction so a read-then-write round trip is exact.
2D formats without physical spacing (PNG, JPG, BMP, TIFF) get SimpleITK's nominal 1.0 mm pixels.
"""
from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.atomic import atomic_write
from autoseg.errors import ImageIOError

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PLAIN_2D_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a spatial grid, in SimpleITK (x, y, z) order."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major ndim x ndim matrix

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in numpy axis order."""
        return tuple(reversed(self.spacing))

    @classmethod
    def default(cls, ndim: int, spacing_zyx: tuple[float, ...] | None = None) -> "Geometry":
        spacing = tuple(reversed(spacing_zyx)) if spacing_zyx is not None else (1.0,) * ndim
        return cls(tuple(float(s) for s in spacing), (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def matches(self, other: "Geometry", tol: float = 1e-4) -> bool:
        """Same grid placement within `tol` (relative for spacing, mm for origin)."""
        if self.ndim != other.ndim:
            return False
        return (
            np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, atol=tol * max(1.0, max(map(abs, self.origin))))
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def file_ending(path: str | Path) -> str:
    """The image ending of `path` ('.nii.gz' counts as one ending), lower-case."""
    name = str(path).lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(name).suffix


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise ImageIOError(f"{path}: file not found")
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise ImageIOError(f"{path}: cannot be read as an image ({first_line}); check that the file is complete and in a supported format") from None
    _check_complete(path, image)
    return image


def _check_complete(path: Path, image: sitk.Image) -> None:
    """ITK's NIfTI reader zero-fills a truncated file without complaint, so check the length here."""
    ending = file_ending(path)
    if ending == ".nii.gz":
        try:
            with gzip.open(path, "rb") as stream:
                while stream.read(1 << 24):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise ImageIOError(f"{path}: compressed data is truncated or corrupt ({exc}); copy or export the file again") from None
    elif ending == ".nii":
        needed = 352 + sitk.GetArrayViewFromImage(image).nbytes  # header + voxels, a lower bound
        if path.stat().st_size < needed:
            raise ImageIOError(f"{path}: file is truncated ({path.stat().st_size} bytes, at least {needed} needed); copy or export it again")


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ImageIOError(f"{folder}: no DICOM series found in this folder")
    if len(series) > 1:
        raise ImageIOError(f"{folder}: holds {len(series)} DICOM series; put each series in its own folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def _split_4d(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """A 4D image (e.g. diffusion volumes) becomes channels over a 3D grid."""
    array = sitk.GetArrayFromImage(image)  # (t, z, y, x)
    spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
    d4 = np.array(image.GetDirection()).reshape(4, 4)
    return array, Geometry(tuple(spacing), tuple(origin), tuple(d4[:3, :3].ravel().tolist()))


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read an image file or DICOM series folder as a channel-first array (C, *spatial) and its geometry.

    Grayscale images have C=1; RGB images have C=3; 4D images put their last axis in C.
    """
    image = _read_sitk(Path(path))
    if image.GetDimension() == 4:
        return _split_4d(image)
    array = sitk.GetArrayFromImage(image)
    if file_ending(path) == ".bmp" and _is_gray_rgb(array, image):
        array = array[None, ..., 0]  # ITK expands a grayscale palette BMP to 3 identical channels
    elif image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # (..., C) -> (C, ...)
    else:
        array = array[None]
    return array, Geometry.of(image)


def _is_gray_rgb(array: np.ndarray, image: sitk.Image) -> bool:
    return image.GetNumberOfComponentsPerPixel() == 3 and bool(
        np.all(array[..., 0] == array[..., 1]) and np.all(array[..., 1] == array[..., 2]))


def read_label(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read a single-channel label map as an integer array (*spatial)."""
    path = Path(path)
    array, geometry = read_image(path)
    if array.shape[0] != 1:
        raise ImageIOError(f"{path}: a label map must have one channel, found {array.shape[0]}; save it as grayscale")
    label = array[0]
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ImageIOError(f"{path}: label values must be whole numbers; found non-integer or NaN values")
        label = label.astype(np.int16 if label.max(initial=0) < 32767 else np.int32)
    return label, geometry


def read_image_info(path: str | Path) -> tuple[tuple[int, ...], int, Geometry]:
    """Shape (numpy order), component count and geometry from the header alone, where the format allows."""
    path = Path(path)
    if path.is_dir():
        image = _read_sitk(path)
        return tuple(reversed(image.GetSize())), image.GetNumberOfComponentsPerPixel(), Geometry.of(image)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageIOError(f"{path}: cannot be read as an image; check that the file is complete and in a supported format") from None
    size = tuple(reversed(reader.GetSize()))
    return size, reader.GetNumberOfComponents(), Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _to_sitk(array: np.ndarray, geometry: Geometry, path: Path) -> sitk.Image:
    if array.ndim == geometry.ndim:
        image = sitk.GetImageFromArray(array)
    elif array.ndim == geometry.ndim + 1 and geometry.ndim == 2:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    elif array.ndim == geometry.ndim + 1 and geometry.ndim == 3:
        image = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in array])
        image.SetSpacing(tuple(geometry.spacing) + (1.0,))
        image.SetOrigin(tuple(geometry.origin) + (0.0,))
        d = np.eye(4)
        d[:3, :3] = np.reshape(geometry.direction, (3, 3))
        image.SetDirection(tuple(d.ravel()))
        return image
    else:
        raise ImageIOError(f"{path}: cannot write an array of shape {array.shape} with a {geometry.ndim}D geometry")
    geometry.apply_to(image)
    return image


def _ensure_writable_dtype(array: np.ndarray, ending: str, path: Path) -> np.ndarray:
    if ending in (".png", ".bmp", ".jpg", ".jpeg"):
        if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
            raise ImageIOError(f"{path}: {ending} stores whole numbers only, found fractional or NaN values; round or scale them first, or use .nii.gz")
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise ImageIOError(f"{path}: values outside 0..65535 cannot be stored in {ending}; use .nii.gz")
        return array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write `array` ((*spatial) or (C, *spatial)) with `geometry`, atomically (temp file, then rename)."""
    path = Path(path)
    ending = file_ending(path)
    if ending not in IMAGE_ENDINGS:
        raise ImageIOError(f"{path}: unsupported ending '{ending}'; use one of {', '.join(IMAGE_ENDINGS)}")
    if ending in PLAIN_2D_ENDINGS and geometry.ndim != 2:
        raise ImageIOError(f"{path}: {ending} holds 2D images only, found a {geometry.ndim}D geometry; use .nii.gz")
    array = _ensure_writable_dtype(np.asarray(array), ending, path)
    image = _to_sitk(array, geometry, path)
    try:
        if ending == ".mhd":  # header + raw pair: the raw file's name is baked into the header
            sitk.WriteImage(image, str(path), compress)
        else:
            with atomic_write(path, suffix=ending) as tmp:  # SimpleITK picks the format by the ending
                sitk.WriteImage(image, str(tmp), compress and ending not in PLAIN_2D_ENDINGS)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise ImageIOError(f"{path}: could not be written ({reason})") from None
    return path


# ---------------------------------------------------------------- in-memory SimpleITK images (Python API)
def array_from_sitk(image: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """An in-memory SimpleITK image as (C, *spatial) and its geometry, with `read_image`'s conventions."""
    if image.GetDimension() == 4:
        return _split_4d(image)
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.moveaxis(array, -1, 0), Geometry.of(image)
    return array[None], Geometry.of(image)


def sitk_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of `array` ((*spatial) or (C, *spatial)) placed exactly by `geometry`."""
    where = Path("<in-memory image>")
    return _to_sitk(_ensure_writable_dtype(np.asarray(array), "", where), geometry, where)


def is_dicom_folder(folder: str | Path) -> bool:
    """True when `folder` holds at least one DICOM series (GDCM reads the headers only)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return False
