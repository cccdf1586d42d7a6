"""Segmentation outputs: Slicer `.seg.nrrd` files with segment names, colours and SNOMED-CT
terminology, plain labelmaps, confidence maps, per-segment statistics and the
largest-connected-component postprocessing.

`.seg.nrrd` layout (as 3D Slicer writes it, and `slicerio` / Slicer's
`vtkMRMLSegmentationStorageNode` read it):

* layer 0 holds the labelmap unchanged: one segment per manifest label (background 0 has none),
  `SegmentN_LabelValue` = the label value, so the voxel data are exactly the model's labels;
* with `include_regions`, every region of the manifest (a union of labels, e.g. BraTS whole
  tumour = {1, 2, 3}) is an extra segment in an extra layer, because regions overlap the labels
  and each other; regions whose label sets are disjoint share a layer. The file is then 4D
  (`kinds: list domain domain domain`), as Slicer stores overlapping segments;
* `SegmentN_Tags` carries `TerminologyEntry:<...>` built by `terminology.slicer_terminology_string`
  from the manifest's SNOMED-CT codes; `SegmentN_Color` the manifest colour (0-1 floats);
  `SegmentN_Extent` the segment's bounding box (i, j, k; "0 -1 0 -1 0 -1" when empty).

Every writer here is atomic: it writes a temporary file beside the target and renames it into
place (`os.replace`), so a failure never leaves a partial or truncated output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .atomic import staged_file
from .errors import UnetrppError
from .image import Image, image_suffix, write_image
from .manifest import Manifest, Region
from .terminology import slicer_terminology_string

log = logging.getLogger(__name__)

#: Labelmap formats `write_labelmap` writes (single files, so they can be renamed atomically).
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

#: gzip level of .seg.nrrd voxel data: labelmaps compress well already at level 1, and higher
#: levels cost seconds on a full-size CT for a few percent of file size.
SEG_NRRD_COMPRESSION = 1

_CHUNK_VOXELS = 1 << 24  # statistics count voxels slab by slab (bounded temporary memory)


# Atomic files ---------------------------------------------------------------------------------
def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """A temporary path with `path`'s name beside it, renamed onto `path` on success and removed
    on failure (`atomic.staged_file`): the target is never partially written."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UnetrppError(f"the folder of {target} does not exist; create it first")
    return staged_file(target)


