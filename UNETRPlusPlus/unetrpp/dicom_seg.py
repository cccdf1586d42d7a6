"""DICOM Segmentation (SEG) output for DICOM inputs, written with highdicom (extra `[dicom]`).

`write_dicom_seg(labelmap, manifest, path, source)` writes a binary SEG that references the source
series (frame of reference, study, every source instance) with one segment per manifest label:
its name, colour, and SNOMED-CT category/type/modifier from the manifest's terminology. Each frame
is matched to its source slice (or, for an Enhanced multi-frame source, its source frame) by
physical position, never by file order, and the labelmap must lie on the source grid (as the
engine's labelmaps do). `read_dicom_seg` gives the labelmap back on the source slices, for checks.

Sources without Study/Series Instance UIDs (anonymisers often blank them, as in the shared example
series): the SEG's General Study module (StudyInstanceUID, Type 1) and its Common Instance Reference
module (ReferencedSeriesSequence > SeriesInstanceUID, Type 1) cannot be left empty without making
the object invalid, and no UID can match the source when it has none. What a reader uses to put a
SEG on its images is the frame of reference (FrameOfReferenceUID, the same for SEG and source) and
the referenced SOP Instance UIDs of the source slices (per frame, DerivationImageSequence); those
are kept exactly. So the SEG gets a study and a referenced series UID *generated* for the source,
deterministically from its frame of reference and SOP Instance UIDs (the same source always gets
the same UIDs: repeated SEGs of one source land in one study), and a warning says so. A source that
lacks what a reference needs - a FrameOfReferenceUID or the SOP Instance UIDs (also not in the file
meta information) - is refused before any work: such a SEG could not be put on its images by any
reader. The README's "DICOM SEG" section says the same for users.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EnvironmentProblem, InputImageError
from .image import Image
from .manifest import Manifest

log = logging.getLogger(__name__)

#: Used for labels whose manifest gives no terminology.
_DEFAULT_CATEGORY = {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"}
_DEFAULT_TYPE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}
#: How far (in voxels) a slice position may lie from the labelmap grid.
_GRID_TOLERANCE = 0.05


def _highdicom():
    try:
        import highdicom
        import pydicom
    except ModuleNotFoundError as exc:
        raise EnvironmentProblem(f"DICOM SEG output needs {exc.name}: pip install 'unetrpp[dicom]'") from None
    return highdicom, pydicom


def _valid_uid(value: Any) -> bool:
    """A UID a reference can use: digits and dots, at most 64 characters. (Components with leading
    zeros, which some old scanners wrote, are kept: matching the source matters more than form.)"""
    text = str(value or "")
    return 0 < len(text) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", text) is not None


def _read_sources(path: Path) -> list[Any]:
    """The DICOM image data sets (headers only) of a folder's files, or of one file, with their
    SOP Class/Instance UIDs taken from the file meta information where the data set lacks them
    (some exporters leave them empty there; highdicom needs them in the data set: the copy in
    memory is completed, never the file)."""
    _, pydicom = _highdicom()
    files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail): not part of the series
            continue
        for tag, meta in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(tag) and getattr(ds, "file_meta", None) is not None and ds.file_meta.get(meta):
                setattr(ds, tag, ds.file_meta.get(meta))
        if "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds:
            ds.filename = str(f)
            out.append(ds)
    return out


def _series_key(ds: Any) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


def _check_references(datasets: list[Any], where: Path) -> None:
    """What a SEG needs to reference its source: a frame of reference and SOP Instance/Class UIDs."""
    for ds in datasets:
        missing = [k for k in ("FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID") if not _valid_uid(ds.get(k))]
        if missing:
            raise InputImageError(
                f"DICOM SEG output: the source {ds.filename} has no valid {' / '.join(missing)} "
                f"({', '.join(repr(str(ds.get(k, ''))) for k in missing)}), so a DICOM SEG could not reference "
                f"the images it segments (in {where}). Write .seg.nrrd or .nii.gz instead, or re-export the series "
                "with its UIDs (an anonymiser that replaces UIDs instead of blanking them keeps them valid)"
            )


def check_dicom_source(source: str | os.PathLike[str], series_uid: str | None = None) -> Path:
    """Refuse DICOM SEG output, before any work, for an input it cannot reference: not a DICOM
    series folder or Enhanced DICOM file, or without a frame of reference / SOP Instance UIDs."""
    path = Path(source)
    if not path.is_dir():
        from .imaging.dicom import is_dicom_file

        if not (path.is_file() and is_dicom_file(path)):
            raise InputImageError(f"DICOM SEG output (.dcm) needs a DICOM series folder as input; {path} is a file. "
                                  "Write .seg.nrrd or .nii.gz instead")
    datasets = _read_sources(path)
    if series_uid is not None:
        datasets = [ds for ds in datasets if _series_key(ds) == series_uid]
    if not datasets:
        raise InputImageError(f"DICOM SEG output (.dcm) needs a DICOM series as input; {path} holds no DICOM images")
    _check_references(datasets, path)
    return path


def check_output_for_inputs(output: str | os.PathLike[str], inputs: Any, series_uid: str | None = None) -> None:
    """For a `.dcm` output: the (first) input must be a DICOM series it can reference. Checked before work."""
    if str(output).lower().endswith(".dcm"):
        first = next(iter(inputs.values()), "") if isinstance(inputs, dict) else inputs
        check_dicom_source(first, series_uid)


def _complete_uids(datasets: list[Any]) -> None:
    """Give a source without Study/Series Instance UIDs (blanked by an anonymiser) UIDs derived
    from its frame of reference and SOP Instance UIDs, in memory (see the module docstring)."""
    from pydicom.uid import generate_uid

    instances = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    frame_of_reference = str(datasets[0].FrameOfReferenceUID)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if all(_valid_uid(ds.get(keyword)) for ds in datasets):
            continue
        uid = generate_uid(entropy_srcs=["unetrpp DICOM SEG source", keyword, frame_of_reference, *instances])
        log.warning("the DICOM SEG source has no valid %s (anonymised?); the SEG references it as %s, generated "
                    "from its frame of reference and SOP Instance UIDs", keyword, uid)
        for ds in datasets:
            setattr(ds, keyword, uid)


@dataclass
class _Source:
    """The source images of a SEG and, for each of their frames in storage order, its z index in
    the labelmap: single-frame images (one frame each) or one multi-frame image."""

    datasets: list[Any]
    z: np.ndarray

    @property
    def multiframe(self) -> bool:
        return len(self.datasets) == 1 and "PerFrameFunctionalGroupsSequence" in self.datasets[0]


def _frame_positions(ds: Any) -> np.ndarray | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        return None
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    out = []
    for item in per_frame:
        group = item if "PlanePositionSequence" in item else shared
        if group is None or "PlanePositionSequence" not in group:
            return None
        out.append([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
    return np.asarray(out)


def _on_grid(labelmap: Image, positions: np.ndarray) -> np.ndarray | None:
    """The z index of each position if every slice of `labelmap` is met exactly once, else None."""
    nz = labelmap.array.shape[0]
    index = labelmap.physical_to_index(positions)
    z = np.rint(index[:, 2]).astype(int)
    on_grid = (np.abs(index[:, :2]).max(initial=0) < _GRID_TOLERANCE
               and np.abs(index[:, 2] - z).max(initial=0) < _GRID_TOLERANCE)
    return z if len(z) == nz and on_grid and sorted(z.tolist()) == list(range(nz)) else None


def _source(path: Path, labelmap: Image) -> _Source:
    """The series in `path` (a folder or an Enhanced file) whose frames lie on `labelmap`'s grid."""
    datasets = _read_sources(path)
    by_series: dict[str, list[Any]] = {}
    for ds in datasets:
        if "PerFrameFunctionalGroupsSequence" in ds:
            positions = _frame_positions(ds)
            z = _on_grid(labelmap, positions) if positions is not None else None
            if z is not None:
                return _Source([ds], z)
        elif "ImagePositionPatient" in ds:
            by_series.setdefault(_series_key(ds), []).append(ds)
    for datasets in by_series.values():
        z = _on_grid(labelmap, np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]))
        if z is not None:
            order = np.argsort(z)
            return _Source([datasets[i] for i in order], z[order])
    raise InputImageError(f"no DICOM series in {path} lies on the segmentation's grid ({labelmap.array.shape[0]} "
                          "slices); DICOM SEG needs the series the segmentation was computed from")


