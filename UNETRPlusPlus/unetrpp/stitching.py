"""Stitching the sliding windows' weighted probabilities into one volume (unetrpp.predict).

Three accumulators, one per memory regime; each takes the windows in the order
`predict_probabilities` runs them (z start outermost, as `itertools.product` of `window_starts`):

* `FullStitcher(float32)`: the official arithmetic, the default for every volume up to
  `predict.STITCH_FLOAT32_LIMIT` (all parity cases): a float32 (K, D, H, W) sum of
  probability x Gaussian and a float32 (D, H, W) sum of the Gaussians, divided at the end.
* `FullStitcher(float16)` (large volumes): the Gaussian spans ~1e-11..1 at a window's corners, beyond
  float16's range, so every window adds its probabilities x Gaussian already divided by the final
  sum of the Gaussians (each addend in [0, 1]); the buffer holds the final average.
* `SlabStitcher` (large volumes whose caller takes the result slab by slab, `predict_slabs`): the
  float16 arithmetic above, on a band of `patch[0]` z-slices instead of the whole volume. Once the
  windows move to a higher z start, the slices below it receive nothing more: they are handed to
  the caller's `consumer(z0, slab)` (a (K, n, H, W) float16 view, valid during the call) and the
  band moves up. A full abdominal CT (14 classes, 150 x 528 x 528, patch 64) holds 64 of its 150
  slices: 0.50 GB instead of 1.17 GB.

The normaliser (the sum of the overlapping Gaussians) of the float16 regimes is not stored per
voxel: nnU-Net's Gaussian is an impulse smoothed by `scipy.ndimage.gaussian_filter`, which filters
one axis after the other, so the map is the outer product of three 1-D Gaussians (after the
normalisation to a maximum of 1 as well; the official replacement of zeros by the smallest non-zero
value never applies for sigma = patch / 8, whose 4-sigma truncation radius reaches every voxel of
the patch); the windows' starts form a product grid, so the sum of the maps is the outer product of
three 1-D sums (`axis_normalisers`). Where the map is not separable (a smaller sigma scale with zeros
replaced) a per-voxel float32 normaliser is kept instead, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

Slices = tuple[slice, ...]
SlabConsumer = Callable[[int, torch.Tensor], None]


def window_slices(start: Sequence[int], below: Sequence[int], size: Sequence[int],
                  patch_size: Sequence[int]) -> tuple[Slices, Slices]:
    """For a window starting at `start` in the padded volume: the slices of the (unpadded)
    volume it covers, and the matching slices inside the window."""
    src, dst = [], []
    for s, b, n, p in zip(start, below, size, patch_size):
        lo, hi = s - b, s - b + p  # the window in volume coordinates
        a, e = max(lo, 0), min(hi, n)
        src.append(slice(a, e))
        dst.append(slice(a - lo, e - lo))
    return tuple(src), tuple(dst)


# The Gaussian as a product of three 1-D Gaussians -----------------------------------------------------
@lru_cache(maxsize=32)
def _gaussian_1d(p: int, sigma: float) -> np.ndarray:
    impulse = np.zeros(p, dtype=np.float64)
    impulse[p // 2] = 1.0
    g = ndimage.gaussian_filter1d(impulse, sigma, mode="constant", cval=0)
    g.setflags(write=False)
    return g


def gaussian_factors(patch_size: Sequence[int], sigma_scale: float) -> list[np.ndarray] | None:
    """Three float64 1-D Gaussians whose outer product is `predict.gaussian_importance_map`
    (before its float32 rounding), or None where it is not separable (a zero in the product, which
    the official map replaces by its smallest non-zero value)."""
    factors = []
    for p in patch_size:
        g = _gaussian_1d(int(p), float(p) * float(sigma_scale))
        factors.append(g / g.max())
    smallest = math.prod(float(f.min()) for f in factors)
    if not smallest > float(np.finfo(np.float32).tiny):
        return None
    return factors


def axis_normalisers(factors: Sequence[np.ndarray], starts: Sequence[Sequence[int]], below: Sequence[int],
                     size: Sequence[int], patch_size: Sequence[int]) -> list[np.ndarray]:
    """Per axis, the sum over that axis's window starts of the 1-D Gaussian (float64, over the
    unpadded volume): their outer product is the sum of every window's Gaussian, per voxel."""
    out = []
    for g, axis_starts, b, n, p in zip(factors, starts, below, size, patch_size):
        total = np.zeros(int(n), dtype=np.float64)
        for s in axis_starts:
            (src,), (dst,) = window_slices((s,), (b,), (n,), (p,))
            total[src] += g[dst]
        out.append(total)
    return out


def outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The outer product of three 1-D arrays, (len0, len1, len2)."""
    a, b, c = vectors
    return a[:, None, None] * b[None, :, None] * c[None, None, :]


class _Normaliser:
    """The sum of the windows' Gaussians, as 1-D factors when separable, else per voxel (float32)."""

    def __init__(self, gaussian: np.ndarray, factors: list[np.ndarray] | None, starts: list[tuple[int, ...]],
                 axis_starts: Sequence[Sequence[int]], below: Sequence[int], size: Sequence[int],
                 patch: Sequence[int]) -> None:
        self.axes = None if factors is None else axis_normalisers(factors, axis_starts, below, size, patch)
        self.voxels: torch.Tensor | None = None
        if self.axes is None:
            g = torch.from_numpy(np.array(gaussian))
            self.voxels = torch.zeros(tuple(size), dtype=torch.float32)
            for start in starts:
                src, dst = window_slices(start, below, size, patch)
                self.voxels[src] += g[dst]

    def at(self, src: Slices) -> torch.Tensor:
        """The normaliser over the volume region `src`, float32."""
        if self.voxels is not None:
            return self.voxels[src]
        return torch.from_numpy(outer([a[s] for a, s in zip(self.axes, src)]).astype(np.float32))


# Accumulators -----------------------------------------------------------------------------------------
class FullStitcher:
    """The whole (K, D, H, W) result in memory: float32 (official) or float16 (see the module docstring)."""

    def __init__(self, classes: int, size: Sequence[int], patch: Sequence[int], below: Sequence[int],
                 starts: list[tuple[int, ...]], axis_starts: Sequence[Sequence[int]], gaussian: np.ndarray,
                 factors: list[np.ndarray] | None, dtype: torch.dtype, device: torch.device) -> None:
        self.size, self.patch, self.below = tuple(size), tuple(patch), tuple(below)
        self.dtype = dtype
        self.accumulator = torch.zeros((classes, *self.size), dtype=dtype, device=device)
        self.normalised = dtype != torch.float32
        if self.normalised:
            self.normaliser = _Normaliser(gaussian, factors, starts, axis_starts, below, size, patch)
        else:
            self.weights = torch.zeros(self.size, dtype=torch.float32, device=device)
            self.gaussian = torch.from_numpy(np.array(gaussian)).to(device)

    def add(self, start: Sequence[int], predicted: torch.Tensor) -> None:
        """One window's probabilities x Gaussian (K, *patch), float32 (the float16 regimes divide it
        in place)."""
        src, dst = window_slices(start, self.below, self.size, self.patch)
        target = self.accumulator[(slice(None), *src)]
        if self.normalised:  # (in place: `predicted` is this window's own tensor, from inference mode)
            with torch.inference_mode():
                target += predicted[(slice(None), *dst)].div_(self.normaliser.at(src).to(predicted.device))
        else:
            target += predicted[(slice(None), *dst)]
            self.weights[src] += self.gaussian[dst]

    def finish(self) -> torch.Tensor:
        if not self.normalised:
            self.accumulator /= self.weights
            del self.weights
        return self.accumulator


class SlabStitcher:
    """The float16 result on a band of z-slices, handed to `consumer` slab by slab (module docstring)."""

    def __init__(self, classes: int, size: Sequence[int], patch: Sequence[int], below: Sequence[int],
                 starts: list[tuple[int, ...]], axis_starts: Sequence[Sequence[int]], gaussian: np.ndarray,
                 factors: list[np.ndarray] | None, consumer: SlabConsumer) -> None:
        self.size, self.patch, self.below = tuple(size), tuple(patch), tuple(below)
        self.consumer = consumer
        self.dtype = torch.float16
        self.normaliser = _Normaliser(gaussian, factors, starts, axis_starts, below, size, patch)
        self.depth = min(int(patch[0]), self.size[0])
        self.band = torch.zeros((classes, self.depth, *self.size[1:]), dtype=torch.float16)
        self.lo = 0  # the band holds volume slices lo .. lo + depth
        self.done = 0  # slices handed to the consumer

    def _advance(self, new_lo: int) -> None:
        """Hand slices lo .. new_lo to the consumer and move the band up to start at new_lo."""
        n = new_lo - self.lo
        if n <= 0:
            return
        self.consumer(self.lo, self.band[:, :n])
        self.done = new_lo
        keep = self.depth - n
        for i in range(max(keep, 0)):  # upwards, one slice at a time: never overwrites what is still to move
            self.band[:, i].copy_(self.band[:, i + n])
        self.band[:, max(keep, 0):].zero_()
        self.lo = new_lo

    def add(self, start: Sequence[int], predicted: torch.Tensor) -> None:
        src, dst = window_slices(start, self.below, self.size, self.patch)
        z = src[0]
        if z.start < self.lo:
            raise RuntimeError("windows must come in ascending z order (itertools.product of window_starts)")
        self._advance(z.start)
        band_z = slice(z.start - self.lo, z.stop - self.lo)
        with torch.inference_mode():  # (in place: `predicted` is this window's own tensor, from inference mode)
            self.band[(slice(None), band_z, *src[1:])] += predicted[(slice(None), *dst)].div_(self.normaliser.at(src))

    def finish(self) -> None:
        end = self.size[0]
        while self.done < end:
            self._advance(min(end, self.lo + self.depth))
        del self.band


__all__ = ["FullStitcher", "SlabStitcher", "axis_normalisers", "gaussian_factors", "outer", "window_slices"]
