"""Sliding-window inference (unetrpp.predict) with real, tiny UNETR++ networks (deterministic
weights) on the CPU: window placement as nnU-Net, Gaussian weighting, mirroring, padding,
batching, progress, cancellation and device choice."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest
import torch

from unetrpp.errors import CancelledError, UnetrppError, classify
from unetrpp.network import NetworkConfig, build_network
from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights
from unetrpp.predict import (
    DeviceUnavailableError,
    gaussian_importance_map,
    mirror_flips,
    padding_for,
    predict_probabilities,
    select_device,
    window_starts,
)

PATCH = (8, 8, 8)
K = 3


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    """A tiny real UNETR++ (patch 8^3, 3 classes) with deterministic weights."""
    torch.manual_seed(0)
    cfg = NetworkConfig(
        in_channels=1, out_channels=K, patch_size=PATCH, stem_kernel=(1, 1, 1), feature_size=4,
        depths=(1, 1, 1, 1), proj_sizes=(8, 8, 8, 4), decoder_proj_size=8, decoder_depth=1,
    )
    return set_deterministic_weights(build_network(cfg).float()).eval()


def volume(shape: tuple[int, ...]) -> torch.Tensor:
    """A deterministic, non-symmetric input volume (1, *shape) with a strong structure."""
    x = deterministic_input((1, *shape), dtype=torch.float32) * 3
    z, y, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    return x + torch.sin(0.7 * z + 0.3 * y * y / (shape[1] + 1) - 0.5 * w)[None]


def direct_softmax(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(net(x[None]).float(), dim=1)[0]


# Window placement -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,patch,overlap", [
    ((20, 50, 40), (16, 32, 32), 0.5),
    ((64, 128, 128), (64, 128, 128), 0.5),
    ((200, 511, 512), (64, 128, 128), 0.5),
    ((97, 33, 150), (32, 32, 64), 0.25),
    ((301, 9, 17), (8, 8, 8), 0.0),
])
def test_window_starts_follow_nnunet_and_cover_the_volume(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    for n, p, s in zip(size, patch, starts):
        expected_count = math.ceil((n - p) / (p * (1 - overlap))) + 1
        assert len(s) == expected_count
        assert s[0] == 0 and s[-1] == n - p
        if expected_count > 1:
            step = (n - p) / (expected_count - 1)
            assert s == [int(np.round(step * i)) for i in range(expected_count)]
            assert max(np.diff(s)) <= p * (1 - overlap) + 1e-9  # never a larger step than asked
        covered = np.zeros(n, bool)
        for a in s:
            covered[a:a + p] = True
        assert covered.all()


def test_window_starts_known_values():
    # nnU-Net v1 compute_steps_for_sliding_window((16, 32, 32), (20, 50, 40), 0.5)
    assert window_starts((20, 50, 40), (16, 32, 32), 0.5) == [[0, 4], [0, 9, 18], [0, 8]]
    assert window_starts((512,), (128,), 0.5) == [[0, 64, 128, 192, 256, 320, 384]]
    with pytest.raises(UnetrppError):
        window_starts((20,), (8,), 1.0)


def test_padding_like_nnunet():
    assert padding_for((5, 8, 3), (8, 8, 8)) == ((8, 8, 8), (1, 0, 2))
    assert padding_for((20, 7, 9), (8, 8, 8)) == ((20, 8, 9), (0, 0, 0))


def test_gaussian_importance_map():
    g = gaussian_importance_map((16, 32, 24), 0.125)
    assert g.dtype == np.float32 and g.shape == (16, 32, 24)
    assert g.max() == pytest.approx(1.0) and np.unravel_index(g.argmax(), g.shape) == (8, 16, 12)
    # closed form of a sampled Gaussian (no truncation within the patch at sigma = patch / 8)
    axes = [np.exp(-((np.arange(p) - p // 2) ** 2) / (2 * (p * 0.125) ** 2)) for p in g.shape]
    closed = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    np.testing.assert_allclose(g, closed, rtol=1e-4, atol=1e-6)
    # truncated at 4 sigma: zeros become the smallest non-zero value
    t = gaussian_importance_map((64, 64, 64), 0.05)
    assert (t > 0).all()
    assert t[0, 0, 0] == t.min() and t.min() < 1e-3


def test_mirror_flips():
    assert mirror_flips(()) == [()]
    assert len(mirror_flips((0, 1, 2))) == 8 and len(set(mirror_flips((0, 1, 2)))) == 8
    assert mirror_flips((2, 0)) == [(), (2,), (4,), (2, 4)]
    with pytest.raises(UnetrppError):
        mirror_flips((3,))


# Predictions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimize", [False, True])
def test_one_patch_is_one_forward_plus_softmax(net, optimize):
    x = volume(PATCH)
    p = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), device="cpu", optimize=optimize)
    assert p.dtype == torch.float32 and p.device.type == "cpu" and p.shape == (K, *PATCH)
    torch.testing.assert_close(p, direct_softmax(net, x), rtol=0, atol=1e-5 if optimize else 1e-6)


def test_mirroring_averages_all_flips_and_is_flip_equivariant(net):
    x = volume(PATCH)
    p = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(0, 1, 2), device="cpu", optimize=False)
    manual = torch.zeros_like(p)
    for r in range(4):
        for dims in itertools.combinations((1, 2, 3), r):
            manual += torch.flip(direct_softmax(net, torch.flip(x, dims) if dims else x), dims) / 8
    torch.testing.assert_close(p, manual, rtol=0, atol=1e-6)
    # flip-symmetric setup: averaging over every flip makes the prediction commute with flips
    flipped = predict_probabilities(net, torch.flip(x, (1, 3)), patch_size=PATCH, device="cpu", optimize=False)
    torch.testing.assert_close(flipped, torch.flip(p, (1, 3)), rtol=0, atol=1e-6)
    # ... which the network alone does not do (so the check above means something)
    plain = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), device="cpu", optimize=False)
    plain_flipped = predict_probabilities(net, torch.flip(x, (1, 3)), patch_size=PATCH, mirror_axes=(),
                                          device="cpu", optimize=False)
    assert (plain_flipped - torch.flip(plain, (1, 3))).abs().max() > 1e-3


def test_volume_smaller_than_patch_is_padded_with_zeros_and_cropped(net):
    x = volume((5, 8, 3))
    p = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), device="cpu", optimize=False)
    assert p.shape == (K, 5, 8, 3)
    padded = torch.zeros((1, *PATCH))
    padded[:, 1:6, 0:8, 2:5] = x  # nnU-Net: difference // 2 below, the rest above
    torch.testing.assert_close(p, direct_softmax(net, padded)[:, 1:6, 0:8, 2:5], rtol=0, atol=1e-6)


def reference_sliding_window(net, x, patch, overlap, sigma_scale=0.125):
    """nnU-Net's scheme written plainly: pad the whole volume, full-size accumulators, crop."""
    size = x.shape[1:]
    padded_size, below = padding_for(size, patch)
    padded = torch.zeros((x.shape[0], *padded_size))
    padded[(slice(None), *(slice(b, b + n) for b, n in zip(below, size)))] = x
    g = torch.from_numpy(np.array(gaussian_importance_map(patch, sigma_scale)))
    acc = torch.zeros((K, *padded_size), dtype=torch.float64)
    weight = torch.zeros((K, *padded_size), dtype=torch.float64)
    for s in itertools.product(*window_starts(padded_size, patch, overlap)):
        sl = tuple(slice(a, a + p) for a, p in zip(s, patch))
        acc[(slice(None), *sl)] += direct_softmax(net, padded[(slice(None), *sl)]) * g
        weight[(slice(None), *sl)] += g
    out = acc / weight
    return out[(slice(None), *(slice(b, b + n) for b, n in zip(below, size)))].float()


