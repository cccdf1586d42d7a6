"""Preprocess one training case (images + label) with a plan, the way inference preprocesses inputs.

When the engine's `unetrpp.preprocess` is available its forward transform is used for the images
(so training and inference cannot drift apart) and the label is brought onto the same grid;
otherwise an equivalent implementation here follows the same plan fields:
crop to the non-zero region, resample to `target_spacing` (images: order `image_order`, labels:
linear interpolation of each label's mask, `label_order`), normalise per input.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)


def _spacing_zyx(image: Any) -> np.ndarray:
    return np.asarray(image.GetSpacing()[::-1], dtype=float)


def nonzero_bbox(arrays: Sequence[np.ndarray]) -> tuple[slice, slice, slice]:
    mask = np.zeros(arrays[0].shape, dtype=bool)
    for a in arrays:
        mask |= a != 0
    if not mask.any():
        return tuple(slice(0, s) for s in arrays[0].shape)  # type: ignore[return-value]
    mask = ndimage.binary_fill_holes(mask)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def target_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(int(round(s * sp / t)), 1) for s, sp, t in zip(shape, spacing, target))


def resample_image(array: np.ndarray, new_shape: Sequence[int], order: int, spacing: Sequence[float],
                   anisotropy_threshold: float = 3.0, separate_z_order: int = 0) -> np.ndarray:
    if tuple(array.shape) == tuple(new_shape):
        return array.astype(np.float32)
    spacing = np.asarray(spacing, dtype=float)
    if spacing.max() / spacing.min() > anisotropy_threshold:
        # nnU-Net: resample in-plane with `order`, the low-resolution axis separately.
        axis = int(np.argmax(spacing))
        inplane = list(new_shape)
        inplane[axis] = array.shape[axis]
        zoom1 = [n / s for n, s in zip(inplane, array.shape)]
        tmp = ndimage.zoom(array.astype(np.float32), zoom1, order=order, mode="nearest", grid_mode=True)
        zoom2 = [n / s for n, s in zip(new_shape, tmp.shape)]
        return ndimage.zoom(tmp, zoom2, order=separate_z_order, mode="nearest", grid_mode=True).astype(np.float32)
    zoom = [n / s for n, s in zip(new_shape, array.shape)]
    return ndimage.zoom(array.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True).astype(np.float32)


def resample_label(label: np.ndarray, new_shape: Sequence[int], order: int = 1) -> np.ndarray:
    if tuple(label.shape) == tuple(new_shape):
        return label
    values = [v for v in np.unique(label) if v != 0]
    out = np.zeros(new_shape, dtype=label.dtype)
    best = np.full(new_shape, 0.5, dtype=np.float32)
    zoom = [n / s for n, s in zip(new_shape, label.shape)]
    for v in values:
        m = ndimage.zoom((label == v).astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
        take = m > best
        out[take] = v
        best[take] = m[take]
    return out


def normalise(array: np.ndarray, norm: dict[str, Any], mask: np.ndarray | None = None) -> np.ndarray:
    scheme = norm.get("scheme", "none")
    a = array.astype(np.float32)
    if scheme == "ct":
        lo, hi = norm["clip"]
        return ((np.clip(a, lo, hi) - norm["mean"]) / max(norm["std"], 1e-8)).astype(np.float32)
    if scheme == "zscore":
        if norm.get("nonzero_mask") and mask is not None and mask.any():
            vals = a[mask]
            out = np.zeros_like(a)
            out[mask] = (vals - vals.mean()) / max(vals.std(), 1e-8)
            return out
        return ((a - a.mean()) / max(float(a.std()), 1e-8)).astype(np.float32)
    return a


def _engine_manifest(plan: dict[str, Any]) -> Any:
    """A minimal valid manifest carrying the plan and inputs, for the engine's preprocessing."""
    from unetrpp.manifest import Manifest

    return Manifest({
        "schema_version": 1, "name": "training-preprocessing", "version": "0.0.0", "license": "n/a",
        "architecture": {"variant": "custom", "in_channels": len(plan["inputs"]), "out_channels": 2,
                         "patch_size": [16, 32, 32], "stem_kernel": [2, 4, 4]},
        "inputs": plan["inputs"], "plan": plan["plan"],
        "labels": [{"value": 1, "name": "foreground", "color": [255, 0, 0]}],
        "inference": {}, "provenance": {"source": "training"},
        "weights": {"file": "weights.safetensors", "sha256": "0" * 64},
    })


