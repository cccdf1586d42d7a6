"""The one on-disk layout of a converted dataset, and the writer every converter uses.

Layout
------
::

    DST/
      dataset.json                      written LAST, by atomic rename: its presence marks a complete dataset
      cases/<id>/image_<channel>.nii.gz one file per input channel (channel names: dataset.json "channels")
      cases/<id>/label.nii.gz           integer labels in the dataset's convention (dataset.json "labels")
      cases/<id>/case.json              the case's record (geometry, source files), also copied into dataset.json
      .conversion.json                  present only while a conversion runs (or after it was interrupted)
      plan.json                         written later by `unetrpp-train plan`

Images are copied with SimpleITK (read + write): voxel data, pixel type, spacing, origin and direction are
kept exactly, nothing is resampled. A label file gets the geometry of the case's first channel (after a
check that both describe the same grid within a tolerance) and, where the source uses another numbering,
its values are mapped (the mapping is recorded in dataset.json).

dataset.json
------------
``name``, ``dataset`` (synapse | btcv | acdc | brats | lung), ``variant`` (the network variant),
``channels`` ([{"name", "modality"}] in network input order; also ``modality`` {"0": "CT"} Decathlon-style),
``labels`` ({"0": "background", "1": "spleen", ...}), ``regions`` (BraTS: [{"name", "labels"}]),
``evaluation`` ({"classes": [{"name", "labels"}], "description"}: what `unetrpp-train evaluate` scores),
``label_mapping`` (source value -> stored value, when the source numbering differs), ``splits``
({"train": [...], "val": [...], "test": [...]}) with ``split_rule``, ``numTraining``, ``source``
({"path", "layout"}), ``conversion`` ({"version", "tool", "finished"}), ``geometry`` (summary over all cases)
and ``cases`` ({id: {"images": {channel: relative path}, "label": relative path, "size" (x, y, z),
"spacing" (x, y, z) mm, "origin", "direction", "labels_present", "source": {...}, ...}}).

Interrupted conversions
-----------------------
Each case is written into a private temporary folder in ``cases/`` (``unetrpp.atomic``) and renamed to ``cases/<id>/`` once all its files are
written, so a ``cases/<id>/`` folder is always complete. Re-running the same conversion (same dataset kind,
same source folder, same conversion version) resumes: partial folders are removed, complete cases are kept.
A different conversion into the same folder, or a folder that is not a dataset, is refused unless
``overwrite`` (which removes only the files of this layout). Readers (`load_dataset`) refuse a folder
without dataset.json and say whether it holds an interrupted conversion.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from unetrpp.atomic import TEMP_PREFIX, replace_path, staging_dir, write_text
from unetrpp.errors import UnetrppError
from unetrpp.jsonio import read_json_file

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
DATASET_FILE = "dataset.json"
MARKER_FILE = ".conversion.json"
CASES_DIR = "cases"
CASE_FILE = "case.json"
PLAN_FILE = "plan.json"
#: entries of DST that `overwrite` may remove (everything this layout and its later steps write)
OWNED_ENTRIES = (DATASET_FILE, MARKER_FILE, CASES_DIR, PLAN_FILE, "preprocessed")

SPACING_TOL_MM = 1e-3
ORIGIN_TOL_MM = 1e-2
DIRECTION_TOL = 1e-4


class ConversionError(UnetrppError, ValueError):
    """The source data is missing a file or holds data that cannot be converted; the message names it."""


class DatasetLayoutError(UnetrppError, ValueError):
    """A dataset folder is not a complete converted dataset (or not one at all)."""


@dataclass
class ImageRef:
    """One input channel of a source case: a file, and the component for 4-D files (Decathlon BraTS)."""

    path: Path
    component: int | None = None

    def describe(self) -> str:
        return str(self.path) if self.component is None else f"{self.path} (volume {self.component})"


@dataclass
class CaseSource:
    case_id: str
    images: dict[str, ImageRef]
    """channel name -> source image, in network input order"""
    label: Path
    label_map: dict[int, int] | None = None
    """source value -> stored value; None keeps values (they must be declared labels)"""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """What a converter declares about its dataset (everything in dataset.json except the cases)."""

    dataset: str
    variant: str
    name: str
    description: str
    channels: list[dict[str, str]]
    labels: dict[int, str]
    evaluation: dict[str, Any]
    source_path: Path
    source_layout: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    label_mapping: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Reading ------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    return read_json_file(path, f"{path} (convert the dataset again if it was damaged)", error=DatasetLayoutError)


def load_dataset(dst: str | os.PathLike[str]) -> dict[str, Any]:
    """dataset.json of a complete converted dataset (with ``root`` added); a clear error otherwise."""
    root = Path(dst)
    file = root / DATASET_FILE
    if not file.is_file():
        if (root / MARKER_FILE).is_file() or (root / CASES_DIR).is_dir():
            marker = _read_json(root / MARKER_FILE) if (root / MARKER_FILE).is_file() else {}
            again = f"`unetrpp-train convert {marker.get('dataset', 'DATASET')} {marker.get('source', 'SRC')} -o {root}`"
            raise DatasetLayoutError(
                f"{root} holds an interrupted conversion (no {DATASET_FILE}); run {again} again to finish it"
            )
        raise DatasetLayoutError(f"{root} is not a converted dataset ({file} is missing); run `unetrpp-train convert` first")
    data = _read_json(file)
    for key in ("channels", "labels", "splits", "cases"):
        if key not in data:
            raise DatasetLayoutError(f"{file} has no '{key}'; convert the dataset again")
    data["root"] = str(root)
    return data


def case_paths(data: Mapping[str, Any], case_id: str) -> tuple[dict[str, Path], Path]:
    """(channel -> image path, label path) of one case of a loaded dataset.json."""
    root = Path(data["root"])
    if case_id not in data["cases"]:
        raise DatasetLayoutError(f"case {case_id!r} is not in {root / DATASET_FILE}")
    rec = data["cases"][case_id]
    images = {ch["name"]: root / rec["images"][ch["name"]] for ch in data["channels"]}
    return images, root / rec["label"]


def split_cases(data: Mapping[str, Any], split: str) -> list[str]:
    splits = data["splits"]
    if split not in splits:
        raise DatasetLayoutError(
            f"{Path(data['root']) / DATASET_FILE} has no split {split!r} (it has: {', '.join(splits) or 'none'})"
        )
    return list(splits[split])


# Geometry -----------------------------------------------------------------------------------
def geometry(img: sitk.Image) -> dict[str, list[float] | list[int]]:
    return {
        "size": [int(v) for v in img.GetSize()],
        "spacing": [float(v) for v in img.GetSpacing()],
        "origin": [float(v) for v in img.GetOrigin()],
        "direction": [float(v) for v in img.GetDirection()],
    }


def geometry_difference(a: sitk.Image, b: sitk.Image) -> str | None:
    """None when both images lie on the same grid (within tolerance), else what differs."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=SPACING_TOL_MM):
        return f"spacing {_fmt(a.GetSpacing())} vs {_fmt(b.GetSpacing())} mm"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=ORIGIN_TOL_MM):
        return f"origin {_fmt(a.GetOrigin())} vs {_fmt(b.GetOrigin())} mm"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=DIRECTION_TOL):
        return f"direction {_fmt(a.GetDirection())} vs {_fmt(b.GetDirection())}"
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# Writing ------------------------------------------------------------------------------------
def _atomic_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def _read_image(ref: ImageRef, case_id: str, role: str) -> sitk.Image:
    if not ref.path.is_file():
        raise ConversionError(f"case {case_id}: {role} file {ref.path} is missing")
    try:
        img = sitk.ReadImage(str(ref.path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ConversionError(f"case {case_id}: {role} file {ref.path} cannot be read ({first})") from exc
    dim = img.GetDimension()
    if ref.component is not None:
        if dim != 4:
            raise ConversionError(f"case {case_id}: {ref.path} should be a 4-D file with one volume per channel, it is {dim}-D")
        if ref.component >= img.GetSize()[3]:
            raise ConversionError(
                f"case {case_id}: {ref.path} has {img.GetSize()[3]} volumes, channel {role} needs volume {ref.component}"
            )
        img = img[:, :, :, ref.component]
    elif dim != 3:
        raise ConversionError(f"case {case_id}: {role} file {ref.path} is {dim}-D, a 3-D volume is expected")
    return img


def _check_intensities(img: sitk.Image, case_id: str, ref: ImageRef) -> None:
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"case {case_id}: {ref.describe()} has {img.GetNumberOfComponentsPerPixel()} components per voxel, one is expected")
    arr = sitk.GetArrayViewFromImage(img)
    if arr.size == 0:
        raise ConversionError(f"case {case_id}: {ref.describe()} is empty (no voxels)")
    finite = np.isfinite(arr)
    if not finite.any():
        raise ConversionError(f"case {case_id}: {ref.describe()} holds only NaN/infinite values")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if lo == hi:
        raise ConversionError(f"case {case_id}: {ref.describe()} is empty (every voxel is {lo:g})")
    bad = int(arr.size - finite.sum())
    if bad:
        log.warning("case %s: %s has %d NaN/infinite voxels", case_id, ref.describe(), bad)


def _convert_label(img: sitk.Image, source: CaseSource, declared: Sequence[int]) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"case {source.case_id}: label file {source.label} has several components per voxel")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ConversionError(f"case {source.case_id}: label file {source.label} holds non-integer values")
        arr = arr.astype(np.int64)
    values = [int(v) for v in np.unique(arr)]
    allowed = set(source.label_map) if source.label_map is not None else set(declared) | {0}
    undeclared = sorted(set(values) - allowed)
    if undeclared:
        raise ConversionError(
            f"case {source.case_id}: label file {source.label} holds values {undeclared} that are not declared "
            f"(declared: {', '.join(map(str, sorted(allowed)))})"
        )
    if source.label_map is not None:
        lut_size = max(values) + 1
        lut = np.zeros(lut_size, dtype=np.int64)
        for k, v in source.label_map.items():
            if 0 <= k < lut_size:
                lut[k] = v
        if min(values) < 0:
            raise ConversionError(f"case {source.case_id}: label file {source.label} holds negative values")
        arr = lut[arr]
    return arr.astype(np.uint8 if max(declared, default=0) < 256 else np.uint16)


