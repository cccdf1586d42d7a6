"""Volumes as one `Image` type, read from and written to NIfTI, NRRD, MHA and DICOM series folders.

Arrays are numpy in (z, y, x) order, as SimpleITK's `GetArrayFromImage` gives them; spacing,
origin and direction stay in ITK/LPS (x, y, z) order exactly as SimpleITK reads them, so oblique
and left-handed direction matrices survive a read/write round trip unchanged.

Every problem a user can cause (missing file, not an image, 2D or 4D data, NaN/Inf voxels, a
DICOM folder with several series, missing or unevenly spaced slices) raises `InputImageError`
with a message that says what to do.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
import zlib

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError

log = logging.getLogger(__name__)

Triple = tuple[float, float, float]

#: Suffixes `write_image` accepts (SimpleITK picks the writer from the suffix).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd")

#: Relative tolerance on slice distances in a DICOM series before slices count as uneven.
SLICE_SPACING_TOLERANCE = 0.01

#: Largest |cos| between two axes of a direction matrix (and largest deviation of an axis length
#: from 1) still taken as orthonormal: rounding in DICOM/NIfTI headers stays far below it
#: (about 1e-6); a sheared grid (e.g. 0.45 in an NRRD "space directions") does not.
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass
class Image:
    """A 3D volume: `array` (z, y, x); `spacing`, `origin` (x, y, z) in mm, LPS; `direction` 3x3
    (columns are the x, y, z axis directions, as ITK). `meta` holds where it came from."""

    array: np.ndarray
    spacing: Triple
    origin: Triple
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    # Geometry ------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """Voxel counts in (x, y, z) order, as ITK."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) indices, shape (..., 3) -> LPS points in mm."""
        index_xyz = np.asarray(index_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) -> continuous (x, y, z) indices."""
        points = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (points @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def corners(self) -> np.ndarray:
        """The 8 corners of the volume's extent (voxel edges, not centres), LPS mm, (8, 3)."""
        size = np.asarray(self.size, dtype=np.float64)
        grid = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        return self.index_to_physical(grid * size - 0.5)

    def same_grid(self, other: "Image", tol: float = 1e-4) -> bool:
        """Same size and (within `tol` mm / `tol` in direction cosines) the same geometry."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol, rtol=0)
        )

    def with_array(self, array: np.ndarray, **meta: Any) -> "Image":
        """A new image on the same grid holding `array` (same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return replace(self, array=array, direction=self.direction.copy(), meta={**self.meta, **meta})

    # SimpleITK ------------------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, **meta: Any) -> "Image":
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3),
            meta=dict(meta),
        )

    def describe(self) -> str:
        return (
            f"{'x'.join(str(s) for s in self.size)} voxels, spacing "
            f"{' x '.join(f'{s:g}' for s in self.spacing)} mm"
        )


# Reading ----------------------------------------------------------------------------------
def _check_dimensions(img: sitk.Image, where: str) -> sitk.Image:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{where} has {img.GetNumberOfComponentsPerPixel()} values per voxel (a colour or vector "
            "image); a model input must be a scalar 3D volume (CT in HU or one MRI sequence)"
        )
    dim = img.GetDimension()
    size = img.GetSize()
    if dim == 4:
        if size[3] == 1:
            img = img[:, :, :, 0]
        else:
            raise InputImageError(
                f"{where} is a 4D image ({' x '.join(map(str, size))}: {size[3]} volumes); each model "
                "input takes one 3D volume. Split it into 3D files (one per channel or time point) "
                "and pass them as separate inputs, e.g. --input NAME=PATH for a multi-input model"
            )
    elif dim == 2:
        raise InputImageError(
            f"{where} is a 2D image ({size[0]} x {size[1]}); UNETR++ segments 3D volumes. Give a "
            "3D file or a DICOM folder holding the whole series"
        )
    elif dim != 3:
        raise InputImageError(f"{where} has {dim} dimensions; a model input must be a 3D volume")
    if min(img.GetSize()) < 2:
        raise InputImageError(
            f"{where} holds a single slice ({' x '.join(map(str, img.GetSize()))}): it is 2D data; "
            "UNETR++ segments 3D volumes. Give the whole series"
        )
    return img


