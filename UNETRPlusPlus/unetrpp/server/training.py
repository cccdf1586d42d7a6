"""Fine-tune jobs (`unetrpp serve --allow-training`, issue 20 item 3): the same fine-tune as
`unetrpp-train finetune --from MODEL --data FOLDER --name NEW`, run by a worker on the server's
device, with the same authentication, limits and job store as segmentation jobs.

The client sends a case set in the nnU-Net raw layout as one zip (`dataset.json`, `imagesTr/`,
`labelsTr/`; one common top folder is allowed). Like every upload it is self-contained or refused
(400) before anything reads it:

- members: plain files only (no links), names without `..`, absolute paths or backslashes, under
  `imagesTr/` or `labelsTr/` (images: the formats of `uploads`, each checked by
  `check_self_contained`) or the one `dataset.json`; archivers' extras (`__MACOSX/`, `.DS_Store`)
  are skipped, anything else is refused by name; at most MAX_CASE_FILES files and the upload limit
  unpacked;
- `dataset.json` through the one bounded JSON reader; every file it names (`training` entries of the
  Decathlon form, nnU-Net v2's `dataset` lists) must be one of the zip's own files, and `file_ending`
  one of the accepted suffixes: a dataset.json cannot point the converter at a server file.

Options (`options`, JSON): `iterations` (1 .. serve --max-train-iterations), `val` (case ids held
out), `unannotated` ("keep" or "background"). The result is the new model package as a zip (GET
/v1/jobs/{id}/result), its report the fine-tune's summary with the metrics before and after; the
package is not installed on the server (its operator decides what it serves).
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import RequestError, ResourceLimitError, UnetrppError
from ..jsonio import load_json
from .uploads import INPUT_SUFFIXES, check_self_contained, copy_bounded, suffix_of

#: A case set zip may hold at most this many files.
MAX_CASE_FILES = 2000
#: Default of `serve --max-train-iterations`.
DEFAULT_MAX_ITERATIONS = 2000
#: The fine-tune options a client may send.
FINETUNE_OPTIONS = ("iterations", "val", "unannotated")
#: New model names: those of installed models (`unetrpp.catalogue`).
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
_CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_FOLDERS = ("imagesTr", "labelsTr")
_JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")


def check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RequestError(f"name {name!r}: the new model's name must be lower-case letters, digits, '.', '_' or '-' "
                           "(at most 64, starting with a letter or digit)")
    return name


def finetune_options(data: Any, max_iterations: int) -> dict[str, Any]:
    """The checked options of a fine-tune job (RequestError naming what is wrong)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RequestError("options must be a JSON object such as {\"iterations\": 500}")
    unknown = sorted(str(k) for k in data if k not in FINETUNE_OPTIONS)
    if unknown:
        raise RequestError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(FINETUNE_OPTIONS)}")
    iterations = data.get("iterations", min(500, max_iterations))
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= max_iterations:
        raise RequestError(f"option iterations must be a whole number from 1 to {max_iterations} (this server's "
                           "limit, serve --max-train-iterations)")
    val = data.get("val") or []
    if not isinstance(val, list) or not all(isinstance(v, str) and _CASE_RE.match(v) for v in val):
        raise RequestError("option val must be a list of case ids (letters, digits, '.', '_', '-')")
    unannotated = data.get("unannotated", "keep")
    if unannotated not in ("keep", "background"):
        raise RequestError("option unannotated must be \"keep\" or \"background\"")
    return {"iterations": iterations, "val": list(val), "unannotated": unannotated}


def _member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, None for archivers' extras; refuses names that could escape."""
    if "\\" in name or "\0" in name:
        raise RequestError(f"the zip member {name!r} has a backslash or NUL in its name; use '/' between folders")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or any(p in ("", ".") for p in path.parts[:-1]):
        raise RequestError(f"the zip member {name!r} lies outside the case set (absolute or '..'); zip the case set "
                           "folder itself")
    if any(p in _JUNK or p.startswith("._") for p in path.parts):
        return None
    return path


