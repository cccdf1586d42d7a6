"""Byte-level integrity of stored image data, checked before ITK reads a file, because ITK does
not: damaged gzip/zlib data decode without a word (checksums unchecked), a truncated NIfTI file's
missing tail is filled with zeros, NaN/Inf voxels in NIfTI become 0.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
import zlib

import numpy as np

from ..errors import InputImageError

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


def text_header(path: Path, end_key: str | None, limit: int = 1 << 20) -> tuple[dict[str, str], int]:
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
            fields, offset = text_header(path, None)
            if fields.get("encoding", "raw").lower() in ("gz", "gzip"):
                detached = fields.get("data file") or fields.get("datafile")
                if detached:
                    for part in _data_files(path, detached):
                        _verify_embedded(part, 0, _inflate_gzip)
                else:
                    _verify_embedded(path, offset, _inflate_gzip)
            return None
        if path.name.lower().endswith((".mha", ".mhd")):
            fields, offset = text_header(path, "elementdatafile")
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


def check_nifti_raw(path: Path, stored_bytes: int | None) -> None:
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

