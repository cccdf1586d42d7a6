"""`write_image`: an `Image` to a file whose format comes from its suffix (`unetrpp.formats`),
placed atomically by `unetrpp.atomic` so a failure never leaves a partial file."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputImageError
from ..formats import DETACHED_SUFFIXES, WRITE_SUFFIXES, image_suffix
from .volume import Image


def write_image(image: Image, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write `image` (format from the suffix) atomically (`atomic.staged_file`: a temporary file
    beside `path`, then renamed), so a failure never leaves a partial file."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InputImageError(
            f"cannot write {path}: unknown image format {suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    if suffix in DETACHED_SUFFIXES:  # header + data file: no single-file rename possible
        sitk.WriteImage(image.to_sitk(), str(path), compress)
        return path
    from ..atomic import staged_file

    with staged_file(path) as tmp:
        sitk.WriteImage(image.to_sitk(), str(tmp), compress)
    return path
