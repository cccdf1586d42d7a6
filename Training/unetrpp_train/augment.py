"""nnU-Net v1 "moreDA" augmentation of one training sample, as the official UNETR++ trainers run it.

The official pipeline (unetr_pp/training/data_augmentation/data_augmentation_moreDA.py:45-111 @ dcba1c6) is a
list of batchgenerators 0.21 transforms; each function below re-states one of them for one sample (the
batchgenerators function it follows is named in its docstring), with the same probabilities, ranges and
per-channel decisions, in the same order:

  spatial (rotation, scaling, elastic; cubic image / linear per-label interpolation), Gaussian noise,
  Gaussian blur, multiplicative brightness, contrast, low-resolution simulation, inverted gamma, gamma,
  mirroring.

With `dummy_2d` (the plan's do_dummy_2D_data_aug, data_augmentation_moreDA.py:54-75) the spatial transform
works on each z slice in 2-D (rotation in-plane, scaling in-plane) and the low-resolution simulation leaves z
alone (ignore_axes).

Randomness: every decision is drawn from a numpy Generator seeded from the sample's global index (instead
of the global numpy state the official worker threads share), so a patch is the same whatever worker
process makes it and a resumed run sees exactly the batches of the uninterrupted run. The distributions are
the official ones; the random streams are not.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from .config import AugmentConfig

Triple = tuple[int, int, int]


# Sizes ----------------------------------------------------------------------------------------
def _rotation_x(a: float) -> np.ndarray:
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def _rotation_y(a: float) -> np.ndarray:
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _rotation_z(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def _rotation_2d(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _rotate(coords: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """batchgenerators rotate_coords_3d/_2d: coords (dims, *shape) times the rotation matrix."""
    return np.dot(coords.reshape(len(coords), -1).T, matrix).T.reshape(coords.shape)


def _official_patch_size(final: Sequence[int], angles_rad: Sequence[float], scale_range: Sequence[float]) -> np.ndarray:
    """default_data_augmentation.py:107-127 get_patch_size: the patch vector rotated about each axis alone by
    the largest angle (capped at 90 deg), the element-wise maximum, divided by the smallest scale."""
    coords = np.asarray(final, dtype=float)
    shape = coords.copy()
    caps = [min(math.pi / 2, abs(a)) for a in angles_rad]
    if len(coords) == 3:
        for m in (_rotation_x(caps[0]), _rotation_y(caps[1]), _rotation_z(caps[2])):
            shape = np.maximum(shape, np.abs(coords @ m))
    else:
        shape = np.maximum(shape, np.abs(coords @ _rotation_2d(caps[0])))
    return (shape / min(scale_range)).astype(int)


def sampling_size(patch: Sequence[int], aug: AugmentConfig) -> Triple:
    """The region cut from the volume before the spatial transform (the official "basic generator patch
    size", unetr_pp_trainer_acdc.py:463-476): larger than the patch so rotated and scaled patches stay inside
    it. Computed with `sampling_scale_range` (0.85-1.25), as the official code does before it raises the
    scale range to 0.7-1.4."""
    patch = [int(p) for p in patch]
    if not aug.enabled:
        return tuple(patch)  # type: ignore[return-value]
    angles = [math.radians(a) for a in aug.rotation_deg]
    if aug.dummy_2d:
        inplane = _official_patch_size(patch[1:], angles[:1], aug.sampling_scale_range)
        return (patch[0], int(inplane[0]), int(inplane[1]))
    return tuple(int(s) for s in _official_patch_size(patch, angles, aug.sampling_scale_range))  # type: ignore[return-value]


def center_crop(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """batchgenerators center_crop_aug: start (shape - size) // 2 on each spatial axis of (C, *spatial)."""
    starts = [(s - p) // 2 for s, p in zip(x.shape[1:], size)]
    return x[(slice(None),) + tuple(slice(a, a + p) for a, p in zip(starts, size))]


def _uniform_around_one(rng: np.random.Generator, lo: float, hi: float) -> float:
    """batchgenerators' rule for scale, contrast and gamma: half of the draws below 1, half above."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


def _draw(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(lo) if lo == hi else float(rng.uniform(lo, hi))


# Spatial --------------------------------------------------------------------------------------
def _interpolate_label(label: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """batchgenerators interpolate_img(is_seg=True, order 1): each label linearly, kept where >= 0.5; outside
    the sampled region the border value -1, which RemoveLabelTransform(-1, 0) turns into background."""
    out = np.zeros(coords.shape[1:], dtype=np.float32)
    for value in np.unique(label):
        hit = map_coordinates((label == value).astype(np.float32), coords, order=1, mode="constant", cval=-1.0)
        out[hit >= 0.5] = value
    return out


def spatial_transform(image: np.ndarray, label: np.ndarray, patch: Sequence[int], cfg: AugmentConfig,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """batchgenerators augment_spatial (SpatialTransform in data_augmentation_moreDA.py:60-72): elastic
    (p_el), rotation (p_rot, every axis), scaling (p_scale, one factor) of a zero-centred grid placed at the
    region's centre; image cubic with zeros outside, label linear per label; a plain centre crop otherwise.
    image (C, *region), label (1, *region) -> (C, *patch), (1, *patch)."""
    if cfg.dummy_2d:  # Convert3DTo2DTransform: (C, Z, Y, X) -> (C*Z, Y, X), a 2-D transform per slice
        c, z = image.shape[:2]
        img2, lab2 = spatial_transform_nd(image.reshape(c * z, *image.shape[2:]), label.reshape(z, *label.shape[2:]),
                                          patch[1:], cfg, rng)
        return img2.reshape(c, z, *img2.shape[1:]), lab2.reshape(1, z, *lab2.shape[1:])
    return spatial_transform_nd(image, label, patch, cfg, rng)


def spatial_transform_nd(image: np.ndarray, label: np.ndarray, patch: Sequence[int], cfg: AugmentConfig,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dims = len(patch)
    grids = np.meshgrid(*[np.arange(p, dtype=float) for p in patch], indexing="ij")
    coords = np.stack([g - (p - 1) / 2.0 for g, p in zip(grids, patch)])
    modified = False
    if rng.random() < cfg.elastic_prob:
        alpha, sigma = rng.uniform(*cfg.elastic_alpha), rng.uniform(*cfg.elastic_sigma)
        coords = coords + np.stack([gaussian_filter(rng.random(coords.shape[1:]) * 2 - 1, sigma, mode="constant") * alpha
                                    for _ in range(dims)])
        modified = True
    if rng.random() < cfg.rotation_prob:
        a = [math.radians(d) for d in cfg.rotation_deg]
        if dims == 3:
            ax, ay, az = (float(rng.uniform(-r, r)) for r in a)
            coords = _rotate(coords, _rotation_x(ax) @ _rotation_y(ay) @ _rotation_z(az))
        else:
            coords = _rotate(coords, _rotation_2d(float(rng.uniform(-a[0], a[0]))))
        modified = True
    if rng.random() < cfg.scale_prob:
        coords = coords * _uniform_around_one(rng, *cfg.scale_range)
        modified = True
    if not modified:
        return center_crop(image, patch), center_crop(label, patch)
    for d in range(dims):
        coords[d] += int(np.round(image.shape[d + 1] / 2.0))
    out = np.stack([map_coordinates(ch.astype(np.float32), coords, order=3, mode="constant", cval=0.0) for ch in image])
    lab = np.stack([_interpolate_label(ch, coords) for ch in label])
    return out.astype(np.float32), lab


# Intensity ------------------------------------------------------------------------------------
def gaussian_noise(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """augment_gaussian_noise: sigma ~ U(noise_sigma), one per sample (batchgenerators calls it a variance
    but uses it as the standard deviation)."""
    sigma = _draw(rng, *cfg.noise_sigma)
    return x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)


def gaussian_blur(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """augment_gaussian_blur: each channel with p_per_channel, one sigma for all axes drawn per channel."""
    for c in range(x.shape[0]):
        if rng.random() <= cfg.blur_p_per_channel:
            x[c] = gaussian_filter(x[c], _draw(rng, *cfg.blur_sigma), order=0)
    return x


def brightness(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """augment_brightness_multiplicative(per_channel=True): one factor per channel."""
    for c in range(x.shape[0]):
        x[c] *= rng.uniform(*cfg.brightness_range)
    return x


def contrast(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """augment_contrast(preserve_range=True, per_channel=True)."""
    for c in range(x.shape[0]):
        mean, lo, hi = x[c].mean(), x[c].min(), x[c].max()
        factor = _uniform_around_one(rng, *cfg.contrast_range)
        x[c] = np.clip((x[c] - mean) * factor + mean, lo, hi)
    return x


def _resize(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    # skimage.transform.resize(mode="edge", anti_aliasing=False) maps pixel areas (grid_mode) with edge padding
    return zoom(x, [t / s for t, s in zip(shape, x.shape)], order=order, mode="nearest", grid_mode=True)


def low_resolution(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """augment_linear_downsampling_scipy(per_channel, p_per_channel, order_downsample 0, order_upsample 3,
    ignore_axes (z) in dummy 2D)."""
    shape = np.asarray(x.shape[1:])
    for c in range(x.shape[0]):
        if rng.random() < cfg.lowres_p_per_channel:
            target = np.round(shape * rng.uniform(*cfg.lowres_zoom)).astype(int)
            if cfg.dummy_2d:
                target[0] = shape[0]
            small = _resize(x[c].astype(np.float64), target, order=0)
            x[c] = _resize(small, shape, order=3)
    return x


def gamma(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, invert: bool) -> np.ndarray:
    """augment_gamma(per_channel=True, retain_stats=True), optionally on the inverted image."""
    eps = 1e-7
    if invert:
        x = -x
    for c in range(x.shape[0]):
        mean, sd = x[c].mean(), x[c].std()
        g = _uniform_around_one(rng, *cfg.gamma_range)
        lo = x[c].min()
        span = float(x[c].max() - lo)
        y = np.power((x[c] - lo) / (span + eps), g) * (span + eps) + lo
        y = y - y.mean() + mean
        x[c] = y / (y.std() + 1e-8) * sd
    return -x if invert else x


class Augmenter:
    """Callable: (image (C, *region), label (1, *region), seed) -> (image (C, *patch), label (1, *patch))."""

    def __init__(self, patch: Sequence[int], cfg: AugmentConfig) -> None:
        self.patch: Triple = tuple(int(p) for p in patch)  # type: ignore[assignment]
        self.cfg = cfg

    def __call__(self, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        img = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        lab = label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        if not cfg.enabled:
            return torch.from_numpy(np.ascontiguousarray(center_crop(img, self.patch))).float(), \
                torch.from_numpy(np.ascontiguousarray(center_crop(lab, self.patch)))
        rng = np.random.default_rng(seed)
        img, lab = spatial_transform(img, lab, self.patch, cfg, rng)
        img = np.array(img, dtype=np.float32)  # a writable copy the intensity transforms change in place
        if rng.random() < cfg.noise_prob:
            img = gaussian_noise(img, cfg, rng)
        if rng.random() < cfg.blur_prob:
            img = gaussian_blur(img, cfg, rng)
        if rng.random() < cfg.brightness_prob:
            img = brightness(img, cfg, rng)
        if rng.random() < cfg.contrast_prob:
            img = contrast(img, cfg, rng)
        if rng.random() < cfg.lowres_prob:
            img = low_resolution(img, cfg, rng)
        if rng.random() < cfg.gamma_inverted_prob:
            img = gamma(img, cfg, rng, invert=True)
        if rng.random() < cfg.gamma_prob:
            img = gamma(img, cfg, rng, invert=False)
        flips = [ax + 1 for ax in cfg.mirror_axes if rng.random() < cfg.mirror_prob]
        if flips:
            img = np.flip(img, flips)
            lab = np.flip(lab, flips)
        return (torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32)))
