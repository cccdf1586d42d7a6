"""DICOM input, read the same way whatever its encoding:

- a folder holding a series of single-frame files (CT/MR Image Storage, one slice per file),
- a folder holding one (or several) Enhanced / Legacy Converted Enhanced multi-frame files of one
  series (Enhanced CT/MR: how current scanners and PACS exports deliver a series),
- the path of one such multi-frame file.

Every frame is placed by its own position, never by file or frame order: for single-frame files
from ImagePositionPatient / ImageOrientationPatient / PixelSpacing, for multi-frame files from the
functional groups (PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence, per frame
or shared). The same checks apply to both (`order_frames`): one orientation, orthonormal axes, no
duplicated positions, no in-plane shift between slices (gantry tilt, shear), even spacing (a gap
is named as missing slices). Frames are stacked in increasing position along the slice normal
(normal = row x column direction), so a series and the same data as one Enhanced file, in either
frame order, give the same volume: same voxels, same spacing, origin and direction.

Pixel data are decoded by SimpleITK (GDCM: every transfer syntax, rescale slope/intercept applied);
multi-frame headers are read with pydicom.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import EnvironmentProblem, InputImageError
from .volume import ORTHONORMAL_TOLERANCE, Image, check_dimensions, check_finite, check_geometry, check_size

log = logging.getLogger(__name__)

#: Relative tolerance on slice distances in a DICOM series before slices count as uneven.
SLICE_SPACING_TOLERANCE = 0.01


def _pydicom():
    try:
        import pydicom
    except ModuleNotFoundError:  # pragma: no cover - pydicom is a dependency
        raise EnvironmentProblem("reading a multi-frame (Enhanced) DICOM file needs pydicom: pip install pydicom") from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (the "DICM" marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# Which files ---------------------------------------------------------------------------------------
_SPECIAL = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str:
    """What a path that is neither a regular file nor a folder is, in words (from its st_mode)."""
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def check_folder_entries(folder: Path) -> None:
    """Refuse a folder holding entries that are neither files nor folders: GDCM's scan of the folder
    silently drops files of the series beside a FIFO, and finds no series at all beside a symbolic
    link loop (measured with SimpleITK 2.5), so a series would lose slices without a word."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise InputImageError(f"cannot list the DICOM folder {folder} ({exc.strerror or exc})") from None
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as exc:
            what = ("a symbolic link loop" if exc.errno == errno.ELOOP
                    else "a symbolic link to a file that does not exist" if exc.errno in (errno.ENOENT, errno.ENOTDIR)
                    else f"unreadable ({exc.strerror or exc})")
        else:
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                continue
            what = special_kind(mode)
        raise InputImageError(
            f"DICOM folder {folder} holds {entry.name!r}, which is {what}; a DICOM folder must hold only files "
            "(and folders). Remove it, or copy the series to a folder of its own"
        )


def series_files(folder: Path, series_uid: str | None) -> tuple[str, list[str]]:
    """The SeriesInstanceUID and files of the one series in `folder` (or of `series_uid`)."""
    check_folder_entries(folder)
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


def _frame_count(reader: sitk.ImageFileReader, path: str) -> int:
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read DICOM file {path}: {str(exc).strip().splitlines()[-1]}") from None
    size = reader.GetSize()
    return int(size[2]) if len(size) > 2 else 1


# Where the frames lie ---------------------------------------------------------------------------------
@dataclass
class Frames:
    """The placement of every frame, in storage order (file by file, frame by frame)."""

    positions: np.ndarray  # (n, 3) ImagePositionPatient, LPS mm
    axes: np.ndarray  # (2, 3) row and column direction cosines (ImageOrientationPatient)
    names: list[str]  # each frame's name for messages
    pixel_spacing: tuple[float, float] | None = None  # (x, y) mm: column spacing, row spacing


