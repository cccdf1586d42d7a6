"""Named case sets in the nnU-Net raw layout: the one place a corrected case is stored for training.

A case set is a folder any nnU-Net tool (and `unetrpp-train convert nnunet`, `unetrpp-train finetune --data`)
reads::

    SET/dataset.json                     nnU-Net v2 form: name, channel_names {"0": "ct"}, labels
                                         {"background": 0, "liver": 6, ...}, numTraining, file_ending ".nii.gz"
    SET/imagesTr/<case>_0000.nii.gz      one file per channel, in channel_names order
    SET/labelsTr/<case>.nii.gz           integer labels in the set's numbering, on the first channel's grid
    SET/provenance/<case>.json           where the case came from (files, SHA256, label mapping, model, time)

`add_case` stores one case: every channel and the label must lie on one grid (size, spacing, origin,
direction, within the converters' tolerances); label values must be named in `labels` (name -> value in
the given label file). Names are matched to the set's labels by name (case, spaces and underscores
ignored): a known name takes the set's value, a new name keeps its value when that is free in the set and
gets the next free value otherwise, so the stored label file is always in the set's numbering. Files
appear atomically (`unetrpp.atomic`); dataset.json is rewritten last. An existing case is replaced only
with `overwrite`.

Imports no torch (numpy, SimpleITK and the torch-free part of `unetrpp`): the Slicer module calls it in
its own Python. Command line: `unetrpp-train add-case` (docs/training.md).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from unetrpp.atomic import StagedOutputs, write_text
from unetrpp.errors import OutputExistsError, UnetrppError
from unetrpp.jsonio import read_json_file

SET_FILE = "dataset.json"
IMAGES_DIR = "imagesTr"
LABELS_DIR = "labelsTr"
PROVENANCE_DIR = "provenance"
FILE_ENDING = ".nii.gz"
CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHANNEL_NAME = re.compile(r"^[a-z0-9_]{1,64}$")

SPACING_TOL_MM = 1e-3
ORIGIN_TOL_MM = 1e-2
DIRECTION_TOL = 1e-4


class CaseSetError(UnetrppError):
    """A case cannot be added to a case set (grids differ, undeclared label values, other channels ...)."""


def norm_name(name: str) -> str:
    """The form label names are matched in: lower case, runs of spaces/underscores/dashes as one space."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().casefold())


def channel_name(text: str) -> str:
    """A channel name as model inputs spell them (lower-case letters, digits, underscores)."""
    name = re.sub(r"[^a-z0-9]+", "_", str(text).strip().lower()).strip("_")
    if not name:
        raise CaseSetError(f"channel name {text!r} has no letters or digits")
    return name[:64]


def grid_difference(a: sitk.Image, b: sitk.Image) -> str | None:
    """None when both images lie on the same grid (within tolerance), else what differs."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    for what, x, y, tol in (("spacing", a.GetSpacing(), b.GetSpacing(), SPACING_TOL_MM),
                            ("origin", a.GetOrigin(), b.GetOrigin(), ORIGIN_TOL_MM),
                            ("direction", a.GetDirection(), b.GetDirection(), DIRECTION_TOL)):
        if not np.allclose(x, y, rtol=0, atol=tol):
            return f"{what} {tuple(round(v, 4) for v in x)} vs {tuple(round(v, 4) for v in y)}"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(source: str | os.PathLike[str] | sitk.Image, role: str) -> tuple[sitk.Image, dict[str, Any]]:
    if isinstance(source, sitk.Image):
        img, record = source, {"source": "in memory"}
    else:
        path = Path(source)
        if not path.is_file():
            raise CaseSetError(f"{role} file {path} does not exist")
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            raise CaseSetError(f"{role} file {path} cannot be read ({lines[-1] if lines else 'unreadable'})") from None
        record = {"source": str(path.resolve()), "sha256": _sha256(path)}
    if img.GetDimension() != 3:
        raise CaseSetError(f"{role} is {img.GetDimension()}-D; a 3-D volume is expected")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CaseSetError(f"{role} has {img.GetNumberOfComponentsPerPixel()} components per voxel; one is expected")
    return img, record


def read_set(set_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The case set's dataset.json, or None when SET holds none yet."""
    file = Path(set_dir) / SET_FILE
    if not file.is_file():
        return None
    data = read_json_file(file, str(file), error=CaseSetError)  # the one bounded reader
    if not isinstance(data, dict) or not isinstance(data.get("channel_names"), dict) or not isinstance(data.get("labels"), dict):
        raise CaseSetError(f"{file} is not an nnU-Net dataset.json (needs channel_names and labels)")
    return data


