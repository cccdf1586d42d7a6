"""Memory planning (issue 21 item 3): the CUDA planner's arithmetic and the MPS fallback, on the CPU."""

from __future__ import annotations

import pytest
import torch

from unetrpp.memory import GiB, MiB, buffer_bytes, mps_plan, plan_gpu, window_bytes
from unetrpp.network import build_network


def _synapse_numbers(free_gb: float):
    net = build_network("synapse")
    cfg = net.config
    weights = sum(p.numel() * p.element_size() for p in net.parameters()) * 2  # faithful + optimized copy
    per_window = window_bytes(cfg.patch_size, cfg.feature_size, cfg.in_channels, cfg.out_channels, flips=1, amp=True)
    full_ct = buffer_bytes(cfg.out_channels, (150, 528, 528), 2)  # the float16 buffer of a full abdominal CT
    return plan_gpu(int(free_gb * GiB), weights, per_window, full_ct, windows=256), weights, per_window, full_ct


def test_full_ct_fits_a_4gb_gpu():
    plan, weights, per_window, buffer = _synapse_numbers(3.6)  # a 4 GB card after the CUDA context
    assert 150 * MiB < weights < 400 * MiB and 300 * MiB < per_window < 1 * GiB
    assert 1.1 * GiB < buffer < 1.4 * GiB
    assert plan.fits and plan.batch_size >= 1 and plan.buffer_device == "cpu"  # the buffer stays in host memory
    used = weights + plan.batch_size * per_window
    assert used + max(256 * MiB, 0.1 * 3.6 * GiB) <= 3.6 * GiB  # the plan leaves the reserve free


def test_large_gpu_gets_a_batch_and_the_buffer():
    plan, _, _, _ = _synapse_numbers(70)
    assert plan.batch_size == 8 and plan.buffer_device == "cuda" and "on cuda" in plan.reason


def test_tiny_gpu_is_tried_at_batch_one():
    plan, _, _, _ = _synapse_numbers(0.5)
    assert not plan.fits and plan.batch_size == 1 and plan.buffer_device == "cpu" and "falls back" in plan.reason


def test_batch_never_exceeds_the_windows():
    assert plan_gpu(80 * GiB, 0, 100 * MiB, 0, windows=3).batch_size == 3


def test_mps_plan():
    assert mps_plan([])[0] == "faithful"
    what, message = mps_plan(["conv_transpose3d"])
    assert what == "matmul_transpose" and "ConvTranspose3d" in message
    what, message = mps_plan(["conv3d", "conv_transpose3d"])
    assert what == "cpu" and "conv3d" in message and "CPU" in message


def test_mps_fallback_network_has_no_transposed_convolution_and_the_same_output():
    """What runs on MPS without ConvTranspose3d, checked on the CPU."""
    from support.packages import tiny_config
    from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights
    from unetrpp.network.fast import FastOptions, optimize_for_inference

    net = set_deterministic_weights(build_network(tiny_config("synapse", patch=(16, 32, 32)))).float().eval()
    fast = optimize_for_inference(net, options=FastOptions(mkldnn_conv=False, channels_last=False))
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in fast.modules())
    x = deterministic_input((1, *net.config.input_shape), dtype=torch.float32)
    with torch.no_grad():
        expected = net(x)
    assert float((fast(x) - expected).abs().max() / expected.abs().max()) < 1e-4


def test_mps_without_an_operator_runs_on_the_cpu(monkeypatch):
    """A device whose probe fails for conv3d: the runner warns and moves to the CPU."""
    from unetrpp import memory, predict
    from unetrpp.progress import null_sink

    monkeypatch.setattr(memory, "mps_unsupported_ops", lambda device="mps": frozenset({"conv3d"}))
    events = []
    net = build_network(__import__("support.packages", fromlist=["tiny_config"]).tiny_config("synapse", patch=(16, 32, 32)))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no MPS here: moving is a no-op
    runner = predict._Runner(net, torch.device("mps"), False, [()], predict.gaussian_importance_map((16, 32, 32)),
                             1, True, events.append)
    assert runner.device.type == "cpu"
    assert any(getattr(e, "fields", {}).get("level") == "warning" or "CPU" in str(e) for e in events)


# Slab-wise stitching and export in the Segmenter (the full-CT path, on a small case) -------------------
def test_segmenter_slab_path_equals_the_whole_float16_buffer(tmp_path, data_dir, monkeypatch):
    """With the float16 regime forced on a small CT (the limit lowered), the Segmenter makes labels,
    confidence and the quality maps slab by slab (predict_slabs + preprocess.SlabLabels): the same
    labelmap, confidence and per-structure quality as the whole float16 buffer through
    labels_to_input_grid and assess_result."""
    import numpy as np

    import unetrpp.predict as predict_module
    import unetrpp.segmenter as segmenter_module
    from support.packages import make_tiny_package
    from unetrpp.image import read_image
    from unetrpp.segmenter import Segmenter

    package = make_tiny_package(tmp_path / "pkg", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    ct = read_image(data_dir / "ct" / "example_ct_sm.nii.gz")
    lo = ct.index_to_physical(np.array([30, 30, 3]))
    hi = ct.index_to_physical(np.array([52, 50, 24]))  # network grid 22 x ~80 x ~87: 2 x 4 x 5 windows
    roi = (np.minimum(lo, hi).tolist(), np.maximum(lo, hi).tolist())
    seg = Segmenter(package, device="cpu")
    monkeypatch.setattr(predict_module, "STITCH_FLOAT32_LIMIT", 1000)
    calls = []
    original = segmenter_module._slab_labels

    def spy(*args):
        made = original(*args)
        calls.append(made)
        return made

    monkeypatch.setattr(segmenter_module, "_slab_labels", spy)
    slabbed = seg.run(seg.request(ct, roi=roi, fast=True, backend="torch", with_confidence=True))
    assert calls and calls[-1] is not None  # the slab path ran
    monkeypatch.setattr(segmenter_module, "_slab_labels", lambda *args: None)
    whole = seg.run(seg.request(ct, roi=roi, fast=True, backend="torch", with_confidence=True))
    assert slabbed.report["backend"]["stitch_dtype"] == whole.report["backend"]["stitch_dtype"] == "float16"
    np.testing.assert_array_equal(slabbed.labelmap.array, whole.labelmap.array)
    np.testing.assert_array_equal(slabbed.confidence.array, whole.confidence.array)
    assert slabbed.report["segments"] == whole.report["segments"]
    assert slabbed.report["quality"] == whole.report["quality"]
    np.testing.assert_array_equal(slabbed.quality.result.entropy, whole.quality.result.entropy)
