"""Resampling exactly as the official UNETR++ code does it in its pinned environment, with numpy/scipy.

The official preprocessing (unetr_pp/preprocessing/preprocessing.py:112-201, `resample_data_or_seg`)
and export (unetr_pp/inference/segmentation_export.py:104) call scikit-image 0.18.1's `resize` and
batchgenerators 0.21's `resize_segmentation`; the official requirements.txt pins those versions, and
what they compute differs from later scikit-image (0.19 replaced `resize` by `scipy.ndimage.zoom`).
This module reproduces the pinned behaviour (measured: network input identical to the official one,
`Testing/engine/test_pipeline_parity.py`):

* `skimage_resize(x, shape, order)` = skimage 0.18.1 `resize(x, shape, order, mode="edge",
  anti_aliasing=False)` with its default `clip=True`, in float64:
  - a 2-D array, or a 3-D array whose last axis keeps its size (0.18.1 sends those through `warp`):
    separable interpolation at pixel centres x = (n_in / n_out)(i + 0.5) - 0.5 with sample indices
    clamped to the edge and no prefilter: order 3 = Keys cubic convolution (a = -0.5), order 1 =
    bilinear, order 0 = nearest (round half away from zero); evaluated with skimage's own formulas
    (columns first, then rows), so float64 ties come out the same;
  - any other 3-D array: `scipy.ndimage.map_coordinates(order, mode="nearest")` at the same
    coordinates (order 3: a cubic B-spline with prefilter);
  - the result clipped to the [min, max] of the array that was resized.
* `skimage_resize_segmentation(seg, shape, order=1)` = batchgenerators 0.21 `resize_segmentation`:
  for each value in ascending order, its indicator resized as above and the value written where the
  result is >= 0.5 (later values overwrite), starting from an all-zero map.
* `resample(x, shape, order, axis, order_z)` / `resample_segmentation(...)` = `resample_data_or_seg`
  for one channel: with a separate (low-resolution) `axis`, every slice across it is resized in-plane
  as a 2-D array, then that axis alone with `map_coordinates(order_z, mode="nearest")`.

Speed without changing a value: with order_z 0 every output slice is a copy of one in-plane-resized
input slice, so only the input slices the nearest-neighbour pass picks are resized (a 300-slice input
going to 30 slices resizes 30), and batches of slices are interpolated together in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

#: float64 elements per temporary array in a batch of slices (32 MB), which bounds the memory of
#: every interpolation here to a few hundred MB whatever the volume's size.
BATCH_ELEMENTS = 1 << 22


# Coordinates -------------------------------------------------------------------------------------
def pixel_centres(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinates of the output pixel centres, as skimage and nnU-Net compute them."""
    return (float(n_in) / n_out) * (np.arange(n_out) + 0.5) - 0.5


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """The input index `map_coordinates(order=0, mode="nearest")` takes for each output index
    (scipy rounds with floor(x + 0.5); mode "nearest" clamps to the edge)."""
    return np.clip(np.floor(pixel_centres(n_in, n_out) + 0.5), 0, n_in - 1).astype(np.intp)


