"""The optimized inference network computes what the faithful network computes.

Two kinds of checks: exact equivalence with the faithful network on tiny configurations with
random weights (non-trivial batch-norm statistics, layer scales and temperatures), in float64
(where every optimisation must be exact up to rounding) and float32; and float32 parity of the
full official variants with the float64 vectors recorded from the official code (shared/parity).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from unetrpp.network import InputShapeError, NetworkConfig, build_network
from unetrpp.network.blocks import ResidualAdd
from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights
from unetrpp.network.deploy import ChannelFirstBlock, deploy_network
from unetrpp.network.fast import FastOptions, FastUNETRPP, optimize_for_inference

OFFICIAL_NAME = {"synapse": "synapse", "acdc": "acdc", "brats": "tumor", "lung": "lung"}
FLOAT32_PARITY = 1e-4

TINY = {
    # in_channels 1 exercises the one-channel convolution and projection paths.
    "paired": dict(in_channels=1, stem_kernel=(2, 4, 4)),
    "paired-untied-2conv": dict(in_channels=1, stem_kernel=(1, 4, 4), conv_blocks=2, tied_ef=False),
    "shared_ef": dict(in_channels=2, stem_kernel=(2, 2, 2), attention="shared_ef"),
}


def _tiny_network(kind: str, deep_supervision: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = NetworkConfig(
        out_channels=3, patch_size=(16, 32, 32), feature_size=8, depths=(1, 1, 2, 1), decoder_depth=1,
        proj_sizes=(8, 8, 8, 4), decoder_proj_size=8, **TINY[kind],
    )
    net = build_network(cfg, deep_supervision=deep_supervision).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("gamma", "temperature", "temperature2")):
                p.copy_(0.5 + torch.rand_like(p))  # not the 1e-6 / 1 initialisation
            elif name.endswith("pos_embed"):
                p.normal_(0, 0.5)
            elif p.dim() == 1 and "norm" in name:
                p.normal_(1.0, 0.3) if name.endswith("weight") else p.normal_(0, 0.3)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 2.0)
    return net.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


ALL_ON = FastOptions()
ABLATIONS = [
    FastOptions(fused_attention=False),
    FastOptions(fold_batchnorm=False),
    FastOptions(matmul_convs=False),
    FastOptions(channels_last=False, mkldnn_conv=False),
]


@pytest.mark.parametrize("kind", list(TINY))
def test_float64_equivalence_is_exact(kind):
    net = _tiny_network(kind)
    x = torch.randn(2, net.config.in_channels, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    for opts in [ALL_ON, *ABLATIONS]:
        y = optimize_for_inference(net, options=opts)(x)
        assert y.shape == ref.shape and y.dtype == torch.float64
        assert y.is_contiguous()
        assert _rel(y, ref) < 1e-12, opts


@pytest.mark.parametrize("kind", list(TINY))
def test_float32_close_to_float64_faithful(kind):
    net = _tiny_network(kind)
    x = torch.randn(2, net.config.in_channels, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net.float())
    y = fast(x.float())
    assert y.dtype == torch.float32
    assert _rel(y, ref) < 2e-5


def test_deep_supervision_heads_match():
    net = _tiny_network("paired", deep_supervision=True)
    x = torch.randn(1, 1, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    out = optimize_for_inference(net)(x)
    assert isinstance(out, list) and len(out) == 3
    for y, r in zip(out, ref):
        assert y.shape == r.shape
        assert _rel(y, r) < 1e-12


def test_faithful_network_is_left_unchanged():
    net = _tiny_network("paired").float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    fast = optimize_for_inference(net)
    assert net.training  # its mode is not touched either
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(fast, FastUNETRPP) and not fast.training
    assert fast.state_dict() == {}  # derived tensors only: never save this module
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_faithful_module_outputs_are_never_changed_in_place():
    """Forward hooks see each module's true output (the parity intermediates, feature extraction):
    the faithful network allocates its residual/skip sums; only the optimized copy adds in place."""
    net = _tiny_network("paired")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in net.named_modules():
        if name.endswith(("transp_conv", "conv8", "norm2")):
            module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (o, o.clone())))
    with torch.no_grad():
        net(torch.randn(1, *net.config.input_shape, dtype=torch.float64))
    assert any(n.endswith("transp_conv") for n in seen) and any(n.endswith("conv8") for n in seen)
    for name, (kept, at_hook_time) in seen.items():
        assert torch.equal(kept, at_hook_time), name
    fast = optimize_for_inference(net)
    assert all(m.in_place for m in fast.modules() if isinstance(m, ResidualAdd))
    assert not any(m.in_place for m in net.modules() if isinstance(m, ResidualAdd))


def test_wrong_input_shape_names_the_expected_shape():
    fast = optimize_for_inference(_tiny_network("paired"))
    with pytest.raises(InputShapeError, match=r"\(batch, 1, 16, 32, 32\)"):
        fast(torch.zeros(1, 1, 16, 32, 16, dtype=torch.float64))


def test_bf16_autocast_on_cpu_stays_close():
    net = _tiny_network("paired")
    x = torch.randn(1, 1, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x.float())
    assert torch.isfinite(y).all()
    err = _rel(y.float(), ref)
    assert 1e-5 < err < 0.1  # bf16 really was used, and the result is still the same function


def test_non_unetrpp_module_is_returned_unchanged():
    m = nn.Conv3d(1, 1, 1)
    assert optimize_for_inference(m) is m


def _parity_samples(t: torch.Tensor, k: int) -> np.ndarray:
    flat = t.reshape(-1)
    idx = np.round(np.linspace(0, flat.numel() - 1, k)).astype(np.int64)
    return flat[torch.from_numpy(idx)].double().numpy()


@pytest.mark.parametrize(
    "variant",
    [
        "synapse",
        pytest.param("acdc", marks=pytest.mark.slow),
        pytest.param("brats", marks=pytest.mark.slow),
        pytest.param("lung", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("form", ["fast", "deploy"])
def test_float32_optimized_matches_official_float64_vectors(variant, form, parity_dir):
    """Both derived forms of the full official networks: the fast PyTorch path and the deploy
    graph that the ONNX export traces."""
    ref = json.loads((parity_dir / f"{OFFICIAL_NAME[variant]}.json").read_text())
    net = build_network(variant).eval()
    set_deterministic_weights(net)
    fast = optimize_for_inference(net) if form == "fast" else deploy_network(net, copy=False)
    del net
    x = deterministic_input(tuple(ref["input_shape"]), dtype=torch.float32)
    with torch.no_grad():
        y = fast(x)
    assert list(y.shape) == ref["output_shape"] and y.dtype == torch.float32
    expected = np.asarray(ref["output_samples"])
    err = float(np.abs(_parity_samples(y, 4096) - expected).max() / np.abs(expected).max())
    assert err < FLOAT32_PARITY, f"{variant}: relative error {err:.2e}"
    # The signed sum cancels (BraTS: |sum| is ~1/80 of sum|y|), so its error is measured against the
    # magnitude of what was summed; the mean absolute value has no cancellation and is checked as is.
    y64 = y.double()
    magnitude = ref["output_mean_abs"] * y.numel()
    assert abs(y64.sum().item() - ref["output_sum"]) < FLOAT32_PARITY * magnitude
    assert y64.abs().mean().item() == pytest.approx(ref["output_mean_abs"], rel=FLOAT32_PARITY)


def test_compile_option_keeps_the_contract_without_compiling():
    # Only construction and the input check: compiling itself takes minutes on 2 CPU cores.
    fast = optimize_for_inference(_tiny_network("paired"), compile=True)
    assert not fast.training
    with pytest.raises(InputShapeError):
        fast(torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_repeated_calls_leave_the_module_unchanged():
    # A single token at the last stage with batch 1 once made a broadcast bias alias its buffer.
    torch.manual_seed(0)
    cfg = NetworkConfig(in_channels=1, out_channels=3, patch_size=(8, 8, 8), stem_kernel=(1, 1, 1), feature_size=4,
                        depths=(1, 1, 1, 1), proj_sizes=(8, 8, 8, 4), decoder_proj_size=8, decoder_depth=1)
    net = set_deterministic_weights(build_network(cfg).double()).eval()
    x = torch.randn(1, 1, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    fast = optimize_for_inference(net)
    for _ in range(3):
        assert _rel(fast(x), ref) < 1e-12


@pytest.mark.parametrize("kind", ["paired", "shared_ef"])
def test_sdpa_option_is_exact_in_float64(kind):
    net = _tiny_network(kind)
    x = torch.randn(2, net.config.in_channels, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    assert _rel(optimize_for_inference(net, options=FastOptions(sdpa=True))(x), ref) < 1e-12


# The deploy graph (network/deploy.py), traced by the ONNX export ---------------------------------
@pytest.mark.parametrize("kind", list(TINY))
def test_deploy_network_is_exact_in_float64(kind):
    """Channel-first transformer blocks compute the faithful function, including the official
    head/token-mixing reshape of the spatial branch (the plain (B, C, N) order instead fails by 2e-2 to 2e-1)."""
    net = _tiny_network(kind)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    deploy = deploy_network(net)
    blocks = [m for m in deploy.modules() if isinstance(m, ChannelFirstBlock)]
    assert blocks and not any(type(m).__name__ == "TransformerBlock" for m in deploy.modules())
    x = torch.randn(2, net.config.in_channels, *net.config.patch_size, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        y = deploy(x)
    assert y.shape == ref.shape and _rel(y, ref) < 1e-12
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the original is untouched


def test_deploy_network_refuses_other_modules():
    with pytest.raises(TypeError):
        deploy_network(nn.Conv3d(1, 1, 1))