def _engine_preprocess(images: Sequence[Any], label: Any, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The engine's forward transform (the one inference uses) for the images; each label's mask
    goes through the same geometric transform with the plan's label order, then argmax."""
    import SimpleITK as sitk
    from unetrpp import preprocess as engine
    from unetrpp.image import Image

    manifest = _engine_manifest(plan)
    named = {}
    for spec, img in zip(manifest.inputs, images):
        named[spec.name] = Image(sitk.GetArrayFromImage(img), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                                 np.asarray(img.GetDirection(), dtype=float).reshape(3, 3))
    array, state = engine.preprocess(named, manifest)
    lab = sitk.GetArrayFromImage(label)
    out = np.zeros(array.shape[1:], dtype=np.uint8 if lab.max() < 256 else np.int16)
    if not state.resampled:
        return array, engine.forward_array(lab.astype(np.float32), state, order=0).round().astype(out.dtype)
    best = np.full(out.shape, 0.5, dtype=np.float32)
    for v in (int(v) for v in np.unique(lab) if v != 0):
        m = engine.forward_array((lab == v).astype(np.float32), state, order=state.label_order)
        take = m > best
        out[take] = v
        best[take] = m[take]
    return array, out


def preprocess_training_case(images: Sequence[Any], label: Any, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """images: SimpleITK images (one per input, same grid); label: SimpleITK image.
    Returns (C, D, H, W) float32 and (D, H, W) label array on the plan's grid."""
    import SimpleITK as sitk

    try:
        import unetrpp.preprocess  # noqa: F401
    except ImportError:
        log.warning("unetrpp.preprocess is not available: using the training package's own preprocessing")
    else:
        return _engine_preprocess(images, label, plan)

    p = plan["plan"]
    inputs = plan["inputs"]
    arrays = [sitk.GetArrayFromImage(i).astype(np.float32) for i in images]
    arrays = [np.nan_to_num(a, nan=0.0) for a in arrays]
    lab = sitk.GetArrayFromImage(label)
    lab = lab.astype(np.uint8 if lab.max() < 256 else np.int16)
    if p.get("orientation"):
        log.warning("plan orientation %s is not applied by the training preprocessing fallback", p["orientation"])
    if p.get("crop_to_nonzero", True):
        box = nonzero_bbox(arrays)
        arrays = [a[box] for a in arrays]
        lab = lab[box]
    spacing = _spacing_zyx(images[0])
    new_shape = target_shape(arrays[0].shape, spacing, p["target_spacing"])
    nonzero = [a != 0 for a in arrays]
    out = []
    for a, m, inp in zip(arrays, nonzero, inputs):
        norm = inp["normalization"]
        if norm.get("scheme") == "zscore":  # nnU-Net normalises MRI before resampling
            a = normalise(a, norm, m)
            out.append(resample_image(a, new_shape, p.get("image_order", 3), spacing,
                                      p.get("anisotropy_threshold", 3.0), p.get("separate_z_order", 0)))
        else:
            a = resample_image(a, new_shape, p.get("image_order", 3), spacing,
                               p.get("anisotropy_threshold", 3.0), p.get("separate_z_order", 0))
            out.append(normalise(a, norm))
    lab = resample_label(lab, new_shape, p.get("label_order", 1))
    return np.stack(out).astype(np.float32), lab