# skimage 0.18.1 `warp` interpolation along one axis ------------------------------------------------
def _take(a: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    return np.take(a, np.clip(index, 0, a.shape[axis] - 1), axis=axis)


def _interpolate_axis(a: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """`a` (float64) interpolated along `axis` to `n_out` samples, with skimage's arithmetic."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a  # identity coordinates: every kernel returns the sample itself
    x = pixel_centres(n_in, n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    if order == 0:  # C round(): half away from zero (negative coordinates clamp to 0 anyway)
        lo = np.floor(x)
        return _take(a, (lo + (x - lo >= 0.5)).astype(np.intp), axis)
    lo = np.floor(x)
    t = (x - lo).reshape(shape)
    i0 = lo.astype(np.intp)
    if order == 1:  # skimage bilinear_interpolation: (1 - d) * f(floor) + d * f(ceil)
        return (1 - t) * _take(a, i0, axis) + t * _take(a, np.ceil(x).astype(np.intp), axis)
    if order == 3:  # skimage cubic_interpolation (Keys, a = -0.5) on samples floor-1 .. floor+2
        f0, f1, f2, f3 = (_take(a, i0 + k, axis) for k in (-1, 0, 1, 2))
        return f1 + 0.5 * t * (f2 - f0 + t * (2.0 * f0 - 5.0 * f1 + 4.0 * f2 - f3 + t * (3.0 * (f1 - f2) + f3 - f0)))
    raise ValueError(f"interpolation order {order} is not supported for 2-D resizing (use 0, 1 or 3)")


def _warp_stack(stack: np.ndarray, plane_shape: Sequence[int], order: int) -> np.ndarray:
    """A stack of 2-D slices (B, H, W) resized in-plane as skimage 0.18.1 `warp` does each slice
    (columns first, then rows), float64, not clipped."""
    a = np.asarray(stack, dtype=np.float64)
    a = _interpolate_axis(a, 2, int(plane_shape[1]), order)
    return _interpolate_axis(a, 1, int(plane_shape[0]), order)


def _batches(n: int, per_item: int) -> Iterator[slice]:
    step = max(1, BATCH_ELEMENTS // max(per_item, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def resize_slices(stack: np.ndarray, plane_shape: Sequence[int], order: int, out: np.ndarray) -> np.ndarray:
    """`skimage_resize` of every 2-D slice of `stack` (B, H, W) into `out` (B, h, w), each slice
    clipped to its own range (as the official separate-z loop resizes slice by slice)."""
    h, w = (int(s) for s in plane_shape)
    per = max(stack.shape[1], h) * max(stack.shape[2], w)
    for b in _batches(stack.shape[0], per):
        part = np.asarray(stack[b])
        r = _warp_stack(part, (h, w), order)
        if order != 0:
            np.clip(r, part.min(axis=(1, 2), keepdims=True), part.max(axis=(1, 2), keepdims=True), out=r)
        out[b] = r
    return out


# skimage 0.18.1 `resize` ----------------------------------------------------------------------------
def skimage_resize(x: np.ndarray, new_shape: Sequence[int], order: int, out: np.ndarray | None = None) -> np.ndarray:
    """scikit-image 0.18.1 `resize(x, new_shape, order, mode="edge", anti_aliasing=False)` (clip=True)
    of a 2-D or 3-D array; computed in float64, stored in `out` (default float64)."""
    new_shape = tuple(int(n) for n in new_shape)
    if out is None:
        out = np.empty(new_shape, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if x.ndim == 2:
        resize_slices(x[None], new_shape, order, out[None])
        return out
    if x.ndim != 3:
        raise ValueError(f"resize takes 2-D or 3-D arrays, not {x.ndim}-D")
    if new_shape[2] == x.shape[2]:
        # 0.18.1 treats the last axis as channels: each slice along it is warped in 2-D, and the
        # result is clipped to the whole array's range
        src = np.moveaxis(x, 2, 0)
        dst = np.moveaxis(out, 2, 0)
        per = max(x.shape[0], new_shape[0]) * max(x.shape[1], new_shape[1])
        for b in _batches(src.shape[0], per):
            dst[b] = _warp_stack(src[b], new_shape[:2], order)
    elif order > 1:
        # the spline prefilter needs the whole array: one call (zoom computes map_coordinates'
        # pixel-centre coordinates itself with grid_mode=True)
        ndimage.zoom(np.asarray(x, dtype=np.float64), [n / o for n, o in zip(new_shape, x.shape)], output=out,
                     order=order, mode="nearest", grid_mode=True)
    else:
        _map_coordinates_slabs(np.asarray(x, dtype=np.float64), new_shape, order, out)
    if order != 0:
        np.clip(out, lo, hi, out=out)
    return out


def _map_coordinates_slabs(x: np.ndarray, new_shape: tuple[int, ...], order: int, out: np.ndarray) -> None:
    """`map_coordinates(x, pixel-centre grid, order, mode="nearest")` (order <= 1: no prefilter, so
    slabs of output rows give exactly the single call's values) in bounded memory."""
    axes = [pixel_centres(n, m) for n, m in zip(x.shape, new_shape)]
    per = int(np.prod(new_shape[1:]))
    for b in _batches(new_shape[0], 4 * per):
        grid = np.array(np.meshgrid(axes[0][b], *axes[1:], indexing="ij"))
        tmp = ndimage.map_coordinates(x, grid, order=order, mode="nearest")
        out[b] = tmp


def skimage_resize_segmentation(seg: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """batchgenerators 0.21 `resize_segmentation(seg, new_shape, order)` (2-D or 3-D)."""
    new_shape = tuple(int(n) for n in new_shape)
    if order == 0:
        return skimage_resize(seg.astype(np.float64), new_shape, 0).astype(seg.dtype)
    out = np.zeros(new_shape, dtype=seg.dtype)
    tmp = np.empty(new_shape, dtype=np.float64)
    for value in np.unique(seg):
        skimage_resize((seg == value).astype(np.float64), new_shape, order, out=tmp)
        out[tmp >= 0.5] = value
    return out


# nnU-Net v1 `resample_data_or_seg`, one channel ----------------------------------------------------
def _plane_shape(shape: Sequence[int], axis: int) -> tuple[int, int]:
    return tuple(int(n) for i, n in enumerate(shape) if i != axis)  # type: ignore[return-value]


def resample(x: np.ndarray, new_shape: Sequence[int], order: int = 3, axis: int | None = None, order_z: int = 0,
             out: np.ndarray | None = None) -> np.ndarray:
    """One image channel as `resample_data_or_seg(is_seg=False)` resamples it (float32 result, the
    official `astype` of its float32 input). `axis`: the low-resolution axis resampled separately."""
    new_shape = tuple(int(n) for n in new_shape)
    if out is None:
        out = np.empty(new_shape, dtype=np.float32)
    if tuple(x.shape) == new_shape:
        out[...] = x
        return out
    if axis is None:
        if out.dtype == np.float64:
            return skimage_resize(x, new_shape, order, out=out)
        # the 3-D paths, in bounded memory: clip per the whole array as skimage does
        out[...] = skimage_resize(x, new_shape, order)
        return out
    src = np.moveaxis(x, axis, 0)
    dst = np.moveaxis(out, axis, 0)
    n, m = src.shape[0], new_shape[axis]
    plane = _plane_shape(new_shape, axis)
    if n == m:
        resize_slices(src, plane, order, dst)
        return out
    if order_z == 0:
        pick = nearest_indices(n, m)
        needed, where = np.unique(pick, return_inverse=True)
        mid = np.empty((len(needed), *plane), dtype=out.dtype)
        resize_slices(src[needed], plane, order, mid)
        np.take(mid, where, axis=0, out=dst)
        return out
    # another order along the axis (not the official default): map_coordinates over the whole
    # in-plane result, as the official code does
    mid = np.empty((n, *plane), dtype=np.float64)
    resize_slices(src, plane, order, mid)
    if order_z <= 1:
        _map_coordinates_slabs(mid, (m, *plane), order_z, dst)
    else:
        dst[...] = ndimage.zoom(mid, (m / n, 1, 1), order=order_z, mode="nearest", grid_mode=True)
    return out


def resample_segmentation(seg: np.ndarray, new_shape: Sequence[int], order: int = 1,
                          axis: int | None = None) -> np.ndarray:
    """A label map as `resample_data_or_seg(is_seg=True)` resamples it: `resize_segmentation` (each
    value's indicator, >= 0.5, ascending values overwrite), in-plane per slice with a separate `axis`,
    then nearest neighbour along it (the official order along z for maps is always 0)."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(seg.shape) == new_shape:
        return seg.copy()
    if axis is None:
        return skimage_resize_segmentation(seg, new_shape, order)
    src = np.moveaxis(seg, axis, 0)
    n, m = src.shape[0], new_shape[axis]
    plane = _plane_shape(new_shape, axis)
    pick = nearest_indices(n, m) if n != m else np.arange(n)
    needed, where = np.unique(pick, return_inverse=True)
    part = src[needed]
    tmp = np.empty((len(needed), *plane), dtype=np.float64)
    if order == 0:
        mid = resize_slices(part.astype(np.float64), plane, 0, tmp).astype(seg.dtype)
    else:
        mid = np.zeros((len(needed), *plane), dtype=seg.dtype)
        for value in np.unique(part):  # per slice, a value absent from it never reaches 0.5 there
            resize_slices((part == value).astype(np.float64), plane, order, tmp)
            mid[tmp >= 0.5] = value
    return np.moveaxis(np.take(mid, where, axis=0), 0, axis)