class DatasetWriter:
    """Writes one converted dataset: `begin()`, `write_case()` per case, `finish()`."""

    def __init__(self, dst: str | os.PathLike[str], spec: DatasetSpec, overwrite: bool = False) -> None:
        self.dst = Path(dst)
        self.spec = spec
        self.overwrite = overwrite
        self.records: dict[str, dict[str, Any]] = {}

    # -- state of DST --------------------------------------------------------------------------
    def _marker(self) -> dict[str, Any]:
        return {"dataset": self.spec.dataset, "source": str(self.spec.source_path), "version": CONVERSION_VERSION}

    def _clean(self) -> None:
        for name in OWNED_ENTRIES:
            path = self.dst / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def begin(self) -> bool:
        """Prepare DST. Returns False when DST already holds this very conversion, complete."""
        dst = self.dst
        if dst.exists() and not dst.is_dir():
            raise ConversionError(f"output {dst} exists and is not a folder")
        dst.mkdir(parents=True, exist_ok=True)
        marker = self._marker()
        if (dst / DATASET_FILE).is_file():
            old = _read_json(dst / DATASET_FILE)
            same = (old.get("dataset") == marker["dataset"] and old.get("source", {}).get("path") == marker["source"]
                    and old.get("conversion", {}).get("version") == CONVERSION_VERSION)
            if same and not self.overwrite:
                log.info("%s already holds this conversion (complete); nothing to do", dst)
                return False
            if not self.overwrite:
                raise ConversionError(
                    f"{dst} already holds a converted dataset ({old.get('dataset')} from {old.get('source', {}).get('path')}); "
                    "choose another output folder or pass --overwrite to replace it"
                )
            log.info("replacing the dataset in %s", dst)
            self._clean()
        elif (dst / MARKER_FILE).is_file():
            old = _read_json(dst / MARKER_FILE)
            if {k: old.get(k) for k in marker} == marker and not self.overwrite:
                done = sorted(p.name for p in (dst / CASES_DIR).glob("*") if p.is_dir() and not p.name.startswith("."))
                log.warning("%s holds an interrupted conversion: resuming (%d case(s) already complete)", dst, len(done))
            elif self.overwrite:
                log.info("removing the interrupted conversion in %s", dst)
                self._clean()
            else:
                raise ConversionError(
                    f"{dst} holds an interrupted conversion of {old.get('dataset')} from {old.get('source')}; "
                    "re-run that conversion to resume it, or pass --overwrite to start over"
                )
        else:
            unknown = sorted(p.name for p in dst.iterdir())
            foreign = [n for n in unknown if n not in OWNED_ENTRIES]
            if foreign:
                raise ConversionError(
                    f"output folder {dst} is not empty and is not a converted dataset (holds {', '.join(foreign[:5])}); "
                    "choose an empty or new folder"
                )
            if unknown and not self.overwrite:
                raise ConversionError(
                    f"{dst} holds {', '.join(unknown)} without {DATASET_FILE} or a conversion record; "
                    "pass --overwrite to start over"
                )
            self._clean()
        cases = dst / CASES_DIR
        cases.mkdir(exist_ok=True)
        for partial in [*cases.glob(".*.partial"), *cases.glob(TEMP_PREFIX + "*")]:  # what a kill left behind
            shutil.rmtree(partial)
        _atomic_json(dst / MARKER_FILE, dict(marker, started=time.strftime("%Y-%m-%dT%H:%M:%S")))
        return True

    # -- cases -----------------------------------------------------------------------------------
    def existing(self, case_id: str) -> dict[str, Any] | None:
        file = self.dst / CASES_DIR / case_id / CASE_FILE
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError:
            shutil.rmtree(file.parent)
            return None

    def write_case(self, source: CaseSource) -> dict[str, Any]:
        """Validate and copy one case; a case already complete (resumed conversion) is kept."""
        done = self.existing(source.case_id)
        if done is not None:
            log.debug("case %s: already converted", source.case_id)
            self.records[source.case_id] = done
            return done
        cid = source.case_id
        images = {name: _read_image(ref, cid, name) for name, ref in source.images.items()}
        first_name, first = next(iter(images.items()))
        for name, img in images.items():
            _check_intensities(img, cid, source.images[name])
            diff = geometry_difference(first, img)
            if diff:
                raise ConversionError(
                    f"case {cid}: channel {name} ({source.images[name].describe()}) is not on the grid of channel "
                    f"{first_name} ({source.images[first_name].describe()}): {diff}"
                )
        label_img = _read_image(ImageRef(source.label), cid, "label")
        diff = geometry_difference(first, label_img)
        if diff:
            raise ConversionError(
                f"case {cid}: label file {source.label} does not match image {source.images[first_name].describe()}: {diff}"
            )
        label = _convert_label(label_img, source, list(self.spec.labels))
        out_label = sitk.GetImageFromArray(label)
        out_label.CopyInformation(first)

        final = self.dst / CASES_DIR / cid
        record: dict[str, Any] = {
            "images": {name: f"{CASES_DIR}/{cid}/image_{name}.nii.gz" for name in images},
            "label": f"{CASES_DIR}/{cid}/label.nii.gz",
            **geometry(first),
            "pixel_type": first.GetPixelIDTypeAsString(),
            "labels_present": [int(v) for v in np.unique(label) if v != 0],
            "source": {"images": {n: r.describe() for n, r in source.images.items()}, "label": str(source.label)},
        }
        record.update(source.meta)
        with staging_dir(final.parent) as staging:  # the case folder appears complete or not at all
            tmp = staging / cid
            tmp.mkdir()
            for name, img in images.items():
                sitk.WriteImage(img, str(tmp / f"image_{name}.nii.gz"), True)
            sitk.WriteImage(out_label, str(tmp / "label.nii.gz"), True)
            (tmp / CASE_FILE).write_text(json.dumps(record, indent=2) + "\n")
            replace_path(tmp, final, overwrite=True)
        self.records[cid] = record
        log.info("case %s converted (%s, spacing %s mm)", cid, "x".join(map(str, record["size"])), _fmt(record["spacing"]))
        return record

    # -- completion ------------------------------------------------------------------------------
    def finish(self, splits: Mapping[str, Sequence[str]], split_rule: str) -> Path:
        spec = self.spec
        known = set(self.records)
        for split, ids in splits.items():
            unknown = sorted(set(ids) - known)
            if unknown:
                raise ConversionError(f"split {split!r} names cases that were not converted: {', '.join(unknown[:5])}")
        for folder in (self.dst / CASES_DIR).iterdir():
            if folder.is_dir() and folder.name not in known:
                log.warning("removing %s: not part of this conversion", folder)
                shutil.rmtree(folder)
        spacings = np.array([r["spacing"] for r in self.records.values()], dtype=float)
        sizes = np.array([r["size"] for r in self.records.values()], dtype=int)
        data: dict[str, Any] = {
            "name": spec.name,
            "dataset": spec.dataset,
            "variant": spec.variant,
            "description": spec.description,
            "channels": spec.channels,
            "modality": {str(i): c["modality"] for i, c in enumerate(spec.channels)},
            "labels": {"0": "background", **{str(k): v for k, v in sorted(spec.labels.items())}},
        }
        if spec.regions:
            data["regions"] = spec.regions
        data["evaluation"] = spec.evaluation
        if spec.label_mapping:
            data["label_mapping"] = spec.label_mapping
        data.update({
            "splits": {k: list(v) for k, v in splits.items()},
            "split_rule": split_rule,
            "numTraining": len(self.records),
            "source": {"path": str(spec.source_path), "layout": spec.source_layout},
            "conversion": {"version": CONVERSION_VERSION, "tool": "unetrpp-train convert",
                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
            "geometry": {
                "axes": "x, y, z (ITK/LPS order)",
                "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
                "min_spacing": [float(v) for v in spacings.min(0)],
                "max_spacing": [float(v) for v in spacings.max(0)],
                "min_size": [int(v) for v in sizes.min(0)],
                "max_size": [int(v) for v in sizes.max(0)],
            },
            **spec.extra,
            "cases": {cid: self.records[cid] for cid in sorted(self.records)},
        })
        _atomic_json(self.dst / DATASET_FILE, data)
        (self.dst / MARKER_FILE).unlink(missing_ok=True)
        log.info("dataset complete: %s (%d cases; %s)", self.dst / DATASET_FILE, len(self.records),
                 ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
        return self.dst / DATASET_FILE
