"""DICOM Segmentation (SEG) output for DICOM series inputs, written with highdicom (extra `[dicom]`).

`write_dicom_seg(labelmap, manifest, path, source)` writes a binary SEG that references the source
series (frame of reference, study, every source instance) with one segment per manifest label:
its name, colour, and SNOMED-CT category/type/modifier from the manifest's terminology. Each frame
is matched to its source slice by physical position, never by file order, and the labelmap must lie
on the source grid (as the engine's labelmaps do). `read_dicom_seg` gives the labelmap back on the
source slices, for checks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputImageError, UnetrppError
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
        raise UnetrppError(f"DICOM SEG output needs {exc.name}: pip install 'unetrpp[dicom]'") from None
    return highdicom, pydicom


def check_dicom_source(source: str | os.PathLike[str]) -> Path:
    """Refuse DICOM SEG output for an input that is not a DICOM series folder, before any work."""
    path = Path(source)
    if not path.is_dir():
        raise InputImageError(f"DICOM SEG output (.dcm) needs a DICOM series folder as input; {path} is a file. "
                              "Write .seg.nrrd or .nii.gz instead")
    return path


def check_output_for_inputs(output: str | os.PathLike[str], inputs: Any) -> None:
    """For a `.dcm` output: the (first) input must be a DICOM series folder. Checked before work."""
    if str(output).lower().endswith(".dcm"):
        first = next(iter(inputs.values()), "") if isinstance(inputs, dict) else inputs
        check_dicom_source(first)


def _source_datasets(folder: Path, labelmap: Image) -> list[Any]:
    """The slices of the series in `folder` that lie on `labelmap`'s grid, in labelmap z order."""
    _, pydicom = _highdicom()
    by_series: dict[str, list[Any]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM (a README, a thumbnail): not part of the series
            continue
        # some exporters leave the SOP UIDs empty in the data set but set them in the file meta
        # information; highdicom needs them in the data set (the copy in memory, not the file)
        for tag, meta in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(tag) and getattr(ds, "file_meta", None) is not None and ds.file_meta.get(meta):
                setattr(ds, tag, ds.file_meta.get(meta))
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    nz = labelmap.array.shape[0]
    for uid, datasets in by_series.items():
        index = labelmap.physical_to_index(np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]))
        z = np.rint(index[:, 2]).astype(int)
        on_grid = (np.abs(index[:, :2]).max(initial=0) < _GRID_TOLERANCE
                   and np.abs(index[:, 2] - z).max(initial=0) < _GRID_TOLERANCE)
        if len(datasets) == nz and on_grid and sorted(z.tolist()) == list(range(nz)):
            order = np.argsort(z)
            return [datasets[i] for i in order]
    raise UnetrppError(f"no DICOM series in {folder} lies on the segmentation's grid ({nz} slices); DICOM SEG "
                       "needs the series the segmentation was computed from")


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
    """Write `labelmap` (on the grid of the DICOM series in `source`, default the folder it was
    computed from) as a DICOM SEG at `path`, atomically."""
    hd, _ = _highdicom()
    from . import __version__
    from .atomic import staged_file

    folder = check_dicom_source(source if source is not None else labelmap.meta.get("source_of", ""))
    datasets = _source_datasets(folder, labelmap)
    labels = [l for l in manifest.labels if l.value != 0]
    lut = np.zeros(max([l.value for l in labels] + [int(labelmap.array.max(initial=0))]) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        lut[label.value] = number  # segment numbers must run 1..N
    frames = lut[np.asarray(labelmap.array, dtype=np.int64)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(manifest, labels),
        series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="UNETR++ for 3D Slicer", manufacturer_model_name=manifest.name[:64],
        software_versions=f"unetrpp {__version__}", device_serial_number="none",
        series_description=f"UNETR++ {manifest.name}"[:64], omit_empty_frames=False,
    )
    with staged_file(path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG %s: %d segment(s) over %d source slices", path, len(labels), len(datasets))
    return Path(path)


def read_dicom_seg(path: str | os.PathLike[str], source: str | os.PathLike[str], manifest: Manifest,
                   like: Image) -> np.ndarray:
    """The labelmap (z, y, x) of a DICOM SEG on the grid of `like` (the source series), with the
    manifest's label values: the inverse of `write_dicom_seg`, for checks."""
    hd, _ = _highdicom()
    seg = hd.seg.segread(str(path))
    datasets = _source_datasets(Path(source), like)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    values = np.array([0] + [l.value for l in manifest.labels if l.value != 0], dtype=np.int64)
    return values[numbers]