def _check_orientation(where: str, iop: np.ndarray, name: str, axes: np.ndarray | None) -> np.ndarray:
    """The first orientation must be two orthonormal vectors, every later one the same."""
    if axes is None:
        # GDCM silently replaces a non-orthonormal orientation by the identity
        deviation = float(np.abs(iop @ iop.T - np.eye(2)).max()) if np.all(np.isfinite(iop)) else np.inf
        if deviation > ORTHONORMAL_TOLERANCE:
            raise InputImageError(
                f"{where}: ImageOrientationPatient {iop.ravel().tolist()} of {name} is not "
                f"two orthogonal unit vectors (deviation {deviation:.3g} > {ORTHONORMAL_TOLERANCE:g}); "
                "the slices cannot be placed in space. Fix or re-export the series"
            )
        return iop
    if np.abs(iop - axes).max() > ORTHONORMAL_TOLERANCE:
        raise InputImageError(
            f"{where} mixes slice orientations ({name} differs from the first slice); "
            "one volume needs one orientation. Put each orientation in its own series"
        )
    return axes


def _single_frame_placement(where: str, files: list[str]) -> Frames:
    """Positions and orientation of single-frame files, from their headers (as GDCM reads them)."""
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
        axes = _check_orientation(where, iop, f, axes)
    return Frames(np.asarray(positions, dtype=np.float64), np.asarray(axes), list(files))


def _values(item: Any, keyword: str, n: int, name: str, where: str) -> np.ndarray:
    """`n` finite numbers of a (multi-valued) attribute of a functional group item."""
    value = item.get(keyword) if item is not None else None
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.array([])
    if out.size != n or not np.all(np.isfinite(out)):
        raise InputImageError(
            f"{where}: {name} has no readable {keyword} ({value!r}); its frames cannot be placed in space"
        )
    return out