def set_cases(set_dir: str | os.PathLike[str]) -> list[str]:
    """The case names stored in SET (one per label file)."""
    folder = Path(set_dir) / LABELS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(FILE_ENDING)] for p in folder.glob(f"*{FILE_ENDING}") if not p.name.startswith("."))


def _merge_labels(existing: Mapping[str, int], given: Mapping[str, int]) -> tuple[dict[str, int], dict[int, int]]:
    """(the set's labels after adding `given`, given value -> stored value)."""
    merged = dict(existing)
    by_norm = {norm_name(n): n for n in merged}
    used = set(merged.values())
    mapping: dict[int, int] = {0: 0}
    for name, value in sorted(given.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        known = by_norm.get(norm_name(name))
        if known is not None:
            mapping[value] = merged[known]
            continue
        target = value if value not in used else max(used | {0}) + 1
        merged[name] = target
        by_norm[norm_name(name)] = name
        used.add(target)
        mapping[value] = target
    return dict(sorted(merged.items(), key=lambda kv: kv[1])), mapping


def _parse_labels(labels: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    values: dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not name.strip():
            raise CaseSetError(f"label names must be non-empty text, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
            raise CaseSetError(f"label {name!r}: the value must be an integer 0..65535, got {value!r}")
        if value in values and value != 0:
            raise CaseSetError(f"labels {values[value]!r} and {name!r} both have value {value}")
        values[value] = name
        if value != 0:
            out[name.strip()] = value
    return out


def add_case(
    set_dir: str | os.PathLike[str],
    case: str,
    images: Mapping[str, str | os.PathLike[str] | sitk.Image],
    label: str | os.PathLike[str] | sitk.Image,
    labels: Mapping[str, int],
    *,
    name: str | None = None,
    source: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Store one case (images: channel name -> file or SimpleITK image, in channel order; label: a label
    map whose values `labels` names) in the case set SET; returns the case's provenance record with the
    paths written. See the module docstring for the rules."""
    set_dir = Path(set_dir)
    if not CASE_NAME.match(case or ""):
        raise CaseSetError(f"case name {case!r}: use letters, digits, '.', '_' or '-' (at most 100, not starting "
                           "with '.', '_' or '-')")
    if not images:
        raise CaseSetError("give at least one image channel")
    given = _parse_labels(labels)
    channels = {channel_name(k): v for k, v in images.items()}
    if len(channels) != len(images):
        raise CaseSetError(f"channel names {list(images)} collide once written as input names")
    existing = read_set(set_dir)
    if existing is not None:
        order = [channel_name(existing["channel_names"][k]) for k in sorted(existing["channel_names"], key=int)]
        if sorted(order) != sorted(channels):
            raise CaseSetError(f"{set_dir} holds channels {', '.join(order)}; this case has {', '.join(channels)}")
        set_labels = {str(k): int(v) for k, v in existing["labels"].items() if not isinstance(v, list) and int(v) != 0}
    else:
        order = list(channels)
        set_labels = {}
    if case in set_cases(set_dir) and not overwrite:
        raise OutputExistsError(f"case {case!r} is already in {set_dir}; choose another case name or allow overwriting")

    read = {ch: _read(channels[ch], f"image {ch!r}") for ch in order}
    first_name = order[0]
    first = read[first_name][0]
    for ch in order:
        img = read[ch][0]
        arr = sitk.GetArrayViewFromImage(img)
        finite = np.isfinite(arr)
        if arr.size == 0 or not finite.any() or float(arr[finite].min()) == float(arr[finite].max()):
            raise CaseSetError(f"image {ch!r} is empty, constant or all-NaN")
        diff = grid_difference(first, img)
        if diff:
            raise CaseSetError(f"image {ch!r} is not on the grid of image {first_name!r}: {diff}")
    label_img, label_record = _read(label, "label")
    diff = grid_difference(first, label_img)
    if diff:
        raise CaseSetError(f"the label is not on the grid of image {first_name!r}: {diff}")
    lab = sitk.GetArrayFromImage(label_img)
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.isfinite(lab).all() or not np.array_equal(lab, np.round(lab)):
            raise CaseSetError("the label holds non-integer values")
        lab = lab.astype(np.int64)
    present = [int(v) for v in np.unique(lab)]
    undeclared = sorted(set(present) - set(given.values()) - {0})
    if undeclared:
        raise CaseSetError(f"the label holds values {undeclared} that `labels` does not name "
                           f"(named: {', '.join(f'{n}={v}' for n, v in given.items()) or 'none'})")
    merged, mapping = _merge_labels(set_labels, given)
    lut = np.zeros(max(present) + 1, dtype=np.int64)
    for src, dst in mapping.items():
        if src < lut.size:
            lut[src] = dst
    stored = lut[lab].astype(np.uint8 if max(merged.values(), default=0) < 256 else np.uint16)
    out_label = sitk.GetImageFromArray(stored)
    out_label.CopyInformation(first)

    names = {v: n for n, v in merged.items()}
    record: dict[str, Any] = {
        "case": case,
        "added": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tool": "unetrpp_train.caseset.add_case",
        "images": {f"{ch} ({IMAGES_DIR}/{case}_{i:04d}{FILE_ENDING})": read[ch][1] for i, ch in enumerate(order)},
        "label": label_record,
        "labels_given": dict(given),
        "label_mapping": {str(k): v for k, v in mapping.items() if k != 0},
        "labels_present": sorted(names[mapping[v]] for v in present if v != 0),
        "geometry": {"size": list(first.GetSize()), "spacing": list(first.GetSpacing()),
                     "origin": list(first.GetOrigin()), "direction": list(first.GetDirection())},
    }
    if source:
        record["source"] = dict(source)
    paths = {ch: set_dir / IMAGES_DIR / f"{case}_{i:04d}{FILE_ENDING}" for i, ch in enumerate(order)}
    label_path = set_dir / LABELS_DIR / f"{case}{FILE_ENDING}"
    prov_path = set_dir / PROVENANCE_DIR / f"{case}.json"
    with StagedOutputs(overwrite=True) as staging:
        for ch, path in paths.items():
            sitk.WriteImage(read[ch][0], str(staging.path_for(path)), True)
        sitk.WriteImage(out_label, str(staging.path_for(label_path)), True)
        staging.path_for(prov_path).write_text(json.dumps(record, indent=2) + "\n")
    data = dict(existing or {})
    data.update({
        "name": data.get("name") or name or set_dir.name,
        "description": data.get("description") or "case set written by unetrpp-train add-case (nnU-Net raw layout)",
        "channel_names": {str(i): ch for i, ch in enumerate(order)},
        "labels": {"background": 0, **merged},
        "numTraining": len(set_cases(set_dir)),
        "file_ending": FILE_ENDING,
    })
    write_text(set_dir / SET_FILE, json.dumps(data, indent=2) + "\n")
    return {**record, "set": str(set_dir), "files": {"images": {ch: str(p) for ch, p in paths.items()},
                                                    "label": str(label_path), "provenance": str(prov_path)}}
