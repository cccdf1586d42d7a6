"""Volumes in and out, one job per module (`unetrpp.image` re-exports the names callers use):

    volume     the `Image` type, its geometry, and the checks every volume passes (3D, scalar,
               finite voxels, an orthonormal grid)
    reading    `read_image`: any input path (file or folder) to an `Image`, with the path checks
    dicom      DICOM input: series of single-frame files and Enhanced multi-frame files, placed by
               their positions with the same checks (missing slices, tilt, spacing)
    integrity  byte-level checks ITK does not make (gzip/zlib checksums, truncation, NaN in NIfTI)
               and the files an input path stands for
    writing    `write_image`, atomically

The table of file formats and suffixes is `unetrpp.formats`.
"""
