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
from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse

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


# skimage 0.18.1 `warp` interpolation, one axis at a time ------------------------------------------
@lru_cache(maxsize=64)
def interpolation_matrix(n_in: int, n_out: int, order: int) -> sparse.csr_matrix:
    """(n_out, n_in) sparse matrix of skimage 0.18.1's `warp` kernel along one axis: the taps of
    each output sample (indices clamped to the edge, as mode "edge") and their weights.

    order 0: nearest (C round(), half away from zero); order 1: bilinear, taps floor and ceil with
    weights 1 - t and t; order 3: Keys cubic convolution (a = -0.5), taps floor-1 .. floor+2.
    A row's products are summed in tap order from 0, so order 0 and 1 give skimage's float64
    values bit for bit (its `(1 - t) * f(floor) + t * f(ceil)`; ties at 0.5 included); order 3
    agrees with skimage's Horner form to ~1e-15 relative."""
    x = pixel_centres(n_in, n_out)
    lo = np.floor(x)
    t = x - lo
    if order == 0:
        taps, weights = [lo + (t >= 0.5)], [np.ones(n_out)]
    elif order == 1:
        taps, weights = [lo, np.ceil(x)], [1 - t, t]
    elif order == 3:
        t2, t3 = t * t, t * t * t
        taps = [lo - 1, lo, lo + 1, lo + 2]
        weights = [(-t3 + 2 * t2 - t) / 2, (3 * t3 - 5 * t2 + 2) / 2, (-3 * t3 + 4 * t2 + t) / 2, (t3 - t2) / 2]
    else:
        raise ValueError(f"interpolation order {order} is not supported for 2-D resizing (use 0, 1 or 3)")
    k = len(taps)
    indices = np.clip(np.stack(taps, axis=1), 0, n_in - 1).astype(np.int64).ravel()
    # duplicate column indices (clamped edges) are kept: each tap is its own product, as in skimage
    return sparse.csr_matrix((np.stack(weights, axis=1).ravel(), indices, np.arange(0, k * n_out + 1, k)),
                             shape=(n_out, n_in))


def _warp_stack(stack: np.ndarray, plane_shape: Sequence[int], order: int) -> np.ndarray:
    """A stack of 2-D slices (B, H, W) resized in-plane as skimage 0.18.1 `warp` does each slice
    (columns first, then rows), float64, not clipped. An axis that keeps its size is left as it is
    (identity coordinates: every kernel returns the sample itself)."""
    nb, n_h, n_w = stack.shape
    h, w = (int(n) for n in plane_shape)
    cols = interpolation_matrix(n_w, w, order) if w != n_w else None
    rows = interpolation_matrix(n_h, h, order) if h != n_h else None
    out = np.empty((nb, h, w), dtype=np.float64)
    for b in range(nb):  # slice by slice: the transposes stay in the cache
        a = np.asarray(stack[b], dtype=np.float64)
        if cols is not None:  # (w, W) @ (W, H) -> (w, H)
            a = (cols @ np.ascontiguousarray(a.T)).T
        if rows is not None:  # (h, H) @ (H, w)
            a = rows @ np.ascontiguousarray(a)
        out[b] = a
    return out


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
    """`map_coordinates(x, pixel-centre grid, order, mode="nearest")` in float64 (order <= 1: no
    prefilter, so slabs of output rows give exactly the single call's values) in bounded memory:
    each slab reads only the input rows its taps reach (floor .. floor + 1, clamped to the array as
    mode "nearest" does), shifted by a whole number of rows (exact in float64: the same taps and
    weights), as float64."""
    axes = [pixel_centres(n, m) for n, m in zip(x.shape, new_shape)]
    per = int(np.prod(new_shape[1:]))
    n0 = x.shape[0]
    for b in _batches(new_shape[0], 4 * per):
        rows = axes[0][b]
        r0 = int(min(max(np.floor(rows.min()), 0), n0 - 1))
        r1 = int(min(max(np.floor(rows.max()) + 1, 0), n0 - 1))
        part = np.asarray(x[r0:r1 + 1], dtype=np.float64)
        grid = np.array(np.meshgrid(rows - r0, *axes[1:], indexing="ij"))
        out[b] = ndimage.map_coordinates(part, grid, order=order, mode="nearest")


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
        if order <= 1 and x.ndim == 3 and new_shape[2] != x.shape[2] and x.dtype in (np.float16, np.float32) \
                and out.dtype == np.float32:
            # skimage's map_coordinates path straight into float32, slab by slab: no float64 copy of
            # the input or the result (a full CT's class: 0.3 + 0.6 GB). The same values: each slab
            # of output rows reads only the input rows it needs (order <= 1: no prefilter), and the
            # clip to the input's range commutes with the float32 rounding (the bounds are float32).
            lo, hi = x.min(), x.max()
            _map_coordinates_slabs(x, new_shape, order, out)
            np.clip(out, lo, hi, out=out)
            return out
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


