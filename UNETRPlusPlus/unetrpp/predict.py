"""Sliding-window inference as the official UNETR++ (nnU-Net v1) pipeline does it.

`predict_probabilities(network, volume, patch_size=...)` returns the softmax probabilities
(K, D, H, W) of a preprocessed volume (C, D, H, W):

* a volume smaller than the patch along an axis is padded with zeros (after normalisation,
  as nnU-Net's `pad_nd_image` with constant 0: half below, the rest above) and cropped back;
* window start positions per axis as nnU-Net's `compute_steps_for_sliding_window`: with
  step = patch * (1 - overlap), n = ceil((size - patch) / step) + 1 windows, evenly spaced from 0
  to size - patch and rounded to whole voxels (`window_starts`);
* every window's softmax (averaged over all 2^n flips of the mirror axes, test-time
  augmentation) is weighted by a Gaussian importance map (sigma = patch * sigma_scale; normalised
  to a maximum of 1; zeros replaced by the smallest non-zero value) and accumulated; the sum is
  divided by the accumulated weights (`gaussian_importance_map`);
* MONAI's `sliding_window_inference` is not used: it places windows differently (fixed interval,
  last window flush with the end) and offers no cancellation; MONAI's `compute_importance_map`
  centres the Gaussian at (patch - 1) / 2 and clamps at 1e-3, unlike nnU-Net. The Gaussian here is
  scipy's `gaussian_filter` of a centred impulse, as in nnU-Net.

Memory (unetrpp.stitching): the result is stitched in host memory (on a CUDA device only where
`unetrpp.memory.plan_gpu` finds room for the whole buffer there). Up to `STITCH_FLOAT32_LIMIT` bytes
(`stitch_dtype="auto"`; every parity case) the official float32 arithmetic: a (K, D, H, W) sum and a
(D, H, W) weight map. Above it, float16 (a full abdominal CT, 14 classes over 150x528x528: 1.17 GB
instead of 2.3 GB; labels >= 99.99 % equal to float32, docs/benchmarks.md) with the normaliser as
three 1-D sums (the Gaussian is separable), and `predict_slabs` hands the float16 result over slab
by slab from a band of patch[0] z-slices (0.50 GB on that CT), which the Segmenter turns into labels
as they come (unetrpp.preprocess.SlabLabels). Windows are cut from the input one batch at a time,
so padding never copies the whole volume.

Devices: "auto" picks CUDA, then Apple MPS, then the CPU (`select_device`). Autocast (float16)
runs on CUDA only. A CUDA out-of-memory error halves the batch and retries; at batch size 1 the
work moves to the CPU, with a warning (logged and sent as a progress "log" event).

Progress: one `progress` event (stage "predict", windows done/total, ETA) per batch of windows
through `unetrpp.progress.StepTimer`; `cancel.is_set()` is checked before every batch, and a set
token raises `CancelledError` without touching the result.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .errors import CancelledError, EnvironmentProblem, UnetrppError
from .manifest import InferenceDefaults
from .progress import CancelToken, Event, ProgressSink, StepTimer, null_sink
from .stitching import FullStitcher, SlabConsumer, SlabStitcher, gaussian_factors, window_slices

if TYPE_CHECKING:
    from .backends import BackendChoice
    from .memory import GpuPlan

log = logging.getLogger(__name__)

DEFAULTS = InferenceDefaults()  # the official values; a model's manifest may set others

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")

#: Windows per forward pass when `batch_size` is None: on CUDA a few windows share one pass (an
#: out-of-memory error halves this); on the CPU and MPS batching gains nothing and costs memory.
DEFAULT_CUDA_BATCH = 2

#: Bytes up to which the stitching buffer stays float32 (`stitch_dtype="auto"`); float16 above.
STITCH_FLOAT32_LIMIT = 1 << 30
STITCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def _stitch_dtype(classes: int, size: Sequence[int], choice: str = "auto") -> torch.dtype:
    """The accumulator's dtype for `classes` x `size` voxels: "float32", "float16", or "auto"
    (float32 up to STITCH_FLOAT32_LIMIT bytes, float16 above)."""
    if choice == "auto":
        nbytes = 4 * int(classes) * math.prod(int(n) for n in size)
        return torch.float32 if nbytes <= STITCH_FLOAT32_LIMIT else torch.float16
    if choice not in STITCH_DTYPES:
        raise UnetrppError(f"stitch dtype {choice!r} must be auto, float32 or float16")
    return STITCH_DTYPES[choice]


class DeviceUnavailableError(EnvironmentProblem):
    """The requested compute device does not exist on this machine (category environment)."""


# Devices ------------------------------------------------------------------------------------
def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for `name`: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda",
    "cuda:N" or "mps". Raises DeviceUnavailableError when the device is not usable here."""
    if isinstance(name, torch.device):
        text = str(name)
    else:
        text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceUnavailableError(
            f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N for the N-th GPU)"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = (
                "this PyTorch build has no CUDA support" if torch.version.cuda is None
                else "no NVIDIA GPU or driver was found"
            )
            raise DeviceUnavailableError(
                f"device {text!r} is not available: {reason}. Use --device cpu (or auto), or install a "
                "CUDA-enabled PyTorch on a machine with an NVIDIA GPU"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"device {text!r} is not available: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(
                f"device {text!r} is not available: Apple Metal (MPS) needs macOS on Apple silicon and a "
                "PyTorch build with MPS. Use --device cpu (or auto)"
            )
        return device
    raise DeviceUnavailableError(f"unsupported device {text!r}; choose one of {', '.join(DEVICE_CHOICES)}")


