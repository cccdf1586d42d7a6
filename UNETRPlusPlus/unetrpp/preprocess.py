"""The official nnU-Net (v1) / UNETR++ preprocessing, driven by the manifest's plan, and its exact inverse.

Forward (`preprocess`), in the order of the official pipeline:
  1. inputs aligned on the first input's grid (same grid: kept; overlapping: resampled with a
     warning naming the offset in mm; disjoint: `InputImageError`);
  2. optional region of interest (a physical LPS box), everything outside stays background;
  3. optional reorientation (`plan.orientation`; default none = stored voxel order, as official);
  4. crop to the non-zero bounding box of all channels (`plan.crop_to_nonzero`);
  5. resample to `plan.target_spacing` (z, y, x): image cubic (`plan.image_order`); when the
     max/min spacing ratio exceeds `plan.anisotropy_threshold`, the low-resolution axis is
     resampled separately with `plan.separate_z_order` (0 = nearest), in-plane with the image order
     (the nnU-Net "separate z" rule, decided on the original spacing first, then on the target);
  6. normalisation per input: CT clip to [lo, hi] then (x - mean) / std; MRI z-score, optionally
     on the (hole-filled) non-zero mask with the outside set to 0.

Inverse (`labels_to_input_grid`): class probabilities (K, D, H, W) on the network grid are resampled
back one class at a time (`plan.label_order`, linear by default, separate z as above) with a running
argmax, so peak memory holds two full-size float channels instead of K; the labels are then un-cropped,
un-oriented and put back into the region of interest on the first input's exact grid.

Resampling follows nnU-Net's `resize` convention (voxel-edge aligned, `scipy.ndimage.zoom` with
grid_mode=True, edge values repeated), so the network grid has shape round(shape * spacing / target).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputImageError, ResourceLimitError
from .image import Image
from .manifest import InputSpec, Manifest, Plan
from .resampling import argmax_of_resized_slices, nearest_indices, resample, resample_segmentation

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


@dataclass
class PreprocessState:
    """Everything needed to map arrays between the first input's grid and the network grid."""

    reference: Image  # geometry of the first input (its array is a 0-size placeholder)
    input_names: list[str]
    roi_box: Box  # (z, y, x) slices of the reference grid the work is restricted to
    orientation: str | None  # code the data was reoriented to (None: stored order)
    original_orientation: str | None
    oriented_shape: tuple[int, int, int]
    crop_box: Box  # within the (roi, oriented) array
    spacing_zyx: tuple[float, float, float]  # of the cropped array, before resampling
    target_spacing: tuple[float, float, float]
    network_shape: tuple[int, int, int]
    separate_axis: int | None  # low-resolution axis resampled separately, or None
    image_order: int = 3
    label_order: int = 1
    separate_z_order: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def resampled(self) -> bool:
        return self.network_shape != _box_shape(self.crop_box)

    @property
    def reference_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.reference.meta["shape"])  # type: ignore[return-value]

    def summary(self) -> dict[str, Any]:
        return {
            "input_shape_zyx": list(self.reference_shape),
            "roi_zyx": [[s.start, s.stop] for s in self.roi_box],
            "crop_zyx": [[s.start, s.stop] for s in self.crop_box],
            "orientation": self.orientation,
            "spacing_zyx": list(self.spacing_zyx),
            "target_spacing_zyx": list(self.target_spacing),
            "network_shape_zyx": list(self.network_shape),
            "separate_z_axis": self.separate_axis,
        }


def _box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(int(s.stop - s.start) for s in box)  # type: ignore[return-value]


# Inputs -----------------------------------------------------------------------------------
def order_inputs(images: Mapping[str, Image] | Sequence[Image], manifest: Manifest) -> list[tuple[str, Image]]:
    """Images in the manifest's input order. A mapping must use exactly the manifest's names."""
    expected = [i.name for i in manifest.inputs]
    if isinstance(images, Mapping):
        given = list(images)
        if sorted(given) != sorted(expected):
            raise InputImageError(
                f"model {manifest.name!r} takes {len(expected)} input(s) named {', '.join(expected)}; "
                f"got {len(given)}: {', '.join(given) or 'none'}"
            )
        return [(n, images[n]) for n in expected]
    images = list(images)
    if len(images) != len(expected):
        raise InputImageError(
            f"model {manifest.name!r} takes {len(expected)} input(s) ({', '.join(expected)}); got {len(images)}"
        )
    return list(zip(expected, images))