def _multiframe_placement(where: str, path: str, ds: Any) -> tuple[Frames, tuple[float, float]]:
    """Placement of every frame of one multi-frame file from its functional groups (a per-frame
    item wins over the shared one), and the one rescale (slope, intercept) of its frames."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    if per_frame is None or len(per_frame) != n:
        raise InputImageError(
            f"{where}: {path} holds {n} frames without per-frame functional groups (PlanePositionSequence for "
            "each frame), so its frames cannot be placed in space. Export the series as single-frame files "
            "or as an Enhanced CT/MR object"
        )

    def group(i: int, keyword: str) -> Any:
        for item in (per_frame[i], shared):
            if item is not None and keyword in item and len(item[keyword].value):
                return item[keyword].value[0]
        return None

    positions, axes, spacing, rescale = [], None, None, None
    names = [f"{path} frame {i + 1}" for i in range(n)]
    for i in range(n):
        pos = group(i, "PlanePositionSequence")
        positions.append(_values(pos, "ImagePositionPatient", 3, names[i], where))
        orient = group(i, "PlaneOrientationSequence")
        axes = _check_orientation(where, _values(orient, "ImageOrientationPatient", 6, names[i], where).reshape(2, 3),
                                  names[i], axes)
        measures = group(i, "PixelMeasuresSequence")
        ps = tuple(_values(measures, "PixelSpacing", 2, names[i], where)[::-1])  # (row, column) -> (x, y)
        if spacing is None:
            spacing = ps
        elif np.abs(np.subtract(ps, spacing)).max() > 1e-6 * max(spacing):
            raise InputImageError(
                f"{where}: {names[i]} has pixel spacing {ps} where the first frame has {spacing}; one volume "
                "needs one pixel spacing"
            )
        transform = group(i, "PixelValueTransformationSequence")
        pair = (float(transform.get("RescaleSlope", 1) or 1), float(transform.get("RescaleIntercept", 0) or 0)) \
            if transform is not None else (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        if rescale is None:
            rescale = pair
        elif pair != rescale:
            raise InputImageError(
                f"{where}: the frames of {path} have different rescale slopes/intercepts ({rescale} for the first, "
                f"{pair} for frame {i + 1}); unetrpp reads multi-frame files with one rescale. Export the series "
                "as single-frame files"
            )
    return Frames(np.asarray(positions), axes, names, spacing), rescale


def order_frames(where: str, frames: Frames) -> tuple[np.ndarray, np.ndarray, float]:
    """Sort frames along the slice normal and refuse duplicated, missing, unevenly spaced or
    tilted slices. Returns (storage indices in increasing position, normal, slice step in mm)."""
    axes, names = frames.axes, frames.names
    normal = np.cross(axes[0], axes[1])
    order = np.argsort(frames.positions @ normal, kind="stable")
    positions = frames.positions[order]
    names = [names[i] for i in order]
    dist = positions @ normal
    steps = np.diff(dist)
    if np.any(np.abs(steps) < 1e-3):
        dup = int(np.argmin(np.abs(steps)))
        raise InputImageError(
            f"{where} has two slices at the same position ({names[dup]} and {names[dup + 1]}): "
            "duplicated slices or several series/time points mixed together"
        )
    # slices shifted within their plane (gantry tilt, or a sheared acquisition): ITK would stack
    # them straight along the normal, a silently sheared volume
    in_plane = np.linalg.norm(np.diff(positions, axis=0) - steps[:, None] * normal, axis=1)
    tilted = in_plane > SLICE_SPACING_TOLERANCE * np.abs(steps)
    if np.any(tilted):
        i = int(np.argmax(tilted))
        raise InputImageError(
            f"{where} has slices shifted within their plane ({in_plane[i]:.3f} mm between "
            f"slices {i} and {i + 1} for a {abs(steps[i]):.3f} mm step: gantry tilt or a sheared "
            "acquisition); stacked as a volume its geometry would be wrong. Resample it first (e.g. 3D "
            "Slicer's DICOM import with 'Acquisition geometry regularization')"
        )
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
            f"{where} has {what}: slices {i} and {i + 1} (of {len(names)}, sorted by "
            f"position) are {gap:.3f} mm apart where the series spacing is {typical:.3f} mm "
            f"({os.path.basename(names[i])}, {os.path.basename(names[i + 1])}). Re-export the complete series"
        )
    return order, normal, float((dist[-1] - dist[0]) / (len(dist) - 1))


# Reading -----------------------------------------------------------------------------------------------
def _single_slice(where: str, uid: str) -> InputImageError:
    return InputImageError(
        f"{where} (series {uid!r}) holds a single slice: it is 2D data; UNETR++ segments 3D volumes. "
        "Give the folder holding the whole series"
    )


def read_dicom_series(folder: str | os.PathLike[str], series_uid: str | None = None) -> Image:
    """Read the DICOM series in `folder` (choose one with `series_uid` when it holds several),
    whether it is stored as single-frame files or as multi-frame (Enhanced) files."""
    folder = Path(folder)
    uid, files = series_files(folder, series_uid)
    where = f"DICOM series in {folder}"
    reader = sitk.ImageFileReader()
    counts = [_frame_count(reader, f) for f in files]
    if max(counts) > 1:
        return read_multiframe(files, where, uid, source=folder)
    if len(files) < 2:
        raise _single_slice(where, uid)
    frames = _single_frame_placement(where, files)
    order, _, _ = order_frames(where, frames)
    files = [files[i] for i in order]
    series = sitk.ImageSeriesReader()
    series.SetFileNames(files)  # sorted by position along the slice normal
    series.MetaDataDictionaryArrayUpdateOn()
    try:
        img = series.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read the DICOM series in {folder}: {str(exc).strip().splitlines()[-1]}") from None
    img = check_dimensions(img, where)
    image = Image.from_sitk(img, source=str(folder), series_uid=uid, format="dicom", n_files=len(files),
                            dicom_encoding="single-frame")
    check_geometry(image, where)
    if np.abs(image.direction[:, :2].T - frames.axes).max() > ORTHONORMAL_TOLERANCE:
        raise InputImageError(
            f"{where}: the volume's axes {image.direction[:, :2].T.ravel().round(4).tolist()} "
            f"differ from the slices' ImageOrientationPatient {frames.axes.ravel().round(4).tolist()}; the reader "
            "could not place the slices. Re-export the series"
        )
    check_finite(image.array, where)
    return image


#: Modalities of DICOM objects that hold results or annotations, not a scan to segment.
_NOT_SCANS = {"SEG": "a DICOM Segmentation (a result)", "RTSTRUCT": "an RT Structure Set (contours)",
              "SR": "a Structured Report", "PR": "a Presentation State", "KO": "a Key Object Selection",
              "REG": "a Registration", "RTPLAN": "an RT Plan"}


def _refuse_non_scan(ds: Any, where: str) -> None:
    what = _NOT_SCANS.get(str(ds.get("Modality", "") or "").upper())
    if what is not None:
        raise InputImageError(f"{where} is {what}, not a scan; give the CT/MR series (or Enhanced file) to segment")


def read_dicom_file(path: str | os.PathLike[str], series_uid: str | None = None) -> Image:
    """Read one DICOM file: an Enhanced (multi-frame) volume; a single-frame file is one slice (2D)."""
    path = Path(path)
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many kinds for a damaged file
        raise InputImageError(f"cannot read DICOM file {path}: {exc}") from None
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    _refuse_non_scan(ds, f"DICOM file {path}")
    if series_uid is not None and uid != series_uid:
        raise InputImageError(f"DICOM file {path} belongs to series {uid!r}, not to {series_uid!r}")
    if int(ds.get("NumberOfFrames", 1) or 1) < 2:
        raise _single_slice(f"DICOM file {path}", uid)
    return read_multiframe([str(path)], f"DICOM file {path}", uid, source=path)


def read_multiframe(files: list[str], where: str, uid: str, source: Path) -> Image:
    """Read the frames of one or more multi-frame (or single-frame) files of one series and stack
    them by position along the slice normal (see `order_frames`)."""
    pydicom = _pydicom()
    reader = sitk.ImageFileReader()
    arrays, all_frames, spacing = [], None, None
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise InputImageError(f"{where}: cannot read DICOM file {f}: {exc}") from None
        _refuse_non_scan(ds, f"{where}: {f}")
        if "PerFrameFunctionalGroupsSequence" in ds:
            frames, _ = _multiframe_placement(where, f, ds)
        else:
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                _multiframe_placement(where, f, ds)  # raises: frames without positions
            frames = _single_frame_placement(where, [f])
            ps = ds.get("PixelSpacing")
            frames.pixel_spacing = (float(ps[1]), float(ps[0])) if ps and len(ps) == 2 else None
        if all_frames is None:
            all_frames, spacing = frames, frames.pixel_spacing
        else:
            _check_orientation(where, frames.axes, frames.names[0], all_frames.axes)
            if frames.pixel_spacing != spacing:
                raise InputImageError(
                    f"{where}: {f} has pixel spacing {frames.pixel_spacing} where {files[0]} has {spacing}; "
                    "one volume needs one pixel spacing"
                )
            all_frames = Frames(np.concatenate([all_frames.positions, frames.positions]), all_frames.axes,
                                all_frames.names + frames.names, spacing)
        reader.SetFileName(f)
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise InputImageError(f"{where}: cannot read {f}: {str(exc).strip().splitlines()[-1]}") from None
        if img.GetNumberOfComponentsPerPixel() != 1:
            check_dimensions(img, f)  # raises: colour/vector data
        array = sitk.GetArrayFromImage(img)
        array = array[None] if array.ndim == 2 else array
        if array.shape[0] != len(frames.names) or (arrays and array.shape[1:] != arrays[0].shape[1:]):
            raise InputImageError(
                f"{where}: {f} holds {array.shape[0]} frames of {array.shape[2]} x {array.shape[1]} pixels, which "
                "does not match its header or the other files of the series"
            )
        arrays.append(array)
    assert all_frames is not None
    if spacing is None:
        raise InputImageError(f"{where} has no PixelSpacing; its pixel size is unknown")
    if len(all_frames.names) < 2:
        raise _single_slice(where, uid)
    order, normal, step = order_frames(where, all_frames)
    array = np.concatenate(arrays)[order] if len(arrays) > 1 else arrays[0][order]
    check_size(array.shape[::-1], where)
    direction = np.column_stack([all_frames.axes[0], all_frames.axes[1], normal])
    image = Image(np.ascontiguousarray(array), (spacing[0], spacing[1], step), all_frames.positions[order[0]], direction,
                  meta=dict(source=str(source), series_uid=uid, format="dicom", n_files=len(files),
                            n_frames=len(order), dicom_encoding="multi-frame"))
    check_geometry(image, where)
    check_finite(image.array, where)
    log.debug("%s: %d frames from %d multi-frame file(s), %s", where, len(order), len(files), image.describe())
    return image
