"""Files from a remote client: self-contained or refused before anything reads them.

An image header can name another file for its voxels (NRRD `data file:`, MetaImage
`ElementDataFile`, NIfTI/Analyze `.hdr` + `.img`). On a server that other file would be one of the
server's own (`/dev/zero`, `/etc/...`, another job's upload), read on a client's word. So every
upload is checked here, from its own first bytes only, before ITK or the engine opens it:

    .nii / .nii.gz   a single-file NIfTI-1 (magic `n+1`) or NIfTI-2 (`n+2`); not `ni1`/`ni2` (a header
                     whose data lie in a separate .img) and not an Analyze 7.5 header
    .nrrd            a NRRD header (`NRRD000x`) without a `data file` field: the voxels follow it
    .mha             a MetaImage header whose `ElementDataFile` is `LOCAL`
    .zip             a DICOM series: plain members only (no links), each a DICOM Part-10 file
                     (`DICM` at byte 128), unpacked flat under generated names; DICOM files cannot
                     refer to other files
Detached headers (.nhdr, .mhd, .hdr/.img) are refused by their suffix with what to send instead.
The content must also be the format its suffix names, so no reader picks the file by another rule.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import RequestError, ResourceLimitError
from ..formats import DETACHED_SUFFIXES as _TABLE_DETACHED
from ..formats import SINGLE_FILE_INPUT_SUFFIXES

#: Input files the server accepts, by suffix (the one format table's single-file inputs); a DICOM
#: series comes as a zip of its files.
INPUT_SUFFIXES = SINGLE_FILE_INPUT_SUFFIXES + (".zip",)
#: Suffixes of headers that keep their voxels in another file (the table's, and formats the
#: engine does not read but a user may try), and what is wrong with them.
DETACHED_SUFFIXES = {
    **{s: f"a detached header ({s}) names a separate data file" for s in _TABLE_DETACHED},
    ".hdr": "an Analyze/NIfTI header (.hdr) keeps its voxels in a separate .img file",
    ".img": "an Analyze/NIfTI .img file holds voxels without their header",
    ".raw": "a .raw file holds voxels without their header",
    ".zraw": "a .zraw file holds voxels without their header",
}
#: A DICOM zip may hold at most this many files.
MAX_ZIP_MEMBERS = 5000
#: The header of an uploaded image must end within this many bytes.
MAX_HEADER_BYTES = 1 << 16
_CHUNK = 1 << 20
_SEND = "send a .nii.gz, .nii, .nrrd or .mha file that holds its voxels, or a .zip of a DICOM series"
#: zip members that are not part of a series and are skipped (archivers' and file managers' extras)
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


def suffix_of(filename: str) -> str:
    """The accepted suffix of an upload's file name; refuses detached headers and other suffixes."""
    name = filename.lower()
    found = next((s for s in INPUT_SUFFIXES if name.endswith(s)), "")
    if found:
        return found
    detached = next((why for s, why in DETACHED_SUFFIXES.items() if name.endswith(s)), None)
    if detached:
        raise RequestError(f"{detached}, which the server cannot receive with it: {_SEND} "
                           "(e.g. convert it in 3D Slicer or with SimpleITK to .nrrd or .nii.gz)")
    raise RequestError(_SEND)