def _bounds(img: Image) -> tuple[np.ndarray, np.ndarray]:
    c = img.corners()
    return c.min(0), c.max(0)


def align_to_reference(reference: Image, image: Image, name: str, reference_name: str) -> tuple[np.ndarray, str | None]:
    """`image`'s array on `reference`'s grid, and a warning when it had to be resampled.

    Raises InputImageError when the two do not overlap in physical space."""
    if image.same_grid(reference):
        return image.array, None
    lo_r, hi_r = _bounds(reference)
    lo_i, hi_i = _bounds(image)
    inter = np.minimum(hi_r, hi_i) - np.maximum(lo_r, lo_i)
    ref_sitk = sitk.Image(list(reference.size), sitk.sitkUInt8)
    ref_sitk.SetSpacing(reference.spacing)
    ref_sitk.SetOrigin(reference.origin)
    ref_sitk.SetDirection(tuple(reference.direction.ravel()))
    src = image.to_sitk()
    covered = 0.0
    if np.all(inter > 0):
        ones = sitk.Image(src.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(src)
        cover = sitk.GetArrayViewFromImage(sitk.Resample(ones, ref_sitk, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        covered = float(cover.mean())
    if covered == 0.0:
        raise InputImageError(
            f"input {name!r} ({image.describe()}) does not overlap input {reference_name!r} in physical "
            f"space: {name!r} spans {np.round(lo_i, 1).tolist()} to {np.round(hi_i, 1).tolist()} mm (LPS), "
            f"{reference_name!r} spans {np.round(lo_r, 1).tolist()} to {np.round(hi_r, 1).tolist()} mm. "
            "Inputs must be images of the same patient and region, in the same coordinate system"
        )
    offset = np.asarray(image.origin) - np.asarray(reference.origin)
    centre = (lo_i + hi_i) / 2 - (lo_r + hi_r) / 2
    resampled = sitk.Resample(src, ref_sitk, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warning = (
        f"input {name!r} ({image.describe()}) is not on the grid of input {reference_name!r} "
        f"({reference.describe()}): origin offset {_fmt_mm(offset)} mm, centre offset {_fmt_mm(centre)} mm "
        f"(LPS); resampled onto {reference_name!r}'s grid with linear interpolation "
        f"({covered:.0%} of it covered, the rest set to 0)"
    )
    return sitk.GetArrayFromImage(resampled), warning


def _fmt_mm(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:+.1f}" for x in v) + ")"


def roi_to_box(reference: Image, roi: Sequence[Sequence[float]] | None) -> Box:
    """A physical box ((xmin, ymin, zmin), (xmax, ymax, zmax)) in LPS mm -> (z, y, x) slices of
    the voxels of `reference` it touches. None -> the whole grid."""
    shape = reference.array.shape
    if roi is None:
        return tuple(slice(0, n) for n in shape)  # type: ignore[return-value]
    from .request import check_roi  # the one ROI check (a request's ROI passes it unchanged)

    lo, hi = (np.asarray(corner, dtype=float) for corner in check_roi(roi))  # type: ignore[misc]
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = reference.physical_to_index(corners)  # (x, y, z) continuous indices
    start = np.maximum(np.ceil(idx.min(0) - 0.5 - 1e-6), 0).astype(int)
    stop = np.minimum(np.floor(idx.max(0) + 0.5 + 1e-6) + 1, reference.size).astype(int)
    if np.any(stop <= start):
        lo_r, hi_r = _bounds(reference)
        raise InputImageError(
            f"region of interest {lo.tolist()} to {hi.tolist()} mm (LPS) does not overlap the input, "
            f"which spans {np.round(lo_r, 1).tolist()} to {np.round(hi_r, 1).tolist()} mm"
        )
    return tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))  # type: ignore[return-value]


# Orientation ------------------------------------------------------------------------------
def _orientation_code(direction: np.ndarray) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(v) for v in direction.ravel()))


