"""The network computes what the official UNETR++ computes: deterministic weights and input,
float64, compared with vectors recorded from the official code (shared/parity)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetrpp.network import build_network
from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights

OFFICIAL_NAME = {"synapse": "synapse", "acdc": "acdc", "brats": "tumor", "lung": "lung"}
TOLERANCE = 1e-6


def _samples(t: torch.Tensor, k: int) -> np.ndarray:
    flat = t.reshape(-1)
    idx = np.round(np.linspace(0, flat.numel() - 1, k)).astype(np.int64)
    return flat[torch.from_numpy(idx)].numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(OFFICIAL_NAME))
def test_float64_output_and_intermediates_match_official(variant, parity_dir):
    ref = json.loads((parity_dir / f"{OFFICIAL_NAME[variant]}.json").read_text())
    net = build_network(variant).double().eval()
    set_deterministic_weights(net)
    modules = dict(net.named_modules())
    captured: dict[str, torch.Tensor] = {}
    for entry in ref["intermediates"]:
        name = entry["module"]
        modules[name].register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o))
    x = deterministic_input(tuple(ref["input_shape"]))
    with torch.inference_mode():
        y = net(x)

    assert list(y.shape) == ref["output_shape"]
    for entry in ref["intermediates"]:  # in forward order: the first failure shows where it starts
        out = captured[entry["module"]]
        assert list(out.shape) == entry["shape"], entry["module"]
        err = _rel(_samples(out, 64), np.asarray(entry["samples"]))
        assert err < TOLERANCE, f"{entry['module']}: relative error {err:.2e}"
    assert _rel(_samples(y, 4096), np.asarray(ref["output_samples"])) < TOLERANCE
    assert y.sum().item() == pytest.approx(ref["output_sum"], rel=TOLERANCE)
    assert (y * y).sum().item() == pytest.approx(ref["output_sum_sq"], rel=TOLERANCE)
    assert y.abs().mean().item() == pytest.approx(ref["output_mean_abs"], rel=TOLERANCE)


@pytest.mark.parametrize("variant", list(OFFICIAL_NAME))
def test_parameter_count_equals_official(variant, parity_dir):
    ref = json.loads((parity_dir / f"{OFFICIAL_NAME[variant]}.json").read_text())
    net = build_network(variant)
    assert sum(p.numel() for p in net.parameters()) == ref["parameters"]


def _official_keys(parity_dir, variant):
    keys = {}
    for line in (parity_dir / f"keys_{OFFICIAL_NAME[variant]}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


@pytest.mark.parametrize("variant", list(OFFICIAL_NAME))
def test_every_official_key_loads_strict(variant, parity_dir):
    official = _official_keys(parity_dir, variant)
    net = build_network(variant, deep_supervision=True)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == official
    # And a state_dict made of exactly those keys/shapes loads with strict=True.
    state = {k: torch.zeros(s) if k.rsplit(".", 1)[-1] != "num_batches_tracked" else torch.zeros(s, dtype=torch.long)
             for k, s in official.items()}
    net.load_state_dict(state, strict=True)
    first_line = (parity_dir / f"keys_{OFFICIAL_NAME[variant]}.txt").read_text().splitlines()[1]
    assert str(sum(p.numel() for p in net.parameters())) in first_line.replace(",", "")


@pytest.mark.parametrize("variant, tied", [("synapse", True), ("acdc", False), ("lung", False)])
def test_deterministic_E_and_F_follow_weight_rule_version_2(variant, tied):
    """Rule v2 (shared/parity/README.md): only synapse's F is E (one module, E's phase); acdc's and
    lung's F are independent modules with their own phase, so their values differ from E's."""
    net = set_deterministic_weights(build_network(variant).float())
    epa = net.unetr_pp_encoder.stages[0][0].epa_block
    assert (epa.F is epa.E) == tied
    assert torch.equal(epa.F.weight, epa.E.weight) == tied