def _head(path: Path, inflate: bool) -> bytes:
    """The first MAX_HEADER_BYTES bytes of the file; with `inflate`, of its content when it is
    gzip-compressed (only as much as the header needs: a compression bomb costs nothing here, and
    a damaged stream is left to the reader's own checks)."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_HEADER_BYTES)
    if not (inflate and raw.startswith(b"\x1f\x8b")):
        return raw
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise RequestError(f"is not an image the server can read: its gzip data are damaged ({exc})") from None


def _check_nifti(head: bytes) -> None:
    for order in "<>":
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] in (348, 540):
            size = struct.unpack(order + "i", head[:4])[0]
            break
    else:
        raise RequestError(f"is not an image the server can read: not a NIfTI file; {_SEND}")
    magic = head[344:348] if size == 348 else head[4:8]
    if magic in (b"n+1\0", b"n+2\0"):
        return
    if magic in (b"ni1\0", b"ni2\0"):
        raise RequestError("is a NIfTI header whose voxels lie in a separate .img file (a .hdr/.img pair), which "
                           f"the server cannot receive with it: {_SEND}")
    raise RequestError("is an Analyze 7.5 header (no NIfTI magic) whose voxels lie in a separate .img file, which "
                       f"the server cannot receive with it: {_SEND}")


def _check_nrrd(head: bytes) -> None:
    if not head.startswith(b"NRRD000"):
        raise RequestError(f"is not an image the server can read: not a NRRD file (no NRRD000x magic); {_SEND}")
    lines = head.decode("latin-1").split("\n")
    for raw in lines[1:]:
        line = raw.rstrip("\r")
        if not line.strip():
            return  # the blank line that ends the header: the voxels follow it in this file
        if line.startswith("#"):
            continue
        key = line.split(":", 1)[0] if ":" in line else ""
        if "".join(key.split()).lower() == "datafile":
            raise RequestError(f"has a NRRD header line {line.strip()[:80]!r}: its voxels would be read from another "
                               "file (on the server's disk), which the server never does; send a self-contained "
                               ".nrrd (voxels after the header) or a .nii.gz")
    if len(head) >= MAX_HEADER_BYTES:
        raise RequestError(f"has a NRRD header longer than {MAX_HEADER_BYTES} bytes; {_SEND}")
    # a header without data: ITK refuses it when it reads (no voxels)


def _check_metaimage(head: bytes) -> None:
    text = head.decode("latin-1")
    for raw in text.split("\n"):
        line = raw.rstrip("\r")
        key, sep, value = line.partition("=")
        if not sep:
            if line.strip():
                break  # not a header line: no ElementDataFile before it
            continue
        if key.strip().lower() == "elementdatafile":
            if value.strip().upper() == "LOCAL":
                return
            raise RequestError(f"has a MetaImage header line {line.strip()[:80]!r}: its voxels would be read from "
                               "another file (on the server's disk), which the server never does; send a .mha with "
                               "ElementDataFile = LOCAL (voxels after the header) or a .nii.gz")
    if not text.lstrip().lower().startswith(("objecttype", "ndims", "comment", "transformtype", "objectsubtype")):
        raise RequestError(f"is not an image the server can read: not a MetaImage (.mha) file; {_SEND}")
    raise RequestError("is a MetaImage header without 'ElementDataFile = LOCAL' ending it within "
                       f"{MAX_HEADER_BYTES} bytes; send a .mha whose voxels follow its header, or a .nii.gz")


def check_self_contained(path: Path, suffix: str) -> None:
    """Refuse an uploaded image file (saved at `path`, accepted `suffix`) whose header would make
    a reader open another file, or whose content is not the format of its suffix. Reads only the
    first bytes of `path` itself. Raises RequestError ("<what> ..." messages: prefix the input)."""
    if suffix in (".nii", ".nii.gz"):
        _check_nifti(_head(path, inflate=True))
    elif suffix == ".nrrd":
        _check_nrrd(_head(path, inflate=False))
    elif suffix == ".mha":
        _check_metaimage(_head(path, inflate=False))
    else:
        raise RequestError(f"suffix {suffix!r} is not an image file the server accepts; {_SEND}")


def copy_bounded(src, dst, total: int, limit: int, what: str) -> int:
    """Copy the rest of `src` to `dst` in chunks, counting into `total` (returned), and stop with a
    ResourceLimitError naming `what` and the server's limit as soon as it passes `limit` bytes: a zip
    member's declared size is not trusted."""
    while chunk := src.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise ResourceLimitError(f"{what} unpacks to more than {limit / 2**20:.0f} MiB (serve --max-upload-mb)")
        dst.write(chunk)
    return total


def _is_link(member: zipfile.ZipInfo) -> bool:
    return (member.external_attr >> 16) & 0o170000 == 0o120000


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.startswith(_JUNK[0]) or (bool(parts) and (parts[-1] in _JUNK[1:] or parts[-1].startswith("._")))


def extract_dicom_zip(archive: Path, dest: Path, limit: int) -> int:
    """Unpack a DICOM series zip flat into `dest` under generated names (member names are never
    used as paths). Refuses links, non-DICOM members (each must be a DICOM Part-10 file: `DICM` at
    byte 128), too many members and more than `limit` bytes unpacked. Returns the files written."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not _is_junk(m.filename)]
            if len(members) > MAX_ZIP_MEMBERS:
                raise ResourceLimitError(f"the zip holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted")
            if not members:
                raise RequestError("the zip holds no files; send a zip of the DICOM files of one series")
            total = 0
            dest.mkdir()
            for i, m in enumerate(members):
                if _is_link(m):
                    raise RequestError(f"the zip holds a link ({m.filename!r}); send plain DICOM files")
                with zf.open(m) as src, open(dest / f"{i:05d}.dcm", "wb") as dst:
                    first = src.read(132)
                    if len(first) < 132 or first[128:132] != b"DICM":
                        raise RequestError(f"the zip member {m.filename!r} is not a DICOM file (no 'DICM' marker at "
                                           "byte 128); send a zip holding only the DICOM files of one series")
                    dst.write(first)
                    total = copy_bounded(src, dst, total + len(first), limit, "the zip")
            return len(members)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
        raise RequestError(f"the file is not a readable zip of a DICOM series ({exc})") from None