def _grid_image(array: np.ndarray, reference: Image, box: Box) -> sitk.Image:
    """`array` (the `box` part of the reference grid) as a SimpleITK image with its geometry."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(reference.spacing)
    start_xyz = np.array([box[2].start, box[1].start, box[0].start], dtype=float)
    img.SetOrigin(tuple(reference.index_to_physical(start_xyz)))
    img.SetDirection(tuple(reference.direction.ravel()))
    return img


# Resampling (the official resample_data_or_seg, unetrpp.resampling) ----------------------------
def _do_separate_z(spacing: Sequence[float], threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    s = np.asarray(spacing)
    axes = np.flatnonzero(s.max() / s == 1)
    return int(axes[0]) if len(axes) == 1 else None  # several equally coarse axes: no separate z


def separate_z_axis(original: Sequence[float], target: Sequence[float], threshold: float) -> int | None:
    """nnU-Net v1's rule (preprocessing.py:78-95): the original spacing decides first, then the target."""
    if _do_separate_z(original, threshold):
        return _lowres_axis(original)
    if _do_separate_z(target, threshold):
        return _lowres_axis(target)
    return None


def resize(array: np.ndarray, new_shape: Sequence[int], order: int, separate_axis: int | None = None,
           order_z: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Resample one 3D image channel to `new_shape` as the official code does (float32; see
    `unetrpp.resampling.resample`). With `separate_axis`, every slice across that axis is resized
    in-plane with `order` (2-D cubic convolution for order 3), then the axis itself with `order_z`."""
    return resample(array, new_shape, order, separate_axis, order_z, out=out)


# Forward ----------------------------------------------------------------------------------
def _nonzero_box(channels: Sequence[np.ndarray]) -> Box:
    mask = np.zeros(channels[0].shape, dtype=bool)
    for c in channels:
        mask |= c != 0
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def plan_state(reference: Image, names: list[str], manifest: Manifest, roi=None) -> PreprocessState:
    """The geometric part of the plan for `reference` (without looking at intensities; the
    non-zero crop box is filled in by `preprocess`)."""
    plan = Plan.from_dict(manifest.plan)  # typed; every default from unetrpp.manifest.Plan
    roi_box = roi_to_box(reference, roi)
    placeholder = Image(np.zeros((0, 0, 0), np.uint8), reference.spacing, reference.origin, reference.direction,
                        meta={"shape": reference.array.shape})
    orientation = plan.orientation
    return PreprocessState(
        reference=placeholder, input_names=names, roi_box=roi_box, orientation=orientation,
        original_orientation=_orientation_code(reference.direction) if orientation else None,
        oriented_shape=_box_shape(roi_box), crop_box=tuple(slice(0, n) for n in _box_shape(roi_box)),  # type: ignore[arg-type]
        spacing_zyx=tuple(reference.spacing[::-1]), target_spacing=plan.target_spacing,
        network_shape=_box_shape(roi_box), separate_axis=None,
        image_order=int(plan.image_order), label_order=int(plan.label_order),
        separate_z_order=int(plan.separate_z_order),
    )


def _orient(arrays: list[np.ndarray], state: PreprocessState) -> list[np.ndarray]:
    if not state.orientation:
        return arrays
    out = []
    ref = state.reference
    for a in arrays:
        img = sitk.DICOMOrient(_grid_image(a, ref, state.roi_box), state.orientation)
        out.append(sitk.GetArrayFromImage(img))
        spacing = img.GetSpacing()
    state.oriented_shape = tuple(out[0].shape)  # type: ignore[assignment]
    state.spacing_zyx = tuple(float(s) for s in spacing[::-1])  # type: ignore[assignment]
    return out


#: The largest network grid (voxels) the engine accepts: 2**27 (e.g. 512 x 512 x 512). The network
#: input, the class probabilities (one float32 volume per class) and the sliding window all grow
#: with it; a wrong spacing in a header (5000 mm instead of 0.5) would otherwise ask for terabytes.
MAX_NETWORK_VOXELS = 1 << 27


def _finish_geometry(state: PreprocessState, manifest: Manifest) -> None:
    plan = Plan.from_dict(manifest.plan)
    shape = np.asarray(_box_shape(state.crop_box), dtype=float)
    # official preprocessing.py:69: round(original spacing / target spacing * shape)
    new_shape = np.round(np.asarray(state.spacing_zyx) / np.asarray(state.target_spacing) * shape)
    if not np.all(np.isfinite(new_shape)) or float(np.prod(np.maximum(new_shape, 1))) > MAX_NETWORK_VOXELS:
        grid = " x ".join(f"{n:.0f}" for n in new_shape)
        raise ResourceLimitError(
            f"resampling the input ({' x '.join(str(int(n)) for n in shape)} voxels at "
            f"{' x '.join(f'{v:g}' for v in state.spacing_zyx)} mm, z/y/x) to the model's spacing "
            f"{' x '.join(f'{v:g}' for v in state.target_spacing)} mm gives a network grid of {grid} voxels, "
            f"more than the limit of {MAX_NETWORK_VOXELS:,} voxels (MAX_NETWORK_VOXELS). Check the voxel "
            "spacing in the image header, or restrict the work with a region of interest (--roi)"
        )
    state.network_shape = tuple(int(max(n, 1)) for n in new_shape)  # type: ignore[assignment]
    state.separate_axis = separate_z_axis(state.spacing_zyx, state.target_spacing, float(plan.anisotropy_threshold))


def forward_array(array: np.ndarray, state: PreprocessState, order: int | None = None) -> np.ndarray:
    """Map one array on the first input's grid to the network grid (ROI, orientation, crop,
    resampling with `order`, default the image order, as an image channel), float32."""
    a = array[state.roi_box]
    if a.dtype == bool:
        a = a.astype(np.uint8)
    a = _orient([a], state)[0] if state.orientation else a
    a = a[state.crop_box]
    order = state.image_order if order is None else order
    return resize(a, state.network_shape, order, state.separate_axis, state.separate_z_order)


def normalise(x: np.ndarray, scheme: Mapping[str, Any], mask: np.ndarray | None = None) -> np.ndarray:
    """In-place normalisation of one channel (float32) per the manifest's input scheme, in the
    official arithmetic (preprocessing.py:274-305): float32 statistics, sd + 1e-8."""
    kind = scheme["scheme"]
    use_mask = bool(scheme.get("nonzero_mask")) and mask is not None
    if kind == "ct":
        lo, hi = scheme["clip"]
        np.clip(x, lo, hi, out=x)
        x -= np.float32(scheme["mean"])
        x /= np.float32(scheme["std"])
        if use_mask:
            x[~mask] = 0
    elif kind == "zscore":
        values = x[mask] if use_mask else x
        # numpy's float32 mean/std (pairwise sums), as the official code computes them
        mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
        x -= np.float32(mean)
        x /= np.float32(std + 1e-8)
        if use_mask:
            x[~mask] = 0
    elif kind != "none":
        raise InputImageError(f"unknown normalisation scheme {kind!r} in the model manifest")
    return x


@dataclass(frozen=True)
class PreprocessSpec:
    """What preprocessing needs from a model: its inputs (names, normalisation) and plan. A
    `Manifest` has the same three attributes; training builds this from its plan file."""

    name: str
    inputs: Sequence[InputSpec]
    plan: Mapping[str, Any]


def _label_array(label: Image | np.ndarray, reference: Image) -> np.ndarray:
    array = label.array if isinstance(label, Image) else np.asarray(label)
    if array.shape != reference.array.shape:
        raise InputImageError(
            f"the label map has {array.shape[::-1]} voxels (x, y, z) but the first input has {reference.size}; "
            "a label must be on its image's grid"
        )
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputImageError("the label map holds values that are not whole numbers")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise InputImageError(f"the label map holds negative values ({int(array.min())}); labels are 0 (background) or more")
    return array


def _segmentation_map(nonzero: np.ndarray, label: np.ndarray | None) -> np.ndarray:
    """The official `seg` (cropping.py crop_to_nonzero): the label (or 0) inside the non-zero mask
    and where the label is foreground, -1 elsewhere."""
    if label is None:
        return np.where(nonzero, 0, -1).astype(np.int8)
    dtype = np.int16 if label.max(initial=0) < 2**15 else np.int32
    seg = label.astype(dtype)
    seg[(seg == 0) & ~nonzero] = -1
    return seg


def preprocess(
    images: Mapping[str, Image] | Sequence[Image],
    manifest: Manifest | PreprocessSpec,
    roi: Sequence[Sequence[float]] | None = None,
    label: Image | np.ndarray | None = None,
):
    """Inputs -> (C, D, H, W) float32 network input and the state to invert it, as the official
    `preprocess_test_case`: crop to the non-zero box, NaN are refused earlier by image reading,
    resample (`unetrpp.resampling`), normalise.

    With `label` (a label map on the first input's grid, as nnU-Net's `run_case(data, seg)`), returns
    (network input, state, label on the network grid): the label goes through the same crop and
    is resampled as the official training preprocessing does (`resize_segmentation`, order
    `plan.label_order`, nearest along a separate axis), and the non-zero mask for normalisation is
    taken from it as the official code does (label or inside the non-zero region)."""
    named = order_inputs(images, manifest)
    names = [n for n, _ in named]
    ref_name, reference = named[0]
    state = plan_state(reference, names, manifest, roi)
    arrays = []
    for name, img in named:
        if img.array.ndim != 3:
            raise InputImageError(f"input {name!r} must be a 3D volume, got an array of shape {img.array.shape}")
        array, warning = align_to_reference(reference, img, name, ref_name)
        if warning:
            log.warning("%s", warning)
            state.warnings.append(warning)
        arrays.append(array[state.roi_box])
    arrays = _orient(arrays, state)
    lab = None
    if label is not None:
        lab = _label_array(label, reference)[state.roi_box]
        lab = _orient([lab], state)[0] if state.orientation else lab

    if Plan.from_dict(manifest.plan).crop_to_nonzero:
        state.crop_box = _nonzero_box(arrays)
    else:
        state.crop_box = tuple(slice(0, n) for n in arrays[0].shape)  # type: ignore[assignment]
    arrays = [a[state.crop_box] for a in arrays]
    _finish_geometry(state, manifest)

    specs = manifest.inputs
    mask = seg = None
    if label is not None or any(s.normalization.get("nonzero_mask") for s in specs):
        # the official map: hole-filled non-zero mask of all channels (cropping.py create_nonzero_mask)
        nonzero = np.zeros(arrays[0].shape, dtype=bool)
        for a in arrays:
            nonzero |= a != 0
        nonzero = ndimage.binary_fill_holes(nonzero)
        seg = _segmentation_map(nonzero, None if lab is None else lab[state.crop_box])
        del nonzero
        seg = resample_segmentation(seg, state.network_shape, state.label_order, state.separate_axis)
        mask = seg >= 0

    out = np.empty((len(arrays), *state.network_shape), dtype=np.float32)
    for c, (a, spec) in enumerate(zip(arrays, specs)):
        resize(a, state.network_shape, state.image_order, state.separate_axis, state.separate_z_order, out=out[c])
        normalise(out[c], spec.normalization, mask)
    log.info(
        "preprocessed %d input(s): crop %s -> network grid %s at %s mm (separate axis %s)",
        len(arrays), _box_shape(state.crop_box), state.network_shape, state.target_spacing, state.separate_axis,
    )
    if label is None:
        return out, state
    seg[seg < 0] = 0  # outside the non-zero region is background (nnU-Net's RemoveLabelTransform(-1, 0))
    dtype = np.uint8 if seg.max(initial=0) < 256 else np.int16 if seg.max() < 2**15 else np.int32
    return out, state, seg.astype(dtype)


# Inverse ----------------------------------------------------------------------------------
def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _cropped_to_input(cropped: np.ndarray, state: PreprocessState, fill: float | int = 0) -> Image:
    """An array on the crop box (oriented) -> Image on the first input's full grid."""
    oriented = np.full(state.oriented_shape, fill, dtype=cropped.dtype)
    oriented[state.crop_box] = cropped
    roi_shape = _box_shape(state.roi_box)
    if state.orientation:
        img = sitk.GetImageFromArray(oriented)
        # geometry of the oriented array, as DICOMOrient produced it
        ref = state.reference
        grid = sitk.DICOMOrient(_grid_image(np.zeros(roi_shape, np.uint8), ref, state.roi_box), state.orientation)
        img.CopyInformation(grid)
        back = sitk.DICOMOrient(img, state.original_orientation)
        oriented = sitk.GetArrayFromImage(back)
        if oriented.shape != roi_shape:  # pragma: no cover - DICOMOrient is a permutation + flips
            raise RuntimeError(f"reorientation did not invert: {oriented.shape} vs {roi_shape}")
    full = np.full(state.reference_shape, fill, dtype=cropped.dtype)
    full[state.roi_box] = oriented
    ref = state.reference
    return Image(full, ref.spacing, ref.origin, ref.direction.copy(), meta={})