# The export's resampling + argmax, fast -------------------------------------------------------------
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = pixel_centres(n_in, n_out)
    lo = np.floor(x)
    return (np.clip(lo, 0, n_in - 1).astype(np.intp), np.clip(np.ceil(x), 0, n_in - 1).astype(np.intp), x - lo)


def _argmax_and_max(values: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """argmax (ties to the lower index) and max over the first axis, one comparison per class
    (numpy's argmax over a non-contiguous first axis is several times slower)."""
    best = values[0].copy()
    labels = np.zeros(best.shape, dtype=dtype)
    better = np.empty(best.shape, dtype=bool)
    for c in range(1, values.shape[0]):
        np.greater(values[c], best, out=better)
        np.copyto(labels, c, where=better)
        np.maximum(best, values[c], out=best)
    return labels, best


def argmax_of_resized_slices(probs: np.ndarray, slices: Sequence[int], plane_shape: Sequence[int],
                             with_confidence: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (argmax over classes, ties to the lower class) and, optionally, confidence (the
    maximum) of the slices `slices` of class probabilities `probs` (K, B, H, W) after resizing every
    class's slice to `plane_shape` with order 1 (skimage's bilinear `warp`, as the official export).

    Bilinear interpolation is a convex combination of the 2 x 2 input pixels around each output
    pixel; where those pixels all have the same argmax c, every class's interpolated value is the
    same combination, so c stays the argmax (ties still to the lower class) and the confidence is
    the interpolated per-pixel maximum. Only output pixels whose input neighbours disagree need
    every class interpolated: the result is the K resizes' argmax at a fraction of their cost."""
    k, _, n_h, n_w = probs.shape
    nb = len(slices)
    h, w = (int(n) for n in plane_shape)
    r0, r1, ty = _linear_taps(n_h, h)
    c0, c1, tx = _linear_taps(n_w, w)
    dtype = np.uint8 if k <= 256 else np.uint16
    labels = np.empty((nb, h, w), dtype=dtype)
    confidence = np.empty((nb, h, w), dtype=np.float32) if with_confidence else None
    for b, index in enumerate(slices):
        p = np.asarray(probs[:, index])
        net_labels, _ = _argmax_and_max(p, dtype)
        across = np.minimum(net_labels[:, c0], net_labels[:, c1]), np.maximum(net_labels[:, c0], net_labels[:, c1])
        low = np.minimum(across[0][r0], across[0][r1])
        high = np.maximum(across[1][r0], across[1][r1])
        rows, cols = np.nonzero(low != high)
        if len(rows) > h * w // 4:  # fragmented labels: resizing every class whole is cheaper
            labels[b], best = _argmax_and_max(resize_slices(p, (h, w), 1, np.empty((k, h, w), np.float32)), dtype)
            if with_confidence:
                confidence[b] = best
            continue
        labels[b] = low
        if with_confidence:
            resize_slices(p.max(axis=0)[None], (h, w), 1, confidence[b:b + 1])
        for part in range(0, len(rows), BATCH_ELEMENTS // k):
            i, j = rows[part:part + BATCH_ELEMENTS // k], cols[part:part + BATCH_ELEMENTS // k]
            wy, wx = ty[i], tx[j]
            # skimage's bilinear_interpolation: along the row first, then between the two rows
            top = (1 - wx) * p[:, r0[i], c0[j]].astype(np.float64) + wx * p[:, r0[i], c1[j]]
            bottom = (1 - wx) * p[:, r1[i], c0[j]].astype(np.float64) + wx * p[:, r1[i], c1[j]]
            labels[b, i, j], best = _argmax_and_max((1 - wy) * top + wy * bottom, dtype)
            if with_confidence:
                confidence[b, i, j] = best
    return labels, confidence
