"""`read_image`: any input path to an `Image`. The path is checked first (it exists, is a regular
file or a folder, not a symbolic link loop, a FIFO, a device or a socket: reading one of those would
hang or read endless bytes), then the stored bytes (`integrity`), then the volume (`volume` checks).
A folder or a DICOM file goes to `dicom`; any other file to SimpleITK.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputImageError
from ..formats import format_of
from .dicom import is_dicom_file, read_dicom_file, read_dicom_series, special_kind
from .integrity import check_nifti_raw, text_header, verify_stored_data
from .volume import Image, check_dimensions, check_finite, check_geometry

def _loop(path: Path) -> InputImageError:
    return InputImageError(
        f"{path} is a symbolic link loop (or a chain of links too long to follow); give the path of the "
        "image file or DICOM folder itself"
    )


def check_input_path(path: str | os.PathLike[str]) -> Path:
    """Refuse an input path that is not a readable regular file or folder (following symbolic
    links), with an input error that says what it is; returns the path."""
    path = Path(path)
    try:
        st = path.stat()
    except RuntimeError:  # Path.resolve/stat of a symlink loop in some Python versions
        raise _loop(path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _loop(path) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                raise InputImageError(f"input {path} is a symbolic link to {os.readlink(path)}, which does not exist") from None
            raise InputImageError(f"input {path} does not exist; check the path") from None
        raise InputImageError(f"input {path} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return path
    kind = special_kind(st.st_mode)
    raise InputImageError(
        f"input {path} is {kind}, not an image file or a DICOM folder; give a file (.nii.gz, .nrrd, .mha, "
        "an Enhanced DICOM file) or a DICOM series folder"
    )


def read_image(path: str | os.PathLike[str], series_uid: str | None = None) -> Image:
    """Read a 3D volume: an image file SimpleITK reads (NIfTI, NRRD, MHA, ...), a DICOM folder
    (a series of single-frame files or Enhanced multi-frame files; choose one series with
    `series_uid` when the folder holds several) or an Enhanced (multi-frame) DICOM file."""
    path = check_input_path(path)
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    if not os.access(path, os.R_OK):
        raise InputImageError(f"input {path} is not readable (permission denied)")
    if is_dicom_file(path):
        return read_dicom_file(path, series_uid)
    fmt = format_of(path)
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
    img = check_dimensions(img, str(path))
    image = Image.from_sitk(img, source=str(path), format=fmt)
    check_geometry(image, str(path))
    if fmt == "nifti":
        check_nifti_raw(path, stored)
    check_finite(image.array, str(path))
    return image


def source_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files an input path stands for, which no output may replace: the file itself and the
    detached data file of an .nhdr/.mhd header, or a DICOM folder itself (with everything in it).
    A symbolic link loop is refused here already (input error), as resolving it would fail."""
    path = Path(path)
    try:
        path.stat()
    except RuntimeError:
        raise _loop(path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _loop(path) from None
    files = [path]
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
            if magic == b"NRRD":
                fields, _ = text_header(path, None)
                detached = fields.get("data file") or fields.get("datafile")
            elif path.name.lower().endswith(".mhd"):
                fields, _ = text_header(path, "elementdatafile")
                detached = fields.get("elementdatafile")
                detached = None if detached and detached.upper() == "LOCAL" else detached
            else:
                detached = None
        except OSError:
            detached = None
        if detached and detached.upper() != "LIST" and "%" not in detached:
            files.append(path.parent / detached)
    return files