def labels_to_input_grid(probabilities: Any, state: PreprocessState, *, with_confidence: bool = False):
    """Class probabilities (K, D, H, W) on the network grid -> labelmap `Image` (uint8, or uint16
    for more than 256 classes) exactly on the first input's grid; background outside the ROI and
    the crop. With `with_confidence`, also an `Image` (float32) of the winning class's probability.

    As the official export (segmentation_export.py:80-120): each class resampled to the cropped
    grid with `plan.label_order` (1) and the separate-z rule, then argmax (ties to the lower
    class). With a separate axis and nearest neighbour along it (the default), every output slice
    copies one in-plane-resized network slice, so the argmax runs on the network's slices
    (`resampling.argmax_of_resized_slices`, which interpolates every class only where the
    labels of neighbouring pixels differ) and only labels and confidence are spread along the
    axis. Otherwise one class at a time with a running argmax."""
    probs = probabilities
    k = int(probs.shape[0])
    if tuple(probs.shape[1:]) != tuple(state.network_shape):
        raise ValueError(f"probabilities of shape {tuple(probs.shape)} do not match the network grid {state.network_shape}")
    crop_shape = _box_shape(state.crop_box)
    ax = state.separate_axis
    if ax is not None and state.separate_z_order == 0 and state.label_order == 1:
        # the default: in-plane bilinear per slice, nearest along the separate axis
        n, m = state.network_shape[ax], crop_shape[ax]
        needed, gather = np.unique(nearest_indices(n, m) if n != m else np.arange(n), return_inverse=True)
        stack = np.moveaxis(_to_numpy(probs), 1 + ax, 1)  # (K, slices, in-plane...), a view
        labels, best = argmax_of_resized_slices(stack, needed, _plane(crop_shape, ax), with_confidence)
        labels = np.moveaxis(np.take(labels, gather, axis=0), 0, ax)
        best = np.moveaxis(np.take(best, gather, axis=0), 0, ax) if with_confidence else None
    else:
        labels, best = _running_argmax(probs, state, crop_shape)
    label_img = _cropped_to_input(labels, state)
    if not with_confidence:
        return label_img
    return label_img, _cropped_to_input(best, state, fill=0.0)