def _source_datasets(folder: Path, labelmap: Image) -> list[Any]:
    """The slices of the series in `folder` that lie on `labelmap`'s grid, in labelmap z order."""
    return _source(Path(folder), labelmap).datasets


def _code(entry: dict[str, str] | None, default: dict[str, str]) -> Any:
    hd, _ = _highdicom()
    e = entry or default
    return hd.sr.CodedConcept(value=e["code"], scheme_designator=e["scheme"], meaning=e["meaning"])


def _segment_descriptions(manifest: Manifest, labels: list[Any]) -> list[Any]:
    hd, _ = _highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"UNETR++ {manifest.name}"[:64], version=str(manifest.version)[:64],
        family=codes.cid7162.ArtificialIntelligence)
    out = []
    for number, label in enumerate(labels, start=1):
        term = label.terminology or {}
        desc = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label.name[:64],
            segmented_property_category=_code(term.get("category"), _DEFAULT_CATEGORY),
            segmented_property_type=_code(term.get("type"), _DEFAULT_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label.color) if hasattr(hd.color.CIELabColor, "from_rgb") else None,
        )
        if term.get("modifier"):  # laterality (right/left kidney) lives in the type's modifier
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _code(term["modifier"], _DEFAULT_TYPE)]
        out.append(desc)
    return out