def test_stitching_matches_nnunet_reference_and_sums_to_one(net):
    x = volume((6, 19, 13))  # padded along z, several windows along y and x
    p = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), device="cpu", optimize=False)
    assert p.shape == (K, 6, 19, 13)
    torch.testing.assert_close(p, reference_sliding_window(net, x, PATCH, 0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(p.sum(0), torch.ones(p.shape[1:]), rtol=0, atol=1e-5)
    assert p.min() >= 0 and p.max() <= 1


def test_batches_give_the_same_result(net):
    x = volume((12, 14, 16))  # 2 x 3 x 3 = 18 windows
    one = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(1,), batch_size=1, device="cpu")
    four = predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(1,), batch_size=4, device="cpu")
    torch.testing.assert_close(four, one, rtol=0, atol=1e-5)


def test_float64_network_and_numpy_input(net):
    net64 = set_deterministic_weights(build_network(net.config).double()).eval()
    x = volume(PATCH)
    p = predict_probabilities(net64, x.double().numpy(), patch_size=PATCH, mirror_axes=(), device="cpu")
    assert p.dtype == torch.float32
    with torch.no_grad():
        expected = torch.softmax(net64(x.double()[None]), 1)[0].float()
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-6)


# Progress, cancellation, devices ---------------------------------------------------------------------
def test_progress_counts_windows_with_finite_eta(net):
    events = []
    x = volume((16, 8, 15))  # 3 x 1 x 3 = 9 windows
    predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), batch_size=2, device="cpu", sink=events.append)
    progress = [e for e in events if e.event == "progress"]
    assert [e.done for e in progress] == [2, 4, 6, 8, 9]
    assert all(e.total == 9 and e.stage == "predict" for e in progress)
    assert all(e.eta_s is not None and math.isfinite(e.eta_s) and e.eta_s >= 0 for e in progress)
    assert progress[-1].eta_s == 0 and progress[-1].fraction == 1.0


