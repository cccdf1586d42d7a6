"""Deterministic weights and inputs: reproducible, checkpoint-free values for parity checks,
tests and demos. The rule is the one used to record the official parity vectors
(shared/parity/README.md), keyed by official state_dict names."""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn


def _phase(key: str) -> float:
    return zlib.crc32(key.encode("utf-8")) / 2**32 * 2 * math.pi


def deterministic_tensor(key: str, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    n = math.prod(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    phase_key = key.replace(".epa_block.F.", ".epa_block.E.") if ".epa_block.F." in key else key
    i = torch.arange(n, dtype=torch.float64)
    base = torch.sin(0.7 * i + _phase(phase_key)).reshape(shape)
    last = key.rsplit(".", 1)[-1]
    if last == "EF":
        value = base / math.sqrt(shape[0])
    elif key.endswith("running_var"):
        value = 0.5 + 0.25 * (base + 1)
    elif key.endswith("weight") and len(shape) >= 2:
        value = base / math.sqrt(math.prod(shape[1:]))
    elif key.endswith("weight") or "temperature" in last or last.startswith("gamma"):
        value = 1 + 0.1 * base
    else:
        value = 0.1 * base
    return value.to(dtype)


def deterministic_state_dict(network: nn.Module, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Values for every entry of `network.state_dict()` (our module names equal the official ones)."""
    return {
        key: deterministic_tensor(key, tuple(t.shape), dtype if t.is_floating_point() else t.dtype)
        for key, t in network.state_dict().items()
    }


def set_deterministic_weights(network: nn.Module) -> nn.Module:
    """Fill `network` in place with the deterministic weights, in its current dtype."""
    ref = next(network.parameters())
    network.load_state_dict(deterministic_state_dict(network, dtype=ref.dtype), strict=True)
    return network


def deterministic_input(shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """x_j = sin(0.001 j) over the flat C-order index of the whole tensor."""
    n = math.prod(shape)
    return torch.sin(0.001 * torch.arange(n, dtype=torch.float64)).reshape(shape).to(dtype)
