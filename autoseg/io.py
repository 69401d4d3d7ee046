"""Image reading and writing: the only module that imports SimpleITK.

Arrays use numpy axis order (z, y, x) with a leading channel axis for images; `Geometry` keeps
SimpleITK's own (x, y, z) spacing, origin and direction so a read-then-write round trip is exact.
2D formats without physical spacing (PNG, JPG, BMP, TIFF) get SimpleITK's nominal 1.0 mm pixels.
Images holding NaN/inf are refused, NIfTI included, whose reader would silently read them as 0.
"""
from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.atomic import atomic_write
from autoseg.errors import ImageIOError

log = logging.getLogger(__name__)

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
    if file_ending(path) in (".nii", ".nii.gz"):
        _check_nifti(path, image)
    return image


# ---------------------------------------------------------------- what ITK's NIfTI reader passes over
# It zero-fills a truncated file, reads NaN/inf voxels as 0 and takes 1.0 for a zero or non-finite
# pixdim, all without a word. So the header is parsed here (NIfTI-1, either byte order: this ITK reads
# no NIfTI-2) and the voxels are read once more, in chunks (scl_slope/scl_inter cannot create NaN/inf).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # datatype codes of the real float types, the only ones holding NaN/inf
_CHUNK = 1 << 24


@dataclass(frozen=True)
class _NiftiHeader:
    vox_offset: int
    data_bytes: int
    float_dtype: np.dtype | None  # None: integers (and complex/RGB, which are not checked)
    spacing: tuple[float, ...]  # pixdim of the spatial axes, x first


def _parse_nifti_header(raw: bytes) -> _NiftiHeader | None:
    """What the checks need from a NIfTI-1 header (sizeof_hdr 348 tells the byte order); None if not one."""
    order = next((o for o in "<>" if len(raw) >= 348 and struct.unpack_from(o + "i", raw)[0] == 348), None)
    if order is None:
        return None
    dims = struct.unpack_from(order + "8h", raw, 40)
    datatype, bitpix = struct.unpack_from(order + "2h", raw, 70)
    pixdim = struct.unpack_from(order + "8f", raw, 76)
    offset = struct.unpack_from(order + "f", raw, 108)[0]
    ndim = min(max(dims[0], 1), 7)
    voxels = math.prod(max(d, 1) for d in dims[1:ndim + 1])
    code = _NIFTI_FLOATS.get(datatype)
    return _NiftiHeader(max(int(offset), 352), voxels * bitpix // 8, np.dtype(order + code) if code else None,
                        tuple(pixdim[1:min(ndim, 3) + 1]))


def _check_nifti(path: Path, image: sitk.Image) -> None:
    """Truncation and NaN/inf are ImageIOErrors; an invalid pixdim is a warning."""
    compressed = file_ending(path) == ".nii.gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            header = _parse_nifti_header(stream.read(348))
            if header is None:
                return  # a variant this parser does not know, which ITK read: nothing more to say
            _warn_invalid_spacing(path, header.spacing, image.GetSpacing())
            if header.float_dtype is None and not compressed:  # integers cannot be NaN: the length suffices
                found, bad = path.stat().st_size - header.vox_offset, 0
            else:
                stream.seek(header.vox_offset)
                found, bad = _scan_voxels(stream, header)
                while compressed and stream.read(_CHUNK):  # the rest must decompress too (CRC at the end)
                    pass
    except (EOFError, OSError, zlib.error) as exc:
        raise ImageIOError(f"{path}: data is truncated or corrupt ({exc}); copy or export the file again") from None
    if found < header.data_bytes:
        raise ImageIOError(f"{path}: file is truncated (it holds {max(found, 0)} of the {header.data_bytes} bytes of "
                           "voxel data its header declares); copy or export it again")
    if bad:
        raise ImageIOError(_non_finite_message(path, bad))


def _scan_voxels(stream, header: _NiftiHeader) -> tuple[int, int]:
    """(voxel data bytes present, non-finite voxels), reading from the voxel data's start in chunks."""
    dtype, found, bad, carry = header.float_dtype, 0, 0, b""
    while found < header.data_bytes:
        chunk = stream.read(min(_CHUNK, header.data_bytes - found))
        if not chunk:
            break
        found += len(chunk)
        if dtype is not None:
            data = carry + chunk if carry else chunk  # a short read may split a value
            whole = len(data) // dtype.itemsize
            values = np.frombuffer(data, dtype, count=whole)
            bad += whole - int(np.count_nonzero(np.isfinite(values)))
            carry = data[whole * dtype.itemsize:]
    return found, bad


def _warn_invalid_spacing(path: Path, header_spacing: tuple[float, ...], used: tuple[float, ...]) -> None:
    if not all(math.isfinite(s) and s > 0 for s in header_spacing):
        log.warning("%s: pixel spacing (pixdim) %s in the header is zero, negative or not a number; the reader uses "
                    "%s instead; fix the header if physical sizes matter", path,
                    tuple(float(s) for s in header_spacing), tuple(used))


def _non_finite_message(path: Path, count: int) -> str:
    return f"{path}: {count} NaN/inf value(s); replace them (e.g. with the image minimum)"


def _refuse_non_finite(path: Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ImageIOError(_non_finite_message(path, bad))


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
    NaN/inf values are an ImageIOError naming the file.
    """
    path = Path(path)
    image = _read_sitk(path)
    array, geometry = _split_4d(image) if image.GetDimension() == 4 else _channels_first(path, image)
    _refuse_non_finite(path, array)
    return array, geometry


def _channels_first(path: Path, image: sitk.Image) -> tuple[np.ndarray, Geometry]:
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
        if array.dtype == np.uint16 and ending == ".png":
            return array  # a 16-bit PNG stays 16-bit even when its values would fit 8 bits
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