def test_cancel_stops_between_windows(net):
    cancel = threading.Event()
    events = []

    def sink(event):
        events.append(event)
        if sum(e.event == "progress" for e in events) == 3:
            cancel.set()

    x = volume((12, 14, 16))  # 18 windows
    with pytest.raises(CancelledError):
        predict_probabilities(net, x, patch_size=PATCH, mirror_axes=(), device="cpu", sink=sink, cancel=cancel)
    assert [e.done for e in events if e.event == "progress"] == [1, 2, 3]  # no window after the cancel


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(net):
    with pytest.raises(DeviceUnavailableError, match=r"'cuda' is not available.*--device cpu"):
        select_device("cuda")
    with pytest.raises(DeviceUnavailableError):
        predict_probabilities(net, volume(PATCH), patch_size=PATCH, device="cuda")
    with pytest.raises(DeviceUnavailableError, match="unknown device"):
        select_device("tpu")
    assert isinstance(DeviceUnavailableError("x"), UnetrppError)  # CLI exit code 2
    assert classify(DeviceUnavailableError("x")).category == "environment"  # the machine, not the input


def test_auto_device_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected
    assert select_device("CPU") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="channels, D, H, W"):
        predict_probabilities(net, torch.zeros(8, 8, 8), patch_size=PATCH, device="cpu")
    with pytest.raises(UnetrppError, match="overlap"):
        predict_probabilities(net, volume(PATCH), patch_size=PATCH, overlap=1.0, device="cpu")


# Memory ----------------------------------------------------------------------------------------------
MEMORY_SCRIPT = r"""
import resource, sys, torch
from unetrpp.predict import predict_probabilities
torch.set_num_threads(1)
K, shape = 14, (64, 256, 256)
net = torch.nn.Conv3d(1, K, 1).eval()  # a real (cheap) network: the cost under test is the stitching
x = torch.randn(1, *shape)
with torch.no_grad():
    net(torch.zeros(1, 1, 64, 128, 128))  # warm up the allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
p = predict_probabilities(net, x, patch_size=(64, 128, 128), mirror_axes=(), device="cpu")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
assert p.shape == (K, *shape) and p.is_contiguous()
print(peak - before, p.numel() * 4)
"""


