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


def deterministic_tensor(
    key: str, shape: tuple[int, ...], dtype=torch.float64, phase_key: str | None = None
) -> torch.Tensor:
    """The value of official state_dict entry `key`. `phase_key` replaces `key` in the phase only
    (rule 2 of version 2: synapse's F, which is the same module as E, takes E's phase)."""
    n = math.prod(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    i = torch.arange(n, dtype=torch.float64)
    base = torch.sin(0.7 * i + _phase(phase_key or key)).reshape(shape)
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


def tied_phase_key(key: str, state: dict[str, torch.Tensor]) -> str | None:
    """E's key for an F entry that is the same tensor as E's (synapse's one E/F module under two
    names); None where E and F are independent modules (acdc, lung: rule version 2)."""
    if ".epa_block.F." not in key:
        return None
    e_key = key.replace(".epa_block.F.", ".epa_block.E.")
    return e_key if state.get(e_key) is state[key] else None


def deterministic_state_dict(network: nn.Module, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Values for every entry of `network.state_dict()` (our module names equal the official ones)."""
    state = network.state_dict(keep_vars=True)  # keep_vars: shared parameters stay one object
    return {
        key: deterministic_tensor(
            key,
            tuple(t.shape),
            dtype if t.is_floating_point() else t.dtype,
            phase_key=tied_phase_key(key, state),
        )
        for key, t in state.items()
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