def _layout(paths: list[PurePosixPath]) -> tuple[PurePosixPath, dict[PurePosixPath, PurePosixPath]]:
    """(common top folder or '.', member -> path inside the case set); refuses any other file."""
    tops = {p.parts[0] for p in paths}
    root = PurePosixPath(".")
    if len(tops) == 1 and not any(p.name == "dataset.json" and len(p.parts) == 1 for p in paths):
        root = PurePosixPath(next(iter(tops)))
    inside: dict[PurePosixPath, PurePosixPath] = {}
    for p in paths:
        rel = PurePosixPath(*p.parts[len(root.parts):]) if root != PurePosixPath(".") else p
        if rel == PurePosixPath("dataset.json"):
            inside[p] = rel
        elif len(rel.parts) == 2 and rel.parts[0] in _FOLDERS:
            inside[p] = rel
        else:
            raise RequestError(f"the zip member {str(p)!r} is not part of an nnU-Net raw case set: expected only "
                               "dataset.json, imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz")
    if PurePosixPath("dataset.json") not in inside.values():
        raise RequestError("the zip holds no dataset.json; send the case set folder (dataset.json, imagesTr/, "
                           "labelsTr/) as a zip")
    return root, inside


def _named_files(meta: Any) -> list[str]:
    """Every file a dataset.json names (Decathlon `training`/`test`, nnU-Net v2 `dataset`)."""
    names: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            for v in value:
                add(v)
        elif value is not None:
            raise RequestError(f"dataset.json names a file as {value!r}; file names must be text")

    for key in ("training", "test"):
        for item in meta.get(key) or []:
            if isinstance(item, Mapping):
                add(item.get("image"))
                add(item.get("label"))
            else:
                add(item)
    listed = meta.get("dataset")
    if isinstance(listed, Mapping):
        for entry in listed.values():
            if isinstance(entry, Mapping):
                add(entry.get("images"))
                add(entry.get("label"))
    return names


def check_dataset_json(data: bytes, files: set[PurePosixPath]) -> None:
    """dataset.json read by the bounded reader; every file it names is one of `files` (paths
    inside the case set); `file_ending` one the server accepts."""
    meta = load_json(data, "dataset.json", error=RequestError)
    if not isinstance(meta, Mapping):
        raise RequestError("dataset.json must be a JSON object (nnU-Net raw layout)")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in INPUT_SUFFIXES or ending == ".zip":
        raise RequestError(f"dataset.json file_ending {ending!r}: the server accepts "
                           f"{', '.join(s for s in INPUT_SUFFIXES if s != '.zip')}")
    for name in _named_files(meta):
        path = PurePosixPath(name[2:] if name.startswith("./") else name)
        if path.is_absolute() or ".." in path.parts or "\\" in name or path not in files:
            raise RequestError(f"dataset.json names the file {name!r}, which is not one of the zip's files; a case "
                               "set names only its own imagesTr/ and labelsTr/ files")


def extract_case_set(archive: Path, dest: Path, limit: int) -> Path:
    """Unpack a case set zip into `dest` (the paths checked above, nothing else written), each
    image checked to be self-contained before anything reads it. Returns `dest`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = []
            for m in zf.infolist():
                if m.is_dir():
                    continue
                path = _member_path(m.filename)
                if path is None:
                    continue
                if (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise RequestError(f"the zip holds a link ({m.filename!r}); send plain files")
                members.append((m, path))
            if not members:
                raise RequestError("the zip holds no files; send the case set folder (dataset.json, imagesTr/, "
                                   "labelsTr/) as a zip")
            if len(members) > MAX_CASE_FILES:
                raise ResourceLimitError(f"the zip holds {len(members)} files; at most {MAX_CASE_FILES} are accepted")
            _, inside = _layout([p for _, p in members])
            if len(set(inside.values())) != len(inside):
                raise RequestError("the zip holds a file twice under the same name")
            total = 0
            dataset_json = b""
            for m, path in members:
                rel = inside[path]
                if rel.name != "dataset.json":
                    try:
                        suffix = suffix_of(rel.name)
                    except UnetrppError as exc:
                        raise RequestError(f"the zip member {m.filename!r}: {exc}") from None
                    if suffix == ".zip":
                        raise RequestError(f"the zip member {m.filename!r}: a zip inside the zip; send image files")
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as dst:
                    total = copy_bounded(src, dst, total, limit, "the case set")
                if rel.name == "dataset.json":
                    dataset_json = target.read_bytes()
                else:
                    try:
                        check_self_contained(target, suffix)
                    except UnetrppError as exc:
                        raise RequestError(f"the zip member {m.filename!r} {exc}") from None
            check_dataset_json(dataset_json, set(inside.values()))
            return dest
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, zlib.error) as exc:
        raise RequestError(f"the file is not a readable zip of a case set ({exc})") from None