def test_stitching_memory_is_the_accumulator_and_weights(tmp_path):
    """Peak memory of a 14-class 64x256x256 prediction grows by little more than the float32
    (K, D, H, W) accumulator and the (D, H, W) weight map (no padded copies, no float64)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    grown, accumulator = (int(v) for v in out.stdout.split())
    window_output = 14 * 64 * 128 * 128 * 4  # one window's probabilities, float32
    budget = accumulator * (1 + 1 / 14) + 3 * window_output + 64 * 2**20  # + weights, a few window buffers
    assert grown < budget, f"peak grew by {grown / 2**20:.0f} MiB for a {accumulator / 2**20:.0f} MiB accumulator"


# The documented inference entry points of a loaded package -----------------------------------------
@pytest.fixture(scope="module")
def small_package(tmp_path_factory):
    """A real package (official synapse manifest) with a small network: patch 16x32x32."""
    from support.packages import make_tiny_package

    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "small", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))


def test_model_optimized_is_the_fast_module_with_the_faithful_output(small_package):
    import unetrpp
    from unetrpp.network import UNETRPP
    from unetrpp.network.fast import FastUNETRPP

    model = unetrpp.load(small_package)
    fast = model.optimized()
    assert isinstance(fast, FastUNETRPP) and isinstance(model.network, UNETRPP)  # the faithful one stays
    x = deterministic_input((1, *model.network.config.input_shape), dtype=torch.float32)
    with torch.no_grad():
        expected = model.network(x)
    got = fast(x)
    # float32 with folded convolutions and other kernels: the project's float32 parity bound (as in
    # test_network_fast). Measured 2.0e-5 on an AMD EPYC (AVX2 kernels), below 1e-5 on AVX-512 Intel.
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-4


def test_model_predict_uses_the_package_defaults_and_the_fast_network(small_package):
    import unetrpp

    model = unetrpp.load(small_package)
    defaults = model.manifest.inference_defaults
    patch = tuple(model.network.config.patch_size)
    x = volume((patch[0], patch[1] + 8, patch[2]))  # two windows along y
    got = model.predict(x, device="cpu", fast=True)
    faithful = predict_probabilities(model.network, x, patch_size=patch, overlap=defaults.overlap, mirror_axes=(),
                                     sigma_scale=defaults.gaussian_sigma_scale, device="cpu", optimize=False)
    assert got.shape == faithful.shape == (model.network.config.out_channels, *x.shape[1:])
    torch.testing.assert_close(got, faithful, rtol=0, atol=1e-5)
    # without fast=True the package's mirror axes are used (the official default: all three)
    assert defaults.mirror_axes == (0, 1, 2)
    one = x[:, :, :patch[1]]
    mirrored = model.predict(one, device="cpu")
    explicit = predict_probabilities(model.network, one, patch_size=patch, mirror_axes=(0, 1, 2), device="cpu")
    torch.testing.assert_close(mirrored, explicit, rtol=0, atol=0)


def test_stitching_buffer_in_float16_keeps_the_labels(small_package, monkeypatch):
    """The float16 stitching buffer (chosen for large volumes) against float32 on the same windows.
    The deterministic weights give near-uniform probabilities (every class ~1/14), which no trained
    network does; the logits are scaled by 10 to give peaked, trained-like probabilities (the real
    case, the demo model on the example CT, is measured in docs/benchmarks.md)."""
    import unetrpp
    from unetrpp import predict as predict_module

    model = unetrpp.load(small_package)

    class Peaked(torch.nn.Module):
        def forward(self, x):
            return model.network(x) * 10

    patch = tuple(model.network.config.patch_size)
    x = volume((patch[0] + 6, patch[1] + 20, patch[2] + 12))  # 8 windows, overlapping on every axis
    report: dict = {}
    kwargs = dict(patch_size=patch, mirror_axes=(), device="cpu", report=report)
    f32 = predict_probabilities(Peaked(), x, stitch_dtype="float32", **kwargs)
    assert f32.dtype == torch.float32 and report["stitch_dtype"] == "float32"
    f16 = predict_probabilities(Peaked(), x, stitch_dtype="float16", **kwargs)
    assert f16.dtype == torch.float16 and report["stitch_dtype"] == "float16"
    assert float((f16.float() - f32).abs().max()) <= 2e-3
    agreement = float((f16.float().argmax(0) == f32.argmax(0)).float().mean())
    assert agreement >= 0.999, agreement
    # "auto": float32 for small volumes, float16 once the float32 buffer would pass the limit
    assert predict_module._stitch_dtype(14, (30, 400, 483)) == torch.float32
    assert predict_module._stitch_dtype(14, (150, 528, 528)) == torch.float16
    monkeypatch.setattr(predict_module, "STITCH_FLOAT32_LIMIT", 1000)
    assert model.predict(x, device="cpu", fast=True, backend="torch").dtype == torch.float16
    with pytest.raises(UnetrppError, match="stitch dtype"):
        model.predict(x, device="cpu", stitch_dtype="bfloat8")


# Stitching arithmetic (unetrpp.stitching) -----------------------------------------------------------
@pytest.mark.parametrize("patch,sigma_scale", [((64, 128, 128), 0.125), ((16, 32, 32), 0.125), ((7, 9, 12), 0.125)])
def test_gaussian_is_the_outer_product_of_three_1d_gaussians(patch, sigma_scale):
    from unetrpp.stitching import gaussian_factors, outer

    factors = gaussian_factors(patch, sigma_scale)
    assert factors is not None
    official = gaussian_importance_map(patch, sigma_scale)
    np.testing.assert_allclose(outer(factors).astype(np.float32), official, rtol=2e-7, atol=0)


def test_gaussian_with_zeros_replaced_is_not_treated_as_separable():
    from unetrpp.stitching import gaussian_factors

    # sigma = patch / 100: the 4-sigma truncation leaves zeros that the official map replaces
    assert (gaussian_importance_map((64, 64, 64), 0.01) > 0).all()
    assert gaussian_factors((64, 64, 64), 0.01) is None


@pytest.mark.parametrize("size,patch,overlap", [
    ((150, 200, 190), (64, 128, 128), 0.5),  # several windows per axis
    ((40, 50, 21), (16, 32, 32), 0.5),  # x smaller than the patch: padded
    ((30, 33, 35), (8, 8, 8), 0.25),
])
def test_separable_normaliser_equals_the_per_voxel_sum(size, patch, overlap):
    """The sum of every window's Gaussian, per voxel (the official weight map), against the outer
    product of the three 1-D sums: equal within float32 rounding."""
    from unetrpp.stitching import axis_normalisers, gaussian_factors, outer, window_slices

    padded, below = padding_for(size, patch)
    axis_starts = window_starts(padded, patch, overlap)
    g = torch.from_numpy(np.array(gaussian_importance_map(patch, 0.125)))
    per_voxel = torch.zeros(size, dtype=torch.float32)
    for start in itertools.product(*axis_starts):
        src, dst = window_slices(start, below, size, patch)
        per_voxel[src] += g[dst]
    separable = outer(axis_normalisers(gaussian_factors(patch, 0.125), axis_starts, below, size, patch))
    assert separable.shape == tuple(size) and separable.min() > 0
    np.testing.assert_allclose(separable.astype(np.float32), per_voxel.numpy(), rtol=1e-6, atol=0)


class _Peaked(torch.nn.Module):
    """A cheap real network with peaked, trained-like probabilities (one 1x1x1 convolution)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, classes, 1)

    def forward(self, x):
        return self.conv(x) * 4