def _check_finite(array: np.ndarray, where: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n = int(bad.sum())
        if n:
            z, y, x = (int(v[0]) for v in np.nonzero(bad))
            raise InputImageError(
                f"{where} has {n} voxel(s) that are NaN or infinite (first at voxel x={x}, y={y}, z={z}); "
                "fix or mask them (e.g. replace with 0) before segmenting"
            )


def _dicom_series(folder: Path, series_uid: str | None) -> tuple[str, list[str]]:
    reader = sitk.ImageSeriesReader()
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" goes to stderr otherwise
    try:
        ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    if not ids:
        raise InputImageError(
            f"{folder} is a folder without a DICOM series; give a DICOM series folder or an image "
            "file (.nii.gz, .nrrd, .mha)"
        )
    if series_uid is not None:
        if series_uid not in ids:
            raise InputImageError(
                f"{folder} has no DICOM series with SeriesInstanceUID {series_uid!r}; it holds: "
                + ", ".join(repr(i) for i in ids)
            )
        chosen = series_uid
    elif len(ids) > 1:
        listing = "; ".join(
            f"{i!r} ({len(reader.GetGDCMSeriesFileNames(str(folder), i))} files)" for i in ids
        )
        raise InputImageError(
            f"{folder} holds {len(ids)} DICOM series (mixed series): {listing}. Choose one by its "
            "SeriesInstanceUID (--series-uid UID, or read_image(..., series_uid=UID)) or put each "
            "series in its own folder"
        )
    else:
        chosen = ids[0]
    files = list(reader.GetGDCMSeriesFileNames(str(folder), chosen))
    return chosen, files


def _slice_positions(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ImagePositionPatient) of each file and the in-plane axes (ImageOrientationPatient:
    row and column direction, 2 x 3), which must be orthonormal and the same in every file."""
    positions = []
    axes = None
    reader = sitk.ImageFileReader()
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        try:
            positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            iop = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")]).reshape(2, 3)
        except (RuntimeError, ValueError):
            raise InputImageError(
                f"DICOM file {f} has no readable ImagePositionPatient/ImageOrientationPatient; "
                "the slices of this series cannot be placed in space"
            ) from None
        if axes is None:
            axes = iop
            # GDCM silently replaces a non-orthonormal orientation by the identity
            deviation = float(np.abs(iop @ iop.T - np.eye(2)).max()) if np.all(np.isfinite(iop)) else np.inf
            if deviation > ORTHONORMAL_TOLERANCE:
                raise InputImageError(
                    f"DICOM series in {folder}: ImageOrientationPatient {iop.ravel().tolist()} of {f} is not "
                    f"two orthogonal unit vectors (deviation {deviation:.3g} > {ORTHONORMAL_TOLERANCE:g}); "
                    "the slices cannot be placed in space. Fix or re-export the series"
                )
        elif np.abs(iop - axes).max() > ORTHONORMAL_TOLERANCE:
            raise InputImageError(
                f"DICOM series in {folder} mixes slice orientations ({f} differs from the first slice); "
                "one volume needs one orientation. Put each orientation in its own series"
            )
    return np.asarray(positions), np.asarray(axes)


def _check_slice_spacing(folder: Path, files: list[str]) -> np.ndarray:
    """Refuse duplicated, missing, unevenly spaced or tilted slices; return the in-plane axes."""
    positions, axes = _slice_positions(folder, files)
    normal = np.cross(axes[0], axes[1])
    dist = positions @ normal
    steps = np.diff(dist)
    if np.any(np.abs(steps) < 1e-3):
        dup = int(np.argmin(np.abs(steps)))
        raise InputImageError(
            f"DICOM series in {folder} has two slices at the same position ({files[dup]} and "
            f"{files[dup + 1]}): duplicated slices or several series/time points mixed together"
        )
    # slices shifted within their plane (gantry tilt, or a sheared acquisition): ITK would stack
    # them straight along the normal, a silently sheared volume
    in_plane = np.linalg.norm(np.diff(positions, axis=0) - steps[:, None] * normal, axis=1)
    tilted = in_plane > SLICE_SPACING_TOLERANCE * np.abs(steps)
    if np.any(tilted):
        i = int(np.argmax(tilted))
        raise InputImageError(
            f"DICOM series in {folder} has slices shifted within their plane ({in_plane[i]:.3f} mm between "
            f"slices {i} and {i + 1} for a {abs(steps[i]):.3f} mm step: gantry tilt or a sheared "
            "acquisition); stacked as a volume its geometry would be wrong. Resample it first (e.g. 3D "
            "Slicer's DICOM import with 'Acquisition geometry regularization')"
        )
    steps = np.abs(steps)
    typical = float(np.median(steps))
    uneven = np.abs(steps - typical) > SLICE_SPACING_TOLERANCE * typical
    if np.any(uneven):
        i = int(np.argmax(uneven))
        gap = steps[i]
        missing = round(gap / typical) - 1
        what = (
            f"about {missing} missing slice(s)" if missing >= 1 and abs(gap - (missing + 1) * typical) < 0.05 * typical
            else "unevenly spaced slices"
        )
        raise InputImageError(
            f"DICOM series in {folder} has {what}: slices {i} and {i + 1} (of {len(files)}, sorted by "
            f"position) are {gap:.3f} mm apart where the series spacing is {typical:.3f} mm "
            f"({os.path.basename(files[i])}, {os.path.basename(files[i + 1])}). Re-export the complete series"
        )
    return axes


def read_dicom_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> Image:
    folder = Path(folder)
    uid, files = _dicom_series(folder, series_uid)
    if len(files) < 2:
        raise InputImageError(
            f"DICOM series {uid!r} in {folder} has a single slice: it is 2D data; UNETR++ segments 3D volumes"
        )
    axes = _check_slice_spacing(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)  # GDCM sorted them by position along the slice normal
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read the DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from None
    img = _check_dimensions(img, f"DICOM series in {folder}")
    image = Image.from_sitk(img, source=str(folder), series_uid=uid, format="dicom", n_files=len(files))
    check_geometry(image, f"DICOM series in {folder}")
    if np.abs(image.direction[:, :2].T - axes).max() > ORTHONORMAL_TOLERANCE:
        raise InputImageError(
            f"DICOM series in {folder}: the volume's axes {image.direction[:, :2].T.ravel().round(4).tolist()} "
            f"differ from the slices' ImageOrientationPatient {axes.ravel().round(4).tolist()}; the reader "
            "could not place the slices. Re-export the series"
        )
    _check_finite(image.array, f"DICOM series in {folder}")
    return image


def read_image(path: str | os.PathLike[str], series_uid: str | None = None) -> Image:
    """Read a 3D volume: an image file SimpleITK reads (NIfTI, NRRD, MHA, ...) or a folder holding
    a DICOM series (choose one with `series_uid` when the folder holds several)."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"input {path} does not exist; check the path")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    if not os.access(path, os.R_OK):
        raise InputImageError(f"input {path} is not readable (permission denied)")
    fmt = _format_of(path)
    # ITK decodes damaged compressed data without a word (zlib errors ignored, CRC not checked):
    # every stored byte is verified before ITK reads the file
    stored = verify_stored_data(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        if "Unable to determine ImageIO reader" in str(exc):
            raise InputImageError(
                f"{path} is not an image SimpleITK can read (expected NIfTI .nii/.nii.gz, NRRD, MHA, "
                "or a DICOM series folder)"
            ) from None
        raise InputImageError(f"cannot read {path}: the file is damaged or truncated ({detail})") from None
    img = _check_dimensions(img, str(path))
    image = Image.from_sitk(img, source=str(path), format=fmt)
    check_geometry(image, str(path))
    if fmt == "nifti":
        _check_nifti_raw(path, stored)
    _check_finite(image.array, str(path))
    return image


# Geometry checks ------------------------------------------------------------------------------
def check_geometry(image: Image, where: str) -> None:
    """Refuse geometry that cannot describe a scan: non-finite or non-positive spacing, a
    non-finite origin, or a direction matrix that is not orthonormal (sheared or degenerate axes,
    which ITK accepts from NRRD/MHA headers but resampling and volumes would get wrong)."""
    spacing = np.asarray(image.spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{where} has voxel spacing {tuple(image.spacing)}: each must be a positive number of mm")
    if not np.all(np.isfinite(image.origin)):
        raise InputImageError(f"{where} has origin {tuple(image.origin)}: it must be finite (mm)")
    d = image.direction
    if not np.all(np.isfinite(d)):
        raise InputImageError(f"{where} has a direction matrix with non-finite values")
    deviation = float(np.abs(d.T @ d - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        rows = "; ".join(" ".join(f"{v:.4g}" for v in col) for col in d.T)
        raise InputImageError(
            f"{where} has a direction matrix that is not orthonormal (axis directions {rows}; deviation "
            f"{deviation:.3g} > {ORTHONORMAL_TOLERANCE:g}): its voxel grid is sheared or degenerate, and "
            "distances and volumes computed on it would be wrong. Resample it onto an orthogonal grid "
            "(e.g. in 3D Slicer: Resample Scalar/Vector/DWI Volume) or fix its header"
        )


# Stored-data checks ----------------------------------------------------------------------------
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _damaged(where: Path | str, why: object) -> InputImageError:
    return InputImageError(f"cannot read {where}: the file is damaged or truncated ({why})")


def _inflate_gzip(fh, where: Path | str) -> int:
    """Inflate the gzip stream(s) from `fh`'s position to the end of the file; Python's gzip checks
    every member's CRC32 and length trailer. Returns the decompressed byte count."""
    total = 0
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
            while block := gz.read(_CHUNK):
                total += len(block)
    except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _damaged(where, f"its gzip data fail their check: {exc}") from None
    return total


def _inflate_zlib(fh, where: Path | str) -> int:
    """Inflate one zlib stream (MetaImage CompressedData) from `fh`'s position; zlib checks its
    Adler-32 trailer. The stream must end exactly at the end of the file. Returns the byte count."""
    inflater = zlib.decompressobj()
    total = 0
    try:
        while (block := fh.read(_CHUNK)) and not inflater.eof:
            total += len(inflater.decompress(block))
        total += len(inflater.flush())
    except zlib.error as exc:
        raise _damaged(where, f"its zlib data fail their check: {exc}") from None
    if not inflater.eof:
        raise _damaged(where, "its zlib data end before the compressed stream does")
    if block or inflater.unused_data:
        raise _damaged(where, "it holds data after the end of its zlib stream")
    return total


def _text_header(path: Path, end_key: str | None, limit: int = 1 << 20) -> tuple[dict[str, str], int]:
    """Fields of a text header up to its data: NRRD ("key: value" lines up to a blank line;
    "key:=value" pairs are not fields) when `end_key` is None, else MetaImage ("Key = Value" lines
    up to and including the `end_key` line). Returns (fields by lower-case key, data offset)."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as fh:
        while offset < limit and (raw := fh.readline(limit)):
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if end_key is None:
                if not line.strip():
                    break
                if ":=" in line:
                    continue
                key, found, value = line.partition(":")
            else:
                key, found, value = line.partition("=")
            if found:
                fields[key.strip().lower()] = value.strip()
            if end_key is not None and key.strip().lower() == end_key:
                break
    return fields, offset


def _data_files(header: Path, name: str) -> list[Path]:
    """Detached data file(s) named in a header (relative to the header's folder)."""
    if name.upper() == "LIST" or "%" in name or " " in name:
        raise InputImageError(
            f"{header} keeps its data in a list of files ({name!r}); unetrpp reads headers with one "
            "data file. Convert it to a single .nrrd/.nii.gz file"
        )
    return [header.parent / name]


def _verify_embedded(path: Path, offset: int, inflate) -> int:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return inflate(fh, path)


def verify_stored_data(path: Path) -> int | None:
    """Verify the compressed data of an image file before it is used, as ITK does not: a file that
    starts as gzip (.nii.gz and any other gzip-wrapped file) is inflated to its end with every
    member's CRC32 and length checked; NRRD gzip data (attached or detached) likewise; MetaImage
    zlib data (CompressedData) with its Adler-32. Returns the decompressed size in bytes of a
    gzip-wrapped file, the file size of an uncompressed one, or None where no byte count applies."""
    with open(path, "rb") as fh:
        magic = fh.read(8)
    try:
        if magic.startswith(_GZIP_MAGIC):
            return _verify_embedded(path, 0, _inflate_gzip)
        if magic.startswith(b"NRRD"):
            fields, offset = _text_header(path, None)
            if fields.get("encoding", "raw").lower() in ("gz", "gzip"):
                detached = fields.get("data file") or fields.get("datafile")
                if detached:
                    for part in _data_files(path, detached):
                        _verify_embedded(part, 0, _inflate_gzip)
                else:
                    _verify_embedded(path, offset, _inflate_gzip)
            return None
        if path.name.lower().endswith((".mha", ".mhd")):
            fields, offset = _text_header(path, "elementdatafile")
            if fields.get("compresseddata", "false").lower() == "true":
                detached = fields.get("elementdatafile", "LOCAL")
                if detached.upper() != "LOCAL":
                    for part in _data_files(path, detached):
                        _verify_embedded(part, 0, _inflate_zlib)
                else:
                    _verify_embedded(path, offset, _inflate_zlib)
            return None
    except FileNotFoundError as exc:
        raise InputImageError(f"cannot read {path}: its data file {exc.filename} does not exist") from None
    return path.stat().st_size


def source_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files an input path stands for, which no output may replace: the file itself and the
    detached data file of an .nhdr/.mhd header, or a DICOM folder itself (with everything in it)."""
    path = Path(path)
    files = [path]
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
            if magic == b"NRRD":
                fields, _ = _text_header(path, None)
                detached = fields.get("data file") or fields.get("datafile")
            elif path.name.lower().endswith(".mhd"):
                fields, _ = _text_header(path, "elementdatafile")
                detached = fields.get("elementdatafile")
                detached = None if detached and detached.upper() == "LOCAL" else detached
            else:
                detached = None
        except OSError:
            detached = None
        if detached and detached.upper() != "LIST" and "%" not in detached:
            files.append(path.parent / detached)
    return files


def _nifti_header(f) -> tuple[str, list[int], int, int, int] | None:
    """(byte order, dims, bitpix, datatype, data offset) of a NIfTI-1/2 header, or None."""
    header = f.read(548)
    if len(header) < 348:
        return None
    for order in "<>":
        (sizeof_hdr,) = struct.unpack(order + "i", header[:4])
        if sizeof_hdr in (348, 540):
            break
    else:
        return None
    if sizeof_hdr == 348:
        dims = struct.unpack(order + "8h", header[40:56])
        datatype, bitpix = struct.unpack(order + "2h", header[70:74])
        offset = int(struct.unpack(order + "f", header[108:112])[0])
    else:
        datatype, bitpix = struct.unpack(order + "2h", header[12:16])
        dims = struct.unpack(order + "8q", header[16:80])
        (offset,) = struct.unpack(order + "q", header[168:176])
    return order, [max(int(d), 1) for d in dims[1 : 1 + dims[0]]], bitpix, datatype, offset


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _check_nifti_raw(path: Path, stored_bytes: int | None) -> None:
    """Checks ITK's NIfTI reader cannot do for us: it fills a truncated file's missing tail with
    zeros (so the stored size, decompressed, must hold all the data the header announces), and it
    silently turns NaN/Inf voxels into 0 (so float data are read raw and checked)."""
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = _nifti_header(f)
            if head is None:
                return  # a .hdr/.img pair: ITK checked the data file's size
            order, dims, bitpix, datatype, offset = head
            n = int(np.prod(dims))
            expected = offset + n * bitpix // 8
            if stored_bytes is not None and stored_bytes < expected:
                raise InputImageError(
                    f"cannot read {path}: the file is damaged or truncated (it holds {stored_bytes} of the "
                    f"{expected} bytes its header announces)"
                )
            if datatype not in _NIFTI_FLOATS:
                return
            f.seek(offset)
            values = np.frombuffer(f.read(n * bitpix // 8), dtype=order + _NIFTI_FLOATS[datatype])
    except (EOFError, OSError, struct.error, zlib.error) as exc:
        raise _damaged(path, exc) from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        first = int(bad[0])
        x = first % dims[0]
        y = first // dims[0] % dims[1]
        z = first // (dims[0] * dims[1]) % dims[2]
        raise InputImageError(
            f"{path} has {bad.size} voxel(s) that are NaN or infinite (first at voxel "
            f"x={x}, y={y}, z={z}); fix or mask them (e.g. replace with 0) before segmenting"
        )


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".nii.gz", "nifti"), (".nii", "nifti"), (".seg.nrrd", "nrrd"), (".nrrd", "nrrd"),
                        (".nhdr", "nrrd"), (".mha", "mha"), (".mhd", "mha")):
        if name.endswith(suffix):
            return fmt
    return "other"


# Writing ----------------------------------------------------------------------------------
def image_suffix(path: str | os.PathLike[str]) -> str:
    """The full image suffix of a path (".nii.gz", ".seg.nrrd", ".nrrd", ...)."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", *WRITE_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def write_image(image: Image, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write `image` (format from the suffix) atomically (`atomic.staged_file`: a temporary file
    beside `path`, then renamed), so a failure never leaves a partial file."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InputImageError(
            f"cannot write {path}: unknown image format {suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    if suffix in (".nhdr", ".mhd"):  # header + data file: no single-file rename possible
        sitk.WriteImage(image.to_sitk(), str(path), compress)
        return path
    from .atomic import staged_file

    with staged_file(path) as tmp:
        sitk.WriteImage(image.to_sitk(), str(tmp), compress)
    return path
