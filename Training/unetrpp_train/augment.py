"""nnU-Net-style augmentation of one training patch, built from MONAI transforms.

Every random decision is drawn from a seed derived from the sample's global index, so a patch is
the same whatever worker process makes it, and a resumed run sees exactly the batches the
uninterrupted run would have seen.

Order (as nnU-Net's "moreDA" pipeline): spatial (rotation, scaling, optional elastic deformation;
the sampled region is larger than the patch so rotated corners hold data), Gaussian noise,
Gaussian blur, brightness (multiplicative), contrast, low-resolution simulation, inverted gamma,
gamma, mirroring.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch
from monai.transforms import (
    Affine,
    Rand3DElastic,
    RandAdjustContrast,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    RandSimulateLowResolution,
)

from .config import AugmentConfig

Triple = tuple[int, int, int]


def _plain(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """MONAI returns MetaTensors; training wants plain tensors."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(x)


def sampling_size(patch: Sequence[int], aug: AugmentConfig) -> Triple:
    """Size of the region cut from the volume before the spatial transform: large enough that the
    patch, rotated by the largest angles and shrunk by the smallest scale, stays inside it
    (nnU-Net's "basic generator patch size")."""
    patch = np.asarray(patch, dtype=float)
    if not aug.enabled or (aug.rotation_prob <= 0 and aug.scale_prob <= 0 and aug.elastic_prob <= 0):
        return tuple(int(p) for p in patch)  # type: ignore[return-value]
    half = patch / 2
    extent = half.copy()
    angles = [math.radians(a) for a in aug.rotation_deg] if aug.rotation_prob > 0 else [0.0, 0.0, 0.0]
    for signs in itertools.product((-1, 1), repeat=3):
        corner = half * np.asarray(signs)
        for a0, a1, a2 in itertools.product(*[np.linspace(-a, a, 9) for a in angles]):
            r = _rotation_matrix(a0, a1, a2)
            extent = np.maximum(extent, np.abs(r @ corner))
    # A scale factor s > 1 samples a region s times the patch (zoom out), as in batchgenerators.
    max_scale = max(max(aug.scale_range), 1.0) if aug.scale_prob > 0 else 1.0
    size = np.ceil(2 * extent * max_scale).astype(int)
    size = np.minimum(size, np.ceil(patch * 2.5).astype(int))
    return tuple(int(max(s, p)) for s, p in zip(size, patch))  # type: ignore[return-value]


def _rotation_matrix(a0: float, a1: float, a2: float) -> np.ndarray:
    c0, s0, c1, s1, c2, s2 = math.cos(a0), math.sin(a0), math.cos(a1), math.sin(a1), math.cos(a2), math.sin(a2)
    r0 = np.array([[1, 0, 0], [0, c0, -s0], [0, s0, c0]])
    r1 = np.array([[c1, 0, s1], [0, 1, 0], [-s1, 0, c1]])
    r2 = np.array([[c2, -s2, 0], [s2, c2, 0], [0, 0, 1]])
    return r2 @ r1 @ r0


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    starts = [(s - p) // 2 for s, p in zip(x.shape[1:], size)]
    return x[:, starts[0]:starts[0] + size[0], starts[1]:starts[1] + size[1], starts[2]:starts[2] + size[2]]


class Augmenter:
    """Callable: (image (C, *region), label (1, *region), seed) -> (image (C, *patch), label (1, *patch))."""

    def __init__(self, patch: Sequence[int], cfg: AugmentConfig) -> None:
        self.patch: Triple = tuple(int(p) for p in patch)  # type: ignore[assignment]
        self.cfg = cfg
        lo_b, hi_b = cfg.brightness_range
        lo_c, hi_c = cfg.contrast_range
        self.intensity = [
            RandGaussianNoise(prob=cfg.noise_prob, mean=0.0, std=math.sqrt(cfg.noise_variance), sample_std=True),
            RandGaussianSmooth(sigma_x=cfg.blur_sigma, sigma_y=cfg.blur_sigma, sigma_z=cfg.blur_sigma, prob=cfg.blur_prob),
            RandScaleIntensity(factors=(lo_b - 1.0, hi_b - 1.0), prob=cfg.brightness_prob),
            RandScaleIntensityFixedMean(prob=cfg.contrast_prob, factors=(lo_c - 1.0, hi_c - 1.0), preserve_range=True),
            RandSimulateLowResolution(prob=cfg.lowres_prob, zoom_range=cfg.lowres_zoom),
            RandAdjustContrast(prob=cfg.gamma_inverted_prob, gamma=cfg.gamma_range, invert_image=True, retain_stats=True),
            RandAdjustContrast(prob=cfg.gamma_prob, gamma=cfg.gamma_range, invert_image=False, retain_stats=True),
        ]

    def __call__(self, image: torch.Tensor, label: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if not cfg.enabled:
            return center_crop(image, self.patch), center_crop(label, self.patch)
        rng = np.random.default_rng(seed)
        image, label = self._spatial(image, label, rng)
        # Intensity transforms act on each channel independently, as in nnU-Net.
        channels = []
        for c in range(image.shape[0]):
            x = image[c:c + 1]
            for t in self.intensity:
                t.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
                x = _plain(t(x))
            channels.append(x)
        image = torch.cat(channels, 0)
        flips = [ax + 1 for ax in cfg.mirror_axes if rng.random() < cfg.mirror_prob]
        if flips:
            image = torch.flip(image, flips)
            label = torch.flip(label, flips)
        return image.contiguous().float(), label.contiguous()

    def _spatial(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rotate = rng.random() < cfg.rotation_prob
        scale = rng.random() < cfg.scale_prob
        elastic = rng.random() < cfg.elastic_prob
        angles = [float(rng.uniform(-math.radians(a), math.radians(a))) if rotate else 0.0 for a in cfg.rotation_deg]
        factor = float(rng.uniform(*cfg.scale_range)) if scale else 1.0
        if elastic:
            seed = int(rng.integers(0, 2**31 - 1))
            out = []
            for x, mode in ((image, "bilinear"), (label, "nearest")):
                t = Rand3DElastic(
                    sigma_range=cfg.elastic_sigma, magnitude_range=cfg.elastic_magnitude, prob=1.0,
                    rotate_range=[(a, a) for a in angles], scale_range=[(factor - 1, factor - 1)] * 3,
                    spatial_size=self.patch, mode=mode, padding_mode="zeros",
                )
                t.set_random_state(seed=seed)  # same deformation field for image and label
                out.append(_plain(t(x)))
            return out[0], out[1]
        if not (rotate or scale):
            return center_crop(image, self.patch), center_crop(label, self.patch)
        kwargs = dict(rotate_params=angles, scale_params=[factor] * 3, spatial_size=self.patch, padding_mode="zeros")
        image = _plain(Affine(mode="bilinear", **kwargs)(image)[0])
        label = _plain(Affine(mode="nearest", **kwargs)(label)[0])
        return image, label