def _slabs_of(network, x, **kwargs):
    from unetrpp.predict import predict_slabs

    got = []

    def consumer(z0, slab):
        got.append((z0, slab.clone()))

    predict_slabs(network, x, consumer, **kwargs)
    assert [z0 for z0, _ in got] == list(itertools.accumulate([0] + [s.shape[1] for _, s in got[:-1]]))
    return got


def test_slab_stitching_equals_the_whole_float16_buffer():
    """predict_slabs with the float16 buffer: the slabs, put together, are the whole float16
    result bit for bit, while only patch[0] slices of the buffer exist at any time."""
    x = volume((37, 20, 18))
    kwargs = dict(patch_size=PATCH, mirror_axes=(), device="cpu", stitch_dtype="float16")
    whole = predict_probabilities(_Peaked(), x, **kwargs)
    slabs = _slabs_of(_Peaked(), x, **kwargs)
    assert len(slabs) > 2 and all(s.dtype == torch.float16 for _, s in slabs)
    assert max(s.shape[1] for _, s in slabs) <= PATCH[0]
    assert torch.equal(torch.cat([s for _, s in slabs], dim=1), whole)
    # and the float16 result against float32: labels equal, probabilities within float16 rounding
    f32 = predict_probabilities(_Peaked(), x, patch_size=PATCH, mirror_axes=(), device="cpu", stitch_dtype="float32")
    assert float((whole.float() - f32).abs().max()) <= 2e-3
    assert float((whole.float().argmax(0) == f32.argmax(0)).float().mean()) >= 0.999


def test_slab_stitching_of_a_small_volume_is_the_official_float32_result(net):
    """Small volumes (float32 stitching, the parity cases) come as one slab, the exact result."""
    x = volume((12, 14, 9))
    kwargs = dict(patch_size=PATCH, mirror_axes=(0,), device="cpu")
    whole = predict_probabilities(net, x, **kwargs)
    slabs = _slabs_of(net, x, **kwargs)
    assert len(slabs) == 1 and slabs[0][1].dtype == torch.float32
    assert torch.equal(slabs[0][1], whole)