class SlabLabels:
    """`labels_to_input_grid` (and the quality module's network-grid labels and entropy) computed
    slab by slab, as `unetrpp.predict.predict_slabs` hands the probabilities over, so the whole
    (K, D, H, W) volume never exists at once.

    Only for the default export path (`SlabLabels.applies(state)`): a separate axis 0 (z) with
    nearest neighbour along it and bilinear in-plane, where every output slice is one network
    slice resized in-plane, so each slab gives its output slices exactly as the whole volume does
    (`argmax_of_resized_slices` per slice, the labels then spread along z). With `quality`
    (temperature, entropy step), also `quality.structures.uncertainty`'s labels and entropy (every
    step-th voxel, sampled at the same slices as on the whole volume)."""

    #: network slices per call of the quality module's `uncertainty` (rounded up to its step)
    CHUNK_SLICES = 4

    @staticmethod
    def applies(state: PreprocessState) -> bool:
        return state.separate_axis == 0 and state.separate_z_order == 0 and state.label_order == 1

    def __init__(self, state: PreprocessState, classes: int, *, with_confidence: bool = False,
                 quality: tuple[float, int] | None = None) -> None:
        if not self.applies(state):
            raise ValueError("slab-wise labels need a separate z axis with nearest neighbour along it")
        self.state = state
        self.with_confidence = with_confidence
        n = state.network_shape[0]
        crop_shape = _box_shape(state.crop_box)
        self.plane = _plane(crop_shape, 0)
        m = crop_shape[0]
        self.needed, self.gather = np.unique(nearest_indices(n, m) if n != m else np.arange(n), return_inverse=True)
        dtype = np.uint8 if classes <= 256 else np.uint16
        self.labels = np.zeros((len(self.needed), *self.plane), dtype=dtype)
        self.best = np.zeros((len(self.needed), *self.plane), dtype=np.float32) if with_confidence else None
        self.quality = quality
        if quality is not None:
            step = int(quality[1])
            self.net_labels = np.zeros(state.network_shape, dtype=dtype)
            self.entropy = np.zeros(tuple(-(-int(v) // step) for v in state.network_shape), dtype=np.float32)
        self.filled = 0

    def __call__(self, z0: int, slab: Any) -> None:
        """Slices z0 .. z0 + n of the probabilities (K, n, H, W) on the network grid."""
        p = _to_numpy(slab)
        n = int(p.shape[1])
        if z0 != self.filled:
            raise ValueError(f"slabs must come in order: expected slice {self.filled}, got {z0}")
        lo, hi = np.searchsorted(self.needed, [z0, z0 + n])
        if hi > lo:
            labels, best = argmax_of_resized_slices(p, self.needed[lo:hi] - z0, self.plane, self.with_confidence)
            self.labels[lo:hi] = labels
            if self.with_confidence:
                self.best[lo:hi] = best
        if self.quality is not None:
            from .quality.structures import uncertainty

            temperature, step = self.quality
            off = min((-z0) % step, n)  # the entropy is sampled at slices 0, step, 2 step, ... of the grid
            if off:
                self.net_labels[z0:z0 + off] = p[:, :off].argmax(0)
            chunk = step * -(-self.CHUNK_SLICES // step)  # a few slices at a time: small float32 temporaries
            for a in range(off, n, chunk):  # each chunk starts on a sampled slice: the same values
                b = min(n, a + chunk)
                labels, entropy = uncertainty(p[:, a:b], temperature, step)
                self.net_labels[z0 + a:z0 + b] = labels
                first = (z0 + a) // step
                self.entropy[first:first + entropy.shape[0]] = entropy
        self.filled = z0 + n

    def finish(self) -> tuple[Image, Image | None]:
        """(labelmap, confidence or None) on the first input's grid, as `labels_to_input_grid`."""
        if self.filled != self.state.network_shape[0]:
            raise ValueError(f"only {self.filled} of {self.state.network_shape[0]} slices were handed over")
        labels = np.take(self.labels, self.gather, axis=0)
        label_img = _cropped_to_input(labels, self.state)
        del labels
        confidence = None
        if self.with_confidence:
            confidence = _cropped_to_input(np.take(self.best, self.gather, axis=0), self.state, fill=0.0)
        return label_img, confidence

    def uncertainty_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, entropy) on the network grid, as `quality.structures.uncertainty` gives them."""
        np.clip(self.entropy, 0.0, 1.0, out=self.entropy)
        return self.net_labels, self.entropy


def _running_argmax(probs: Any, state: PreprocessState, crop_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every class resampled to the cropped grid in turn, with a running argmax (two full-size
    float channels in memory, not K)."""
    k = int(probs.shape[0])
    best = np.empty(crop_shape, dtype=np.float32)
    labels = np.zeros(crop_shape, dtype=np.uint8 if k <= 256 else np.uint16)
    channel = np.empty(crop_shape, dtype=np.float32)
    better = np.empty(crop_shape, dtype=bool)
    for c in range(k):
        target = best if c == 0 else channel
        resize(_to_numpy(probs[c]), crop_shape, state.label_order, state.separate_axis, state.separate_z_order, out=target)
        if c:
            np.greater(channel, best, out=better)
            np.copyto(best, channel, where=better)
            labels[better] = c
    return labels, best


def _plane(shape: Sequence[int], axis: int) -> tuple[int, int]:
    return tuple(int(n) for i, n in enumerate(shape) if i != axis)  # type: ignore[return-value]


def array_to_input_grid(array: Any, state: PreprocessState, order: int = 1, fill: float = 0.0) -> Image:
    """One array (D, H, W) on the network grid -> float32 `Image` on the first input's grid."""
    a = _to_numpy(array)
    if tuple(a.shape) != tuple(state.network_shape):
        raise ValueError(f"array of shape {a.shape} does not match the network grid {state.network_shape}")
    cropped = resize(a, _box_shape(state.crop_box), order, state.separate_axis, state.separate_z_order)
    return _cropped_to_input(cropped, state, fill=fill)
