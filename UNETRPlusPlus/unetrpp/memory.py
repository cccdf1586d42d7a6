"""Memory planning for inference on small GPUs and Apple GPUs (issue 21 item 3).

`plan_gpu(...)`: from the free GPU memory (`torch.cuda.mem_get_info`), how many windows share one
forward pass and whether the stitching buffer lives on the GPU or in host memory. Pure arithmetic
on byte counts (unit-tested on the CPU); `predict_probabilities` applies it on CUDA when no batch
size is given. The per-window estimate is deliberately pessimistic: an out-of-memory error still
halves the batch and finally moves to the CPU (unetrpp.predict), but a plan that fits avoids the
failed attempt.

A full abdominal CT (14 classes over a 150x528x528 grid: 1.17 GB float16 buffer) on a 4 GB GPU
(~3.6 GB free after the CUDA context): synapse weights twice (faithful + optimized copy, 0.32 GB),
reserve 0.36 GB, one window under float16 autocast estimated at 0.42 GB -> batch 6, the 1.25 GB
buffer (with its weight map) in host memory; with 7.5 GB free the buffer moves to the GPU
(Testing/engine/test_backends_memory.py). The estimate is not yet checked on a GPU (none was lent):
if it is low, the out-of-memory fallback halves the batch.

`mps_plan(unsupported)`: what to run on Apple's MPS given the operators this PyTorch lacks there
(`mps_unsupported_ops` probes them once per process): the faithful network, the optimized network
whose transposed convolutions are matrix products (ConvTranspose3d is missing on MPS in several
PyTorch releases: nnU-Net issues 2244, 2435), or the CPU with a warning naming the operators.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20

#: peak activation bytes of one window = factor x patch voxels x feature size x element size
#: (measured on CPU: 4.4 for the optimized synapse network in float32; doubled for the CUDA caching
#: allocator's fragmentation and the faithful network's extra copies)
ACTIVATION_FACTOR = 8.0
#: under float16 autocast about 60 % of the float32 activations (norms and softmax stay float32)
AMP_ACTIVATION_SHARE = 0.6
#: kept free for cuDNN workspaces and the allocator: this share of the free memory, and at least this much
RESERVE_SHARE = 0.10
RESERVE_MIN = 256 * MiB
MAX_BATCH = 8


@dataclass(frozen=True)
class GpuPlan:
    batch_size: int
    buffer_device: str  # "cuda" or "cpu"
    window_bytes: int
    buffer_bytes: int
    available_bytes: int
    fits: bool  # False: not even one window fits the estimate (run anyway: the OOM fallback decides)
    reason: str


def window_bytes(patch_size: Sequence[int], feature_size: int, in_channels: int, classes: int, flips: int = 1,
                 amp: bool = True) -> int:
    """Estimated peak GPU bytes of one window in flight: the network's activations, the input, and
    the logits, probabilities and the running sum over the flips (float32)."""
    voxels = math.prod(int(p) for p in patch_size)
    activations = ACTIVATION_FACTOR * voxels * int(feature_size) * 4 * (AMP_ACTIVATION_SHARE if amp else 1.0)
    outputs = voxels * int(classes) * 4 * (3 if flips > 1 else 2)
    return int(activations + outputs + voxels * int(in_channels) * 4 * 2)


def buffer_bytes(classes: int, size: Sequence[int], element_size: int) -> int:
    """The stitching buffer (classes x size) plus its float32 weight map."""
    voxels = math.prod(int(n) for n in size)
    return voxels * (int(classes) * int(element_size) + 4)


def plan_gpu(free_bytes: int, weights_bytes: int, per_window: int, buffer: int, *, windows: int,
             max_batch: int = MAX_BATCH) -> GpuPlan:
    """Batch size and buffer placement for `free_bytes` of free GPU memory. The network's weights
    (`weights_bytes`, both copies) come first, then a reserve, then as many windows as fit (at most
    `max_batch` and the number of windows), then the buffer on the GPU only if it still fits with
    the batch; otherwise it stays in host memory (one window's probabilities cross the bus per
    window, a few milliseconds)."""
    reserve = max(RESERVE_MIN, int(RESERVE_SHARE * free_bytes))
    available = int(free_bytes) - int(weights_bytes) - reserve
    if available < per_window:
        return GpuPlan(1, "cpu", per_window, buffer, max(available, 0), False,
                       f"{_gb(free_bytes)} free: below one window's estimate ({_gb(per_window)}) after the weights "
                       f"({_gb(weights_bytes)}) and reserve; trying batch 1 (out-of-memory falls back to the CPU)")
    batch = max(1, min(int(max_batch), int(windows), available // per_window))
    device = "cuda" if available - batch * per_window >= buffer else "cpu"
    return GpuPlan(batch, device, per_window, buffer, available, True,
                   f"{_gb(free_bytes)} free: weights {_gb(weights_bytes)}, reserve {_gb(reserve)}, "
                   f"{batch} window(s) of ~{_gb(per_window)}, stitching buffer {_gb(buffer)} on {device}")


def _gb(n: int | float) -> str:
    return f"{n / GiB:.2f} GB"


# Apple MPS -----------------------------------------------------------------------------------------
MPS_OPS = ("conv3d", "conv_transpose3d", "group_norm", "instance_norm", "layer_norm", "softmax", "leaky_relu",
           "matmul")


def _probe(op: str, device) -> None:
    import torch
    import torch.nn.functional as F

    x = torch.ones(1, 2, 2, 2, 2, device=device)
    if op == "conv3d":
        F.conv3d(x, torch.ones(2, 2, 3, 3, 3, device=device), padding=1)
    elif op == "conv_transpose3d":
        F.conv_transpose3d(x, torch.ones(2, 2, 2, 2, 2, device=device), stride=2)
    elif op == "group_norm":
        F.group_norm(x, 1)
    elif op == "instance_norm":
        F.instance_norm(x)
    elif op == "layer_norm":
        F.layer_norm(x, (2,))
    elif op == "softmax":
        torch.softmax(x, dim=1)
    elif op == "leaky_relu":
        F.leaky_relu(x, 0.01)
    elif op == "matmul":
        torch.matmul(x.view(2, 8), x.view(8, 2))
    if device.type == "mps":
        torch.mps.synchronize()


@lru_cache(maxsize=4)
def _unsupported_cached(device_text: str) -> frozenset[str]:
    import torch

    device = torch.device(device_text)
    missing = set()
    for op in MPS_OPS:
        try:
            _probe(op, device)
        except (NotImplementedError, RuntimeError, TypeError) as exc:
            log.info("%s is not available on %s: %s", op, device_text, exc)
            missing.add(op)
    return frozenset(missing)


def mps_unsupported_ops(device="mps") -> frozenset[str]:
    """The operators of UNETR++ that fail on `device` in this PyTorch (probed once per process)."""
    return _unsupported_cached(str(device))


def mps_plan(unsupported: Iterable[str]) -> tuple[str, str]:
    """("faithful" | "matmul_transpose" | "cpu", message) for the operators missing on MPS."""
    missing = set(unsupported)
    if not missing:
        return "faithful", "every operator runs on MPS"
    if missing == {"conv_transpose3d"}:
        return "matmul_transpose", ("ConvTranspose3d is not available on MPS in this PyTorch: the transposed "
                                    "convolutions run as matrix products (same result)")
    return "cpu", (f"{', '.join(sorted(missing))} not available on MPS in this PyTorch: running on the CPU "
                   "(slower; a newer PyTorch may support MPS fully)")


__all__ = ["GpuPlan", "plan_gpu", "window_bytes", "buffer_bytes", "mps_plan", "mps_unsupported_ops"]
