"""The one table of file formats: which suffix is what, and what the engine does with it.

Every entry point (segment, batch, the server, the remote client, the Slicer module, training's
evaluation) imports its suffix lists from here instead of keeping its own. Standard library only:
importing it loads neither SimpleITK nor torch.

    suffix      format  input  write_image  labelmap  segmentation  dicom_seg  detached data
    .nii.gz     nifti   yes    yes          yes
    .nii        nifti   yes    yes          yes
    .nrrd       nrrd    yes    yes          yes                                 (may name a data file)
    .nhdr       nrrd    yes    yes                                              yes
    .mha        mha     yes    yes          yes                                 (may name a data file)
    .mhd        mha     yes    yes                                              yes
    .seg.nrrd   nrrd           yes                    yes
    .dcm        dicom                                               yes

A DICOM input is a folder (a series of single-frame files or one Enhanced multi-frame file) or the
path of an Enhanced multi-frame file; it has no suffix of its own (DICOM files often have none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileFormat:
    """One row of the table: a suffix and what the engine does with files that end in it."""

    suffix: str
    format: str  # "nifti", "nrrd", "mha", "dicom"
    input: bool = False  # read as an input volume (and picked up by `unetrpp batch` in a folder)
    write_image: bool = False  # `write_image` writes it (any volume)
    labelmap: bool = False  # a labelmap / probability map output
    segmentation: bool = False  # a Slicer segmentation (names, colours, terminology)
    dicom_seg: bool = False  # a DICOM Segmentation object
    detached: bool = False  # a header whose voxels are in another file


#: The table. Longer suffixes first where one ends another (".seg.nrrd" before ".nrrd").
FORMATS: tuple[FileFormat, ...] = (
    FileFormat(".seg.nrrd", "nrrd", write_image=True, segmentation=True),
    FileFormat(".nii.gz", "nifti", input=True, write_image=True, labelmap=True),
    FileFormat(".nii", "nifti", input=True, write_image=True, labelmap=True),
    FileFormat(".nrrd", "nrrd", input=True, write_image=True, labelmap=True),
    FileFormat(".mha", "mha", input=True, write_image=True, labelmap=True),
    FileFormat(".nhdr", "nrrd", input=True, write_image=True, detached=True),
    FileFormat(".mhd", "mha", input=True, write_image=True, detached=True),
    FileFormat(".dcm", "dicom", dicom_seg=True),
)


def _suffixes(**want: bool) -> tuple[str, ...]:
    return tuple(f.suffix for f in FORMATS if all(getattr(f, k) == v for k, v in want.items()))


#: Image files read as inputs (batch takes these from a folder; `.seg.nrrd` outputs are not inputs).
INPUT_SUFFIXES = _suffixes(input=True)
#: Inputs whose voxels lie in the file itself by design (an .nhdr/.mhd header names another file;
#: an .nrrd/.mha may too, which a reader of untrusted uploads must check in the header).
SINGLE_FILE_INPUT_SUFFIXES = _suffixes(input=True, detached=False)
#: Headers whose voxels are in a separate data file.
DETACHED_SUFFIXES = _suffixes(detached=True)
#: Suffixes `write_image` accepts.
WRITE_SUFFIXES = _suffixes(write_image=True)
#: Labelmap outputs (also the probability/confidence maps).
LABELMAP_SUFFIXES = _suffixes(labelmap=True)
PROBABILITY_SUFFIXES = LABELMAP_SUFFIXES
#: Slicer segmentation outputs.
SEGMENTATION_SUFFIXES = _suffixes(segmentation=True)
#: DICOM SEG outputs (for DICOM inputs only).
DICOM_SEG_SUFFIXES = _suffixes(dicom_seg=True)
#: Every suffix a segmentation output may have, the default first.
OUTPUT_SUFFIXES = SEGMENTATION_SUFFIXES + LABELMAP_SUFFIXES + DICOM_SEG_SUFFIXES
#: The default segmentation output suffix.
DEFAULT_OUTPUT_SUFFIX = SEGMENTATION_SUFFIXES[0]

_BY_LENGTH = sorted(FORMATS, key=lambda f: -len(f.suffix))


def file_format(path: str | os.PathLike[str]) -> FileFormat | None:
    """The table row of a path by its (case-insensitive) name, or None."""
    name = Path(path).name.lower()
    return next((f for f in _BY_LENGTH if name.endswith(f.suffix)), None)


def image_suffix(path: str | os.PathLike[str]) -> str:
    """The full suffix of a path (".nii.gz", ".seg.nrrd", ".nrrd", ...); for a name outside the
    table, its last suffix (lower case), "" for none."""
    found = file_format(path)
    return found.suffix if found is not None else Path(path).suffix.lower()


def format_of(path: str | os.PathLike[str]) -> str:
    """"nifti", "nrrd", "mha", "dicom" by suffix, else "other"."""
    found = file_format(path)
    return found.format if found is not None else "other"


def strip_suffix(path: str | os.PathLike[str]) -> str:
    """The file name without its full suffix ("ct.nii.gz" -> "ct")."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else Path(name).stem