# Helpers ----------------------------------------------------------------------------------------
def _label_array(labelmap: Image) -> np.ndarray:
    a = labelmap.array
    if a.ndim != 3:
        raise UnetrppError(f"a labelmap must be 3D (z, y, x), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise UnetrppError(f"a labelmap must hold integer labels, got {a.dtype}")
    return a


def _storage_dtype(max_value: int) -> np.dtype:
    if max_value <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_value <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    raise UnetrppError(f"label value {max_value} is too large for a labelmap (at most 65535)")


def _max_label(array: np.ndarray) -> int:
    if array.size == 0:
        return 0
    lo, hi = int(array.min()), int(array.max())
    if lo < 0:
        raise UnetrppError(f"labelmap holds negative label {lo}; labels are 0 (background) or positive")
    return hi


def label_counts(array: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Voxels per label value (bincount), computed slab by slab so that no int64 copy of the
    whole volume is made."""
    counts = np.zeros(max(minlength, _max_label(array) + 1), dtype=np.int64)
    flat = array.reshape(-1)
    for start in range(0, flat.size, _CHUNK_VOXELS):
        c = np.bincount(flat[start:start + _CHUNK_VOXELS], minlength=counts.size)
        counts[: c.size] += c
    return counts


def ijk_to_lps(image: Image) -> np.ndarray:
    """4x4 matrix from voxel indices (i, j, k) = (x, y, z) to LPS mm."""
    m = np.eye(4)
    m[:3, :3] = image.direction @ np.diag(image.spacing)
    m[:3, 3] = image.origin
    return m


def _extents(layer: np.ndarray) -> dict[int, str]:
    """Bounding box "imin imax jmin jmax kmin kmax" (i, j, k = x, y, z) of every value > 0 in a
    (z, y, x) layer."""
    out: dict[int, str] = {}
    for value, box in enumerate(ndimage.find_objects(layer), start=1):
        if box is not None:
            z, y, x = box
            out[value] = f"{x.start} {x.stop - 1} {y.start} {y.stop - 1} {z.start} {z.stop - 1}"
    return out


EMPTY_EXTENT = "0 -1 0 -1 0 -1"


def _color(rgb: Sequence[int]) -> list[float]:
    return [round(c / 255.0, 6) for c in rgb]


def region_layers(regions: Sequence[Region]) -> list[list[int]]:
    """Group regions (indices) into layers: regions in one layer have disjoint label sets, so
    their voxels never overlap. Greedy, in manifest order."""
    layers: list[list[int]] = []
    used: list[set[int]] = []
    for i, region in enumerate(regions):
        labels = set(region.labels)
        for layer, taken in zip(layers, used):
            if not labels & taken:
                layer.append(i)
                taken |= labels
                break
        else:
            layers.append([i])
            used.append(set(labels))
    return layers


#: What a .seg.nrrd header value may hold so that it is exactly one `key:=value` line that every
#: reader (teem/ITK in Slicer unescapes backslashes, pynrrd does not; pynrrd writes ASCII only)
#: reads back unchanged: printable ASCII without backslash. Terminology codes also exclude the
#: separators of Slicer's terminology string (^ ~ |). The manifest schema enforces the same.
_HEADER_TEXT = re.compile(r"[ -\[\]-~]+")
_CODE_TEXT = re.compile(r"[ -\[\]_-{}]+")


def _header_text(text: Any, what: str, allowed: re.Pattern[str] = _HEADER_TEXT) -> str:
    if not isinstance(text, str) or not allowed.fullmatch(text):
        raise UnetrppError(
            f"{what} {text!r} cannot be written into a .seg.nrrd header: use printable ASCII without "
            "backslash (and without ^ ~ | in terminology codes)"
        )
    return text


def _checked_terminology(terminology: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    for part, code in (terminology or {}).items():
        for key in ("scheme", "code", "meaning"):
            _header_text(code.get(key), f"{what} terminology {part}.{key}", _CODE_TEXT)
    return terminology


def _tag_text(text: str, limit: int = 1000) -> str:
    """Free text as a .seg.nrrd tag value: printable ASCII without backslash or the tag separator |."""
    cleaned = "".join(c if " " <= c <= "~" and c not in "\\|" else "?" for c in str(text))
    return cleaned[:limit]


def quality_tags(entry: Mapping[str, Any] | None) -> dict[str, str]:
    """A segment's quality (the report's segment "quality" entry) as Slicer segment tags: the
    status and reasons (read back by slicerio and shown in Slicer's segment tags), whether the
    volume is a lower bound. (`_segment` also sets Slicer's own review flag, the segment status
    "flagged", for a structure to review or that failed.)"""
    if not entry:
        return {}
    status = str(entry.get("status", ""))
    tags = {"UNETRPlusPlus.Quality": _tag_text(status)}
    reasons = [str(r) for r in entry.get("reasons", [])]
    if reasons:
        tags["UNETRPlusPlus.QualityReasons"] = _tag_text("; ".join(reasons))
    if entry.get("partial"):
        tags["UNETRPlusPlus.VolumeIsLowerBound"] = "cut by the field of view"
    return tags


def _segment(seg_id: str, name: str, color: Sequence[int], terminology: dict[str, Any] | None,
             layer: int, value: int, extent: str, quality: Mapping[str, Any] | None = None) -> dict[str, Any]:
    name = _header_text(name, f"segment name of {seg_id}")
    terminology = _checked_terminology(terminology, f"segment {name!r}")
    segment: dict[str, Any] = {
        "id": seg_id, "name": name, "color": _color(color), "labelValue": value, "layer": layer,
        "extent": [int(v) for v in extent.split()], "nameAutoGenerated": False, "colorAutoGenerated": False,
    }
    term = slicer_terminology_string(terminology)
    tags = {"TerminologyEntry": term} if term else {}
    tags.update(quality_tags(quality))
    if tags:
        segment["tags"] = tags
    if quality and quality.get("status") in ("review", "fail"):
        segment["status"] = "flagged"  # written as the Segmentation.Status tag Slicer shows
    return segment


# .seg.nrrd --------------------------------------------------------------------------------------
def write_seg_nrrd(labelmap: Image, manifest: Manifest, path: str | os.PathLike[str], include_regions: bool = True,
                   *, compression_level: int = SEG_NRRD_COMPRESSION) -> Path:
    """Write `labelmap` (integer labels on the input grid) as a Slicer segmentation with the
    manifest's segment names, colours and terminology; regions as extra (overlapping) layers when
    `include_regions` and the manifest has any. Atomic. Returns the path."""
    import slicerio

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise UnetrppError(f"{path}: a Slicer segmentation file name must end in .seg.nrrd")
    array = _label_array(labelmap)
    dtype = _storage_dtype(_max_label(array))
    labels = [l for l in manifest.labels if l.value != 0]
    present = np.flatnonzero(label_counts(array))
    unknown = sorted(set(int(v) for v in present) - {l.value for l in labels} - {0})
    if unknown:
        log.warning("labelmap values %s have no label in model %s; they get no segment", unknown, manifest.name)

    regions = manifest.regions if include_regions else []
    layer_groups = region_layers(regions)
    n_layers = 1 + len(layer_groups)
    # (z, y, x, layer) in C order: its transpose (layer, x, y, z) is Fortran-contiguous, the
    # order .seg.nrrd stores (the layer axis varies fastest), so the writer needs no extra copy.
    if n_layers == 1:
        voxels_zyx = np.ascontiguousarray(array, dtype=dtype)
        layer_arrays = [voxels_zyx]
    else:
        voxels_zyx = np.zeros((*array.shape, n_layers), dtype=dtype)
        voxels_zyx[..., 0] = array
        layer_arrays = [voxels_zyx[..., 0]]
    segments: list[dict[str, Any]] = []
    extents = _extents(layer_arrays[0])
    quality = labelmap.meta.get("segment_quality") or {}  # value -> the report's segment quality (issue 19)
    for l in labels:
        segments.append(_segment(f"label_{l.value}", l.name, l.color, l.terminology, 0, l.value,
                                 extents.get(l.value, EMPTY_EXTENT), quality.get(l.value)))
    lut_size = int(array.max(initial=0)) + 1
    for layer_index, group in enumerate(layer_groups, start=1):
        lut = np.zeros(max(lut_size, 1 + max(v for i in group for v in regions[i].labels)), dtype=dtype)
        for value, i in enumerate(group, start=1):
            lut[list(regions[i].labels)] = value
        layer = voxels_zyx[..., layer_index]
        np.take(lut, array, out=layer)  # one pass per layer: label -> region value
        extents = _extents(np.ascontiguousarray(layer))
        for value, i in enumerate(group, start=1):
            r = regions[i]
            segments.append(_segment(f"region_{i + 1}", r.name, r.color, r.terminology, layer_index, value,
                                     extents.get(value, EMPTY_EXTENT)))

    segmentation = {
        "voxels": voxels_zyx.T,  # (x, y, z) or (layer, x, y, z), written in Fortran order
        "ijkToLPS": ijk_to_lps(labelmap),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level, index_order="F")
    log.info("wrote %s: %d segment(s) in %d layer(s)", path, len(segments), n_layers)
    return path


# Labelmaps and confidence maps -------------------------------------------------------------------
def write_labelmap(labelmap: Image, path: str | os.PathLike[str]) -> Path:
    """Write the labelmap as NIfTI (.nii.gz/.nii), NRRD (.nrrd) or MetaImage (.mha) via SimpleITK,
    as uint8 (uint16 when labels exceed 255), with the labelmap's exact geometry. Atomic."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix == ".seg.nrrd":
        raise UnetrppError(f"{path}: use write_seg_nrrd for Slicer segmentations (names, colours, terminology)")
    if suffix not in LABELMAP_SUFFIXES:
        raise UnetrppError(f"cannot write a labelmap to {path}: use one of {', '.join(LABELMAP_SUFFIXES)}")
    array = _label_array(labelmap)
    dtype = _storage_dtype(_max_label(array))
    out = labelmap if array.dtype == dtype else labelmap.with_array(array.astype(dtype))
    return write_image(out, path)


def write_probabilities(probabilities: Image, path: str | os.PathLike[str], *, percent: bool = True) -> Path:
    """Write a probability / confidence map (values 0..1, e.g. the softmax probability of the
    chosen label per voxel, on the labelmap's grid). `percent=True` stores uint8 0-100 (rounded:
    small files, 1 % steps); `percent=False` stores float32 0..1. NIfTI/NRRD/MHA, atomic."""
    path = Path(path)
    if image_suffix(path) not in LABELMAP_SUFFIXES:
        raise UnetrppError(f"cannot write a probability map to {path}: use one of {', '.join(LABELMAP_SUFFIXES)}")
    p = np.asarray(probabilities.array)
    if p.ndim != 3:
        raise UnetrppError(f"a probability map must be 3D (z, y, x), got shape {p.shape}")
    if percent:
        data = np.empty(p.shape, dtype=np.uint8)
        np.rint(np.clip(p, 0.0, 1.0, dtype=np.float32) * 100.0, out=data, casting="unsafe")
    else:
        data = p.astype(np.float32, copy=False)
    return write_image(probabilities.with_array(data, kind="probability" if not percent else "confidence_percent"), path)


def confidence_map(probabilities: np.ndarray) -> np.ndarray:
    """Max-softmax confidence (D, H, W) float32 of probabilities (K, D, H, W)."""
    return np.asarray(probabilities).max(axis=0).astype(np.float32, copy=False)


# Statistics and postprocessing ---------------------------------------------------------------------
def segment_statistics(labelmap: Image, manifest: Manifest) -> list[dict[str, Any]]:
    """Per manifest label (background excluded): {"kind": "label", "value", "name", "voxels",
    "volume_ml"}; then per region: {"kind": "region", "name", "labels", "voxels", "volume_ml"}.
    Volume = voxels x voxel volume (product of the spacing, mm^3) / 1000."""
    array = _label_array(labelmap)
    counts = label_counts(array, minlength=1 + max([l.value for l in manifest.labels], default=0))
    ml = labelmap.voxel_volume_mm3 / 1000.0
    out: list[dict[str, Any]] = []
    for l in manifest.labels:
        if l.value == 0:
            continue
        n = int(counts[l.value])
        out.append({"kind": "label", "value": l.value, "name": l.name, "voxels": n, "volume_ml": n * ml})
    for r in manifest.regions:
        n = int(sum(counts[v] for v in r.labels if v < counts.size))
        out.append({"kind": "region", "name": r.name, "labels": list(r.labels), "voxels": n, "volume_ml": n * ml})
    return out


#: Default connectivity of the largest-component postprocessing: 26 (faces, edges and corners),
#: what skimage's `label` uses by default and hence nnU-Net v2's "remove all but the largest
#: component"; 6 (faces only) is scipy's default and splits organs touching only diagonally.
LCC_CONNECTIVITY = 26


def remove_small_components(array: np.ndarray, labels: Iterable[int], *,
                            connectivity: int = LCC_CONNECTIVITY) -> dict[int, int]:
    """In place: keep only the largest connected component of each label value in `labels` of the
    integer (z, y, x) `array`; the other components become background (0). Connectivity 6
    (faces), 18 (and edges) or 26 (and corners). Returns {label: voxels removed} for every asked
    label (0 where nothing was removed or the label is absent).

    One pass over the volume finds every label's bounding box; each label is then labelled
    inside its own box only, so the cost is that of the organs, not 13 full-volume passes."""
    rank = {6: 1, 18: 2, 26: 3}.get(connectivity)
    if rank is None:
        raise UnetrppError(f"connectivity {connectivity} must be 6, 18 or 26")
    structure = ndimage.generate_binary_structure(3, rank)
    wanted = sorted(set(int(v) for v in labels if int(v) > 0))
    removed = {v: 0 for v in wanted}
    boxes = ndimage.find_objects(array, max_label=max(wanted, default=0)) if wanted else []
    for value in wanted:
        box = boxes[value - 1] if value - 1 < len(boxes) else None
        if box is None:
            continue
        view = array[box]
        mask = view == value
        components, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        drop = mask & (components != int(sizes.argmax()))
        view[drop] = 0
        removed[value] = int(drop.sum())
        log.info("label %d: kept the largest of %d components, removed %d voxels", value, n, removed[value])
    return removed


def largest_connected_component(labelmap: Image | np.ndarray, labels: Iterable[int], *,
                                connectivity: int = LCC_CONNECTIVITY,
                                in_place: bool = False) -> Image | np.ndarray:
    """`remove_small_components` on an Image or array: returns a new Image/array unless
    `in_place`. Default connectivity 26 (`LCC_CONNECTIVITY`), as the segmentation pipeline
    applies it to a manifest's `inference.largest_component_labels`."""
    array = labelmap.array if isinstance(labelmap, Image) else labelmap
    if not in_place:
        array = array.copy()
    remove_small_components(array, labels, connectivity=connectivity)
    if isinstance(labelmap, Image):
        return labelmap if in_place else labelmap.with_array(array)
    return array


__all__ = [
    "EMPTY_EXTENT",
    "LABELMAP_SUFFIXES",
    "LCC_CONNECTIVITY",
    "atomic_path",
    "confidence_map",
    "ijk_to_lps",
    "label_counts",
    "largest_connected_component",
    "region_layers",
    "remove_small_components",
    "segment_statistics",
    "write_labelmap",
    "write_probabilities",
    "write_seg_nrrd",
]