# Window placement and weighting -------------------------------------------------------------
def window_starts(size: Sequence[int], patch_size: Sequence[int], overlap: float = DEFAULTS.overlap) -> list[list[int]]:
    """Start indices of the windows along each axis (nnU-Net's `compute_steps_for_sliding_window`
    with step_size = 1 - overlap). `size` must be at least `patch_size` on every axis (pad first)."""
    if not 0 <= overlap < 1:
        raise UnetrppError(f"overlap {overlap} must be at least 0 and below 1")
    step_fraction = 1.0 - overlap
    starts: list[list[int]] = []
    for n, p in zip(size, patch_size):
        if n < p:
            raise ValueError(f"size {tuple(size)} is smaller than the patch {tuple(patch_size)}; pad it first")
        count = int(math.ceil((n - p) / (p * step_fraction))) + 1
        if count > 1:
            step = (n - p) / (count - 1)
            starts.append([int(np.round(step * i)) for i in range(count)])
        else:
            starts.append([0])
    return starts


@lru_cache(maxsize=8)
def _gaussian(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(p // 2 for p in patch_size)] = 1.0
    g = ndimage.gaussian_filter(impulse, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g = (g / g.max()).astype(np.float32)
    g[g == 0] = g[g != 0].min()
    g.setflags(write=False)
    return g


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = DEFAULTS.gaussian_sigma_scale) -> np.ndarray:
    """nnU-Net's Gaussian importance map: an impulse at patch // 2 smoothed with sigma =
    patch * sigma_scale (scipy, truncated at 4 sigma), scaled to a maximum of 1, float32, with
    zeros replaced by the smallest non-zero value. Read-only (cached)."""
    return _gaussian(tuple(int(p) for p in patch_size), float(sigma_scale))


def padding_for(size: Sequence[int], patch_size: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(padded size, padding below) for a volume smaller than the patch (nnU-Net `pad_nd_image`:
    difference // 2 below, the rest above)."""
    padded = tuple(max(int(n), int(p)) for n, p in zip(size, patch_size))
    below = tuple((q - int(n)) // 2 for q, n in zip(padded, size))
    return padded, below


def mirror_flips(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of the mirror axes (spatial axes 0, 1, 2 = D, H, W) as tensor dims of a
    (B, C, D, H, W) batch, the identity first: 2^len(mirror_axes) entries."""
    axes = sorted(set(int(a) for a in mirror_axes))
    if any(a not in (0, 1, 2) for a in axes):
        raise UnetrppError(f"mirror axes {tuple(mirror_axes)} must be spatial axes 0, 1 or 2 (D, H, W)")
    dims = [a + 2 for a in axes]
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


# The network on its device --------------------------------------------------------------------
def _network_dtype(network: nn.Module) -> torch.dtype:
    for p in network.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _network_device(network: nn.Module) -> torch.device:
    for p in network.parameters():
        return p.device
    return torch.device("cpu")


def _inference_module(network: nn.Module, device: torch.device, optimize: bool) -> nn.Module:
    """`network` moved to `device` in eval mode, wrapped by the fast inference path
    (unetrpp.network.fast) when that module is present and applies."""
    network.to(device).eval()
    if device.type == "mps":
        return _mps_module(network, device, optimize)
    if not optimize or device.type not in ("cpu", "cuda"):
        return network
    try:
        from .network.fast import optimize_for_inference
    except ImportError:
        return network
    from .network import UNETRPP

    if not isinstance(network, UNETRPP):
        return network
    try:
        return optimize_for_inference(network)
    except Exception as exc:  # the faithful network always works; never fail on the fast path
        log.warning("fast inference path unavailable (%s); using the standard network", exc)
        return network


class _MpsUnusable(Exception):
    """An operator of the network is missing on MPS: run on the CPU instead."""


def _mps_module(network: nn.Module, device: torch.device, optimize: bool) -> nn.Module:
    """The network for Apple's MPS: faithful when every operator runs there; with the transposed
    convolutions as matrix products when only ConvTranspose3d is missing (unetrpp.memory.mps_plan);
    `_MpsUnusable` otherwise."""
    from .memory import mps_plan, mps_unsupported_ops

    what, message = mps_plan(mps_unsupported_ops(device))
    if what == "faithful":
        return network
    if what == "cpu":
        raise _MpsUnusable(message)
    from .network import UNETRPP
    from .network.fast import FastOptions, optimize_for_inference

    if not isinstance(network, UNETRPP):
        raise _MpsUnusable(message)
    log.warning("%s", message)
    return optimize_for_inference(network, options=FastOptions(mkldnn_conv=False, channels_last=False))


def _torch_choice(device: torch.device, reason: str) -> "BackendChoice":
    from .backends import BackendChoice

    return BackendChoice(name="torch", device=device.type, precision="f32", reason=reason)


def _is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _Runner:
    """Runs batches of windows through the network with mirroring and softmax; owns the device,
    the batch size and the fall-backs after CUDA out-of-memory errors."""

    def __init__(self, network: nn.Module, device: torch.device, amp: bool, flips: list[tuple[int, ...]],
                 gaussian: np.ndarray, batch_size: int, optimize: bool, sink: ProgressSink,
                 backend: "BackendChoice | None" = None, weights_sha256: str | None = None,
                 backend_requested: str = "torch") -> None:
        self.network = network
        self.optimize = optimize
        self.backend = backend
        self.backend_requested = backend_requested
        self.weights_sha256 = weights_sha256
        self.flips = flips
        self.gaussian_cpu = torch.from_numpy(np.array(gaussian))
        self.batch_size = batch_size
        self.keep_on_device = False  # True: outputs stay on the GPU (a GPU-resident stitching buffer)
        self.sink = sink
        try:
            self._use(device, amp)
        except Exception as exc:
            if not (device.type == "cuda" and _is_out_of_memory(exc)):
                raise
            torch.cuda.empty_cache()
            self._warn("GPU out of memory while loading the network: running on the CPU (slower)")
            self._use(torch.device("cpu"), amp=False)

    def _use(self, device: torch.device, amp: bool) -> None:
        choice = self.backend
        if choice is not None and choice.name != "torch" and device.type == choice.device:
            from .backends import prepare

            try:
                self.module = prepare(self.network, choice, weights_sha256=self.weights_sha256)
            except Exception as exc:
                if self.backend_requested != "auto" or choice.precision == "int8":  # int8: explicit, no fallback
                    raise
                self._warn(f"backend {choice.name} unavailable ({type(exc).__name__}: {exc}); using PyTorch")
                log.debug("backend failure", exc_info=True)
                self.backend = _torch_choice(device, f"fallback: {choice.name} failed ({type(exc).__name__})")
            else:
                self.device = device
                self.amp = False
                self.dtype = torch.float32
                self.gaussian = self.gaussian_cpu.to(device)
                return
        elif choice is not None and choice.name != "torch":  # moved to another device (CUDA OOM -> CPU)
            self.backend = _torch_choice(device, f"moved to {device.type}")
        try:
            self.module = _inference_module(self.network, device, self.optimize)
        except _MpsUnusable as exc:
            self._warn(str(exc))
            self._use(torch.device("cpu"), amp=False)
            return
        self.device = device
        self.amp = bool(amp) and device.type == "cuda"
        self.dtype = _network_dtype(self.network)
        self.gaussian = self.gaussian_cpu.to(device)

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.sink(Event("log", level="warning", message=message))

    @property
    def parallel_items(self) -> int:
        """Inputs the network runs at once (an OpenVINO network with several streams), else 1."""
        return max(1, int(getattr(self.module, "parallel_items", 1)))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax over the flips, times the Gaussian: (B, K, *patch) float32 on the CPU."""
        x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        total: torch.Tensor | None = None
        B = x.shape[0]
        # A network that runs several inputs at once gets that many flips of the batch per call
        # (concatenated along the batch); PyTorch one flip per call, as before.
        group = self.parallel_items if B < self.parallel_items else 1
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
            for first in range(0, len(self.flips), group):
                flips = self.flips[first:first + group]
                inp = torch.cat([torch.flip(x, dims) if dims else x for dims in flips]) if len(flips) > 1 else (
                    torch.flip(x, flips[0]) if flips[0] else x)
                out = self.module(inp)
                del inp
                if isinstance(out, (list, tuple)):  # deep supervision: the full-resolution head
                    out = out[0]
                for j, dims in enumerate(flips):
                    prob = torch.softmax(out[j * B:(j + 1) * B].float(), dim=1)
                    if dims:
                        prob = torch.flip(prob, dims)
                    total = prob if total is None else total.add_(prob)
                del out
        assert total is not None
        total.mul_(self.gaussian / len(self.flips))
        return total if self.keep_on_device and total.device.type == "cuda" else total.cpu()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Predict all windows of `windows` (B, C, *patch), splitting them into chunks of the
        current batch size; retries smaller batches, then the CPU, after CUDA out of memory."""
        outputs: list[torch.Tensor] = []
        i = 0
        while i < windows.shape[0]:
            chunk = windows[i:i + self.batch_size]
            try:
                with torch.inference_mode():
                    outputs.append(self._forward(chunk))
            except Exception as exc:
                if not (self.device.type == "cuda" and _is_out_of_memory(exc)):
                    raise
                torch.cuda.empty_cache()
                if self.batch_size > 1:
                    self.batch_size = max(1, self.batch_size // 2)
                    self._warn(f"GPU out of memory: retrying with {self.batch_size} window(s) per batch")
                else:
                    self._warn(
                        f"GPU out of memory even for one window of {tuple(chunk.shape[2:])}: continuing on the "
                        "CPU (slower). Close other GPU programs or choose --device cpu"
                    )
                    self._use(torch.device("cpu"), amp=False)
                continue
            i += chunk.shape[0]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _plan_cuda(network: nn.Module, device: torch.device, patch: tuple[int, ...], size: tuple[int, ...], windows: int,
               flips: int, amp: bool, stitch_dtype: str) -> "GpuPlan | None":
    """The window batch and buffer placement for the free memory of `device` (unetrpp.memory)."""
    from .memory import buffer_bytes, plan_gpu, window_bytes
    from .network import UNETRPP

    if not isinstance(network, UNETRPP):
        return None
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except Exception as exc:  # pragma: no cover - depends on the driver
        log.debug("no free-memory figure for %s: %s", device, exc)
        return None
    cfg = network.config
    resident = 0 if _network_device(network).type == "cuda" else 1  # weights not yet counted in `free`
    weights = sum(p.numel() * p.element_size() for p in network.parameters()) * (1 + resident)
    element = torch.finfo(_stitch_dtype(cfg.out_channels, size, stitch_dtype)).bits // 8
    return plan_gpu(free, weights, window_bytes(patch, cfg.feature_size, cfg.in_channels, cfg.out_channels, flips,
                                                amp), buffer_bytes(cfg.out_channels, size, element), windows=windows)


def _backend_choice(network: nn.Module, backend: "str | BackendChoice | None", precision: str | None,
                    device: torch.device, optimize: bool) -> "BackendChoice":
    from .backends import BackendChoice, choose_backend
    from .network import UNETRPP

    if isinstance(backend, BackendChoice):  # chosen by the caller (the Segmenter)
        return backend
    requested = (backend or "auto").strip().lower()
    if requested in ("auto", "torch") and (not isinstance(network, UNETRPP) or not optimize
                                           or _network_dtype(network) != torch.float32):
        reason = ("requested" if requested == "torch" else
                  "not a float32 UNETR++ network, or the faithful network was asked for (optimize=False)")
        return choose_backend("torch", device) if requested == "torch" else _torch_choice(device, reason)
    return choose_backend(requested, device, precision)


def _worth_exporting(choice: "BackendChoice", network: nn.Module, weights_sha256: str | None, evaluations: int,
                     patch: Sequence[int]) -> "BackendChoice":
    """`auto`'s ONNX backend, or PyTorch for a short job whose package has no export yet
    (`unetrpp.backends.AUTO_MIN_WORK`)."""
    from .backends import AUTO_MIN_WORK, is_prepared
    from .network import UNETRPP

    if choice.name == "torch" or choice.reason == "requested" or not isinstance(network, UNETRPP):
        return choice
    work = evaluations * math.prod(int(p) for p in patch)
    if work >= AUTO_MIN_WORK or is_prepared(network, choice, weights_sha256):
        return choice
    return _torch_choice(torch.device(choice.device), (
        f"a short job ({evaluations} window evaluation(s)) does not pay for the one-time {choice.name} export of "
        f"this model; it is used once exported (unetrpp export-onnx, or a longer job)"))


def plan_backend(network: nn.Module, backend: str | None, device: str | torch.device, volume_shape: Sequence[int],
                 patch_size: Sequence[int], overlap: float, mirror_axes: Sequence[int],
                 weights_sha256: str | None = None, precision: str | None = "auto") -> "BackendChoice":
    """What `predict_probabilities(network, volume, backend=backend, ...)` would run on, decided up
    front (for a caller that keeps its own optimized PyTorch module: pass the result as `backend`,
    and the faithful `network` unless it is "torch")."""
    from .backends import choose_backend

    dev = select_device(device)
    choice = choose_backend(backend, dev, precision)
    padded, _ = padding_for(tuple(volume_shape)[-3:], patch_size)
    windows = math.prod(len(s) for s in window_starts(padded, patch_size, overlap))
    return _worth_exporting(choice, network, weights_sha256, windows * len(mirror_flips(mirror_axes)), patch_size)


# Sliding window ---------------------------------------------------------------------------------
_window_slices = window_slices  # (kept for callers of the former private name)


def predict_probabilities(
    network: nn.Module,
    volume: torch.Tensor | np.ndarray,
    *,
    patch_size: Sequence[int],
    overlap: float = DEFAULTS.overlap,
    mirror_axes: Sequence[int] = DEFAULTS.mirror_axes,
    sigma_scale: float = DEFAULTS.gaussian_sigma_scale,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    sink: ProgressSink = null_sink,
    cancel: CancelToken | None = None,
    optimize: bool = True,
    backend: "str | BackendChoice" = "torch",
    precision: str = "auto",
    weights_sha256: str | None = None,
    report: dict | None = None,
    stitch_dtype: str = "auto",
    consumer: SlabConsumer | None = None,
) -> torch.Tensor | None:
    """Softmax probabilities (K, D, H, W), float32 on the CPU, of a preprocessed `volume`
    (C, D, H, W) by sliding-window inference with Gaussian weighting and mirroring (see the module
    docstring). `mirror_axes=()` turns test-time augmentation off (`--fast`). `optimize=False`
    runs the faithful network instead of the fast inference path (unetrpp.network.fast).
    `backend` ("torch", "openvino", "onnxruntime" or "auto", see `unetrpp.backends`) and
    `precision` choose what runs the network (a UNETRPP; anything else always runs in PyTorch);
    `weights_sha256` keys the compiled-network caches; `report`, when given, receives
    report["backend"] = {name, device, precision, reason}.
    `stitch_dtype` ("auto", "float32", "float16") is the accumulator's and the result's dtype (see
    the module docstring: float16 only for large volumes by default).
    `consumer(z0, slab)`: see `predict_slabs` (the result is then handed over slab by slab and
    None is returned).
    The network is returned to its original device afterwards."""
    volume = torch.as_tensor(volume)
    if volume.dim() != 4:
        raise ValueError(f"volume must be (channels, D, H, W), got shape {tuple(volume.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be three positive sizes (D, H, W), got {tuple(patch_size)}")
    if batch_size is not None and batch_size < 1:
        raise UnetrppError(f"batch size {batch_size} must be at least 1")
    _stitch_dtype(1, (1, 1, 1), stitch_dtype)  # a bad choice fails before any work
    flips = mirror_flips(mirror_axes)
    dev = select_device(device)
    size = tuple(int(n) for n in volume.shape[1:])
    padded, below = padding_for(size, patch)
    starts = list(itertools.product(*window_starts(padded, patch, overlap)))
    axis_starts = window_starts(padded, patch, overlap)
    gaussian = gaussian_importance_map(patch, sigma_scale)
    gpu_plan = None
    if batch_size is None and dev.type == "cuda":
        gpu_plan = _plan_cuda(network, dev, patch, size, len(starts), len(flips), amp, stitch_dtype)
        if gpu_plan is not None:
            batch_size = gpu_plan.batch_size
            log.info("GPU memory plan: %s", gpu_plan.reason)
    if batch_size is None:
        batch_size = DEFAULT_CUDA_BATCH if dev.type == "cuda" else 1
    batch_size = min(batch_size, len(starts))
    log.info(
        "sliding window: %d window(s) of %s over %s (padded %s), %d flip(s), batch %d, device %s%s",
        len(starts), patch, size, padded, len(flips), batch_size, dev, ", AMP" if amp and dev.type == "cuda" else "",
    )

    choice = _backend_choice(network, backend, precision, dev, optimize)
    if isinstance(backend, str) or backend is None:
        choice = _worth_exporting(choice, network, weights_sha256, len(starts) * len(flips), patch)
    log.info("backend %s (%s, %s): %s", choice.name, choice.device, choice.precision, choice.reason)
    home = _network_device(network)
    requested = ("auto" if choice.reason != "requested" else choice.name) if not isinstance(backend, str) \
        else (backend or "auto").lower()
    runner = _Runner(network, dev, amp, flips, gaussian, batch_size, optimize, sink, backend=choice,
                     weights_sha256=weights_sha256, backend_requested=requested)
    if len(flips) < runner.parallel_items and batch_size < runner.parallel_items and len(starts) > batch_size:
        # no mirror flips to run side by side: hand the network that many windows at once
        batch_size = runner.batch_size = min(runner.parallel_items, len(starts))
    buffer_device = torch.device("cpu")
    if gpu_plan is not None and gpu_plan.buffer_device == "cuda" and runner.device.type == "cuda" and consumer is None:
        buffer_device = runner.device
        runner.keep_on_device = True
    if report is not None:
        report["backend"] = runner.backend.as_dict()
        if gpu_plan is not None:
            report["gpu_memory_plan"] = gpu_plan.reason
    channels = volume.shape[0]
    stitcher: FullStitcher | SlabStitcher | None = None
    timer = StepTimer("predict", len(starts), sink)
    try:
        for first in range(0, len(starts), batch_size):
            if cancel is not None and cancel.is_set():
                raise CancelledError("segmentation cancelled by the user")
            batch = starts[first:first + batch_size]
            regions = [_window_slices(s, below, size, patch) for s in batch]
            windows = torch.zeros((len(batch), channels, *patch), dtype=torch.float32)
            for w, (src, dst) in zip(windows, regions):
                w[(slice(None), *dst)] = volume[(slice(None), *src)]
            predicted = runner(windows)
            del windows
            if stitcher is None:
                stitcher = _stitcher(predicted.shape[1], size, patch, below, starts, axis_starts, gaussian,
                                     sigma_scale, stitch_dtype, buffer_device, consumer)
            predicted = predicted.to(buffer_device)  # no-op unless the runner moved off the GPU
            for pred, start in zip(predicted, batch):
                stitcher.add(start, pred)
            del predicted
            timer.step(len(batch))
        assert stitcher is not None
        result = stitcher.finish()  # a slab stitcher hands its last slabs over here
    finally:
        if _network_device(network) != home:
            network.to(home)
    if report is not None:
        report["backend"] = runner.backend.as_dict()  # again: a fallback may have changed it
        report["stitch_dtype"] = str(stitcher.dtype).removeprefix("torch.")
    if result is None:
        return None
    if result.device.type != "cpu":
        result = result.cpu()
    if consumer is not None:  # small volumes: the float32 result is one slab
        consumer(0, result)
        return None
    return result


def _stitcher(classes: int, size: tuple[int, ...], patch: tuple[int, ...], below: tuple[int, ...],
              starts: list[tuple[int, ...]], axis_starts: list[list[int]], gaussian: np.ndarray, sigma_scale: float,
              stitch_dtype: str, device: torch.device, consumer: SlabConsumer | None) -> FullStitcher | SlabStitcher:
    """The accumulator for `classes` over `size` (unetrpp.stitching): float32 as official, or float16
    (large volumes), whole or as a band of z-slices handed to `consumer`."""
    dtype = _stitch_dtype(classes, size, stitch_dtype)
    if dtype == torch.float32:
        return FullStitcher(classes, size, patch, below, starts, axis_starts, gaussian, None, dtype, device)
    factors = gaussian_factors(patch, sigma_scale)
    log.info("stitching buffer in %s (%d classes over %s voxels%s)", dtype, classes, size,
             ", slab by slab" if consumer is not None else "")
    if consumer is not None:
        return SlabStitcher(classes, size, patch, below, starts, axis_starts, gaussian, factors, consumer)
    return FullStitcher(classes, size, patch, below, starts, axis_starts, gaussian, factors, dtype, device)


def predict_slabs(network: nn.Module, volume: torch.Tensor | np.ndarray, consumer: SlabConsumer, **kwargs) -> None:
    """`predict_probabilities` (same arguments) handing the result to `consumer(z0, slab)` instead
    of returning it: `slab` holds the probabilities (K, n, H, W) of slices z0 .. z0 + n, in ascending
    order, each slice once, and is only valid during the call (copy what is kept). Small volumes
    (float32 stitching) come as one float32 slab, computed exactly as `predict_probabilities`;
    large ones (float16) as the windows move up, so only `patch[0]` slices of the float16 buffer
    exist at any time (unetrpp.stitching.SlabStitcher)."""
    predict_probabilities(network, volume, consumer=consumer, **kwargs)


__all__ = [
    "DEVICE_CHOICES",
    "DeviceUnavailableError",
    "gaussian_importance_map",
    "mirror_flips",
    "padding_for",
    "predict_probabilities",
    "predict_slabs",
    "select_device",
    "plan_backend",
    "STITCH_FLOAT32_LIMIT",
    "window_starts",
]
