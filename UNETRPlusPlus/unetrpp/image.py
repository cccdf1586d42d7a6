"""Volumes as one `Image` type, read from and written to NIfTI, NRRD, MHA and DICOM (a series of
single-frame files or Enhanced multi-frame files, in a folder or as one file).

This module only re-exports the names callers use; the work is in `unetrpp.imaging` (one job per
module: `volume` type and geometry, `reading`, `dicom`, `integrity` byte-level checks, `writing`)
and the table of formats in `unetrpp.formats`.

Every problem a user can cause (missing file, not an image, 2D or 4D data, NaN/Inf voxels, a
DICOM folder with several series, missing or unevenly spaced slices, a symbolic link loop or a
FIFO as input) raises `InputImageError` with a message that says what to do.
"""

from __future__ import annotations

from .errors import InputImageError
from .formats import WRITE_SUFFIXES, format_of, image_suffix
from .imaging.dicom import SLICE_SPACING_TOLERANCE, read_dicom_file, read_dicom_series
from .imaging.integrity import verify_stored_data
from .imaging.reading import check_input_path, read_image, source_files
from .imaging.volume import ORTHONORMAL_TOLERANCE, Image, Triple, check_geometry
from .imaging.writing import write_image

__all__ = [
    "Image", "Triple", "InputImageError", "read_image", "read_dicom_series", "read_dicom_file", "write_image",
    "check_geometry", "check_input_path", "source_files", "verify_stored_data", "image_suffix", "format_of",
    "WRITE_SUFFIXES", "ORTHONORMAL_TOLERANCE", "SLICE_SPACING_TOLERANCE",
]