def write_dicom_seg(labelmap: Image, manifest: Manifest, path: str | os.PathLike[str],
                    source: str | os.PathLike[str] | None = None) -> Path:
    """Write `labelmap` (on the grid of the DICOM series in `source`, default the folder or file it
    was computed from) as a DICOM SEG at `path`, atomically."""
    hd, _ = _highdicom()
    from . import __version__
    from .atomic import staged_file

    where = check_dicom_source(source if source is not None else labelmap.meta.get("source_of", ""))
    src = _source(where, labelmap)
    _check_references(src.datasets, where)
    _complete_uids(src.datasets)
    labels = [l for l in manifest.labels if l.value != 0]
    lut = np.zeros(max([l.value for l in labels] + [int(labelmap.array.max(initial=0))]) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        lut[label.value] = number  # segment numbers must run 1..N
    frames = lut[np.asarray(labelmap.array, dtype=np.int64)[src.z]]  # one per source frame, in storage order
    seg = hd.seg.Segmentation(
        source_images=src.datasets, pixel_array=frames.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(manifest, labels),
        series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="UNETR++ for 3D Slicer", manufacturer_model_name=manifest.name[:64],
        software_versions=f"unetrpp {__version__}", device_serial_number="none",
        series_description=f"UNETR++ {manifest.name}"[:64], omit_empty_frames=False,
    )
    with staged_file(path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG %s: %d segment(s) over %d source frames", path, len(labels), len(src.z))
    return Path(path)


def read_dicom_seg(path: str | os.PathLike[str], source: str | os.PathLike[str], manifest: Manifest,
                   like: Image) -> np.ndarray:
    """The labelmap (z, y, x) of a DICOM SEG on the grid of `like` (the source series), with the
    manifest's label values: the inverse of `write_dicom_seg`, for checks."""
    hd, _ = _highdicom()
    seg = hd.seg.segread(str(path))
    src = _source(Path(source), like)
    if src.multiframe:
        numbers = seg.get_pixels_by_source_frame(str(src.datasets[0].SOPInstanceUID),
                                                 list(range(1, len(src.z) + 1)), combine_segments=True, relabel=False)
    else:
        numbers = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in src.datasets],
                                                    combine_segments=True, relabel=False)
    values = np.array([0] + [l.value for l in manifest.labels if l.value != 0], dtype=np.int64)
    out = np.zeros(like.array.shape, dtype=np.int64)
    out[src.z] = values[numbers]
    return out
