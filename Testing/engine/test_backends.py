"""Backends (issue 21): ONNX export checked against PyTorch, OpenVINO / ONNX Runtime behind the
sliding window, `auto`, the caches, and a PyTorch-only install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unetrpp.backends import BackendError, choose_backend, clear_cache, installed_backends, is_installed, prepare

REPO = Path(__file__).resolve().parents[2]
needs_ov = pytest.mark.skipif(not is_installed("openvino"), reason="openvino not installed (the [cpu] extra)")
needs_ort = pytest.mark.skipif(not is_installed("onnxruntime"), reason="onnxruntime not installed")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNETRPP_CACHE", str(tmp_path_factory.getbasetemp() / "backend-cache"))


@pytest.fixture(scope="module")
def small_package(tmp_path_factory) -> Path:
    from support.packages import make_tiny_package

    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "small", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))


def _volume(shape, channels=1):
    g = torch.Generator().manual_seed(3)
    return torch.randn((channels, *shape), generator=g)


# ONNX export ----------------------------------------------------------------------------------
@needs_ort
@pytest.mark.parametrize("variant", ["synapse", *(pytest.param(v, marks=pytest.mark.slow) for v in ("acdc", "brats", "lung"))])
def test_onnx_export_of_every_variant_matches_pytorch(tmp_path, variant):
    from support.packages import make_tiny_package
    from unetrpp import load
    from unetrpp.backends.onnx_export import check_export, export_onnx, onnx_info

    model = load(make_tiny_package(tmp_path / variant, variant, patch_size=(16, 32, 32), stem_kernel=(2, 4, 4)))
    path = export_onnx(model.network, tmp_path / "model.onnx")
    info = onnx_info(path)
    c = model.network.config
    assert info["opset"] == 17
    assert info["inputs"] == {"image": ["batch", c.in_channels, *c.patch_size]}
    assert info["outputs"] == {"logits": ["batch", c.out_channels, *c.patch_size]}
    check = check_export(model.network, path)  # batch 2: the dynamic axis
    assert check["relative_error"] <= 1e-4


@needs_ort
def test_export_onnx_command(small_package, tmp_path):
    out = tmp_path / "m.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "UNETRPlusPlus"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "unetrpp", "export-onnx", str(small_package), "-o", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert out.is_file() and result["opset"] == 17 and result["check"]["relative_error"] <= 1e-4
    again = subprocess.run([sys.executable, "-m", "unetrpp", "export-onnx", str(small_package), "-o", str(out)],
                           capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_refuses_other_modules(tmp_path):
    from unetrpp.backends.onnx_export import export_onnx

    with pytest.raises(TypeError):
        export_onnx(torch.nn.Conv3d(1, 1, 1), tmp_path / "x.onnx")


# Choice -----------------------------------------------------------------------------------------
def test_auto_picks_openvino_on_cpu_when_installed_and_torch_elsewhere(monkeypatch):
    choice = choose_backend("auto", "cpu")
    assert choice.name == ("openvino" if is_installed("openvino") else "torch") and choice.reason
    assert choose_backend("auto", "cuda").name == "torch"
    assert choose_backend("auto", "mps").name == "torch"
    monkeypatch.setenv("UNETRPP_HIDE_BACKENDS", "openvino,onnxruntime")
    hidden = choose_backend("auto", "cpu")
    assert hidden.name == "torch" and "not installed" in hidden.reason
    assert installed_backends() == ["torch"]
    with pytest.raises(BackendError, match="not installed"):
        choose_backend("openvino", "cpu")


def test_backend_errors_name_the_choices():
    with pytest.raises(BackendError, match="auto, torch, openvino, onnxruntime"):
        choose_backend("tensorrt", "cpu")
    with pytest.raises(BackendError, match="int8"):  # int8: an explicit option of the ONNX backends only
        choose_backend("torch", "cpu", precision="int8")
    if is_installed("openvino"):
        with pytest.raises(BackendError, match="CPU only"):
            choose_backend("openvino", "cuda")
    assert choose_backend("auto", "cpu").precision == "f32"  # reduced precision only when asked


# Prediction ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=needs_ov), pytest.param("onnxruntime", marks=needs_ort)])
def test_sliding_window_on_a_backend_matches_torch(small_package, backend):
    from unetrpp import load

    model = load(small_package)
    x = _volume((20, 40, 36))
    reference = model.predict(x, device="cpu", mirror_axes=(2,), backend="torch")
    report: dict = {}
    got = model.predict(x, device="cpu", mirror_axes=(2,), backend=backend, report=report)
    assert report["backend"]["name"] == backend and report["backend"]["precision"] == "f32"
    assert got.shape == reference.shape and got.dtype == torch.float32
    assert float((got - reference).abs().max()) < 1e-4
    assert torch.equal(got.argmax(0), reference.argmax(0)) or float((got.argmax(0) == reference.argmax(0)).float().mean()) > 0.999


@needs_ov
def test_compiled_networks_are_cached_per_package_and_shape(small_package, monkeypatch):
    from unetrpp import load
    from unetrpp.backends import onnx_export

    clear_cache()
    model = load(small_package)
    choice = choose_backend("openvino", "cpu")
    first = prepare(model.network, choice, weights_sha256=model.manifest.weights_sha256)
    assert prepare(model.network, choice, weights_sha256=model.manifest.weights_sha256) is first
    clear_cache()  # a new process: the ONNX export comes from the disk cache, nothing is exported again
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported twice"))
    second = prepare(model.network, choice, weights_sha256=model.manifest.weights_sha256)
    assert second is not first
    x = _volume(model.network.config.patch_size)[None]
    torch.testing.assert_close(first(x), second(x))
    assert list((onnx_export.cache_dir() / "openvino").iterdir())  # OpenVINO's compiled blob


@needs_ov
def test_openvino_streams_run_a_batch_concurrently_with_the_same_results(small_package, monkeypatch):
    """Two streams (one thread each) run the items of a batch at once; the logits are those of the
    one-stream network, item by item, and the sliding window hands it pairs of flips / windows."""
    from unetrpp import load
    from unetrpp.backends.onnx_export import cached_onnx
    from unetrpp.backends.runtimes import OpenVINONetwork

    model = load(small_package)
    path = cached_onnx(model.network, model.manifest.weights_sha256)
    shape = model.network.config.input_shape
    one = OpenVINONetwork(path, shape, threads=2, streams=1)
    two = OpenVINONetwork(path, shape, threads=2, streams=2)
    assert (one.parallel_items, two.parallel_items) == (1, 2)
    x = torch.stack([_volume(model.network.config.patch_size)[None][0] * s for s in (1.0, -0.5, 2.0)])
    expected = one(x)
    got = two(x)
    assert got.shape == expected.shape
    for i in range(3):  # each item its own result (no mix-up between concurrent requests)
        assert float((got[i] - expected[i]).abs().max() / expected[i].abs().max()) < 1e-5
    assert float((expected[0] - expected[1]).abs().max()) > 1e-2  # the items differ

    volume = _volume((20, 40, 36))
    reference = model.predict(volume, device="cpu", mirror_axes=(1, 2), backend="openvino")
    calls: list[int] = []
    original = OpenVINONetwork.__call__
    monkeypatch.setattr(OpenVINONetwork, "__call__", lambda self, t: calls.append(t.shape[0]) or original(self, t))
    monkeypatch.setenv("UNETRPP_OPENVINO_STREAMS", "2")
    monkeypatch.setattr("unetrpp.backends._threads", lambda: 2)  # two streams need two threads
    clear_cache()
    mirrored = model.predict(volume, device="cpu", mirror_axes=(1, 2), backend="openvino")
    assert set(calls) == {2}  # 4 flips of each window, two per call
    torch.testing.assert_close(mirrored, reference, rtol=0, atol=1e-5)
    calls.clear()
    fast = model.predict(volume, device="cpu", mirror_axes=(), backend="openvino")
    clear_cache()
    monkeypatch.delenv("UNETRPP_OPENVINO_STREAMS")
    assert max(calls) == 2  # two windows per call
    torch.testing.assert_close(fast, model.predict(volume, device="cpu", mirror_axes=(), backend="openvino"),
                               rtol=0, atol=1e-5)


@needs_ov
def test_model_optimized_backend_returns_logits(small_package):
    from unetrpp import load

    model = load(small_package)
    net = model.optimized(backend="auto", device="cpu")
    x = _volume(model.network.config.patch_size)[None]
    with torch.no_grad():
        expected = model.network(x)
    got = net(torch.cat([x, x]))  # a batch of two windows
    assert got.shape == (2, *expected.shape[1:])
    assert float((got[1:] - expected).abs().max() / expected.abs().max()) < 1e-4


def test_non_unetrpp_networks_stay_on_torch():
    from unetrpp.predict import predict_probabilities

    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    report: dict = {}
    p = predict_probabilities(net, _volume((8, 8, 8)), patch_size=(8, 8, 8), mirror_axes=(), device="cpu",
                              backend="auto", report=report)
    assert p.shape == (3, 8, 8, 8) and report["backend"]["name"] == "torch"


# Only PyTorch installed ------------------------------------------------------------------------
def test_everything_works_with_only_pytorch_installed(small_package, tmp_path):
    """A child process in which openvino, onnxruntime and onnx cannot be imported."""
    script = f"""
import sys
for name in ("openvino", "onnxruntime", "onnx"):
    sys.modules[name] = None
import torch, unetrpp
from unetrpp.backends import BackendError, choose_backend, installed_backends
assert installed_backends() == ["torch"], installed_backends()
model = unetrpp.load({str(small_package)!r})
report = {{}}
p = model.predict(torch.randn(1, 16, 40, 32), device="cpu", fast=True, backend="auto", report=report)
assert report["backend"]["name"] == "torch" and "not installed" in report["backend"]["reason"], report
net = model.optimized(backend="auto", device="cpu")
assert net(torch.randn(1, 1, 16, 32, 32)).shape == (1, 14, 16, 32, 32)
try:
    choose_backend("openvino", "cpu")
except BackendError as exc:
    print("refused:", exc)
else:
    raise SystemExit("openvino accepted without openvino")
print("ok", tuple(p.shape))
"""
    env = {**os.environ, "UNETRPP_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "UNETRPlusPlus"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ok (14, 16, 40, 32)" in proc.stdout and "not installed" in proc.stdout


# The one path: request.backend -> Segmenter -> report ----------------------------------------------
def test_segmenter_runs_the_requested_backend_and_reports_it(small_package, data_dir):
    from unetrpp import load
    from unetrpp.pipeline import SegmentOptions, segment

    model = load(small_package)
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    runs = {}
    for backend in ["torch", "auto", *(["openvino"] if is_installed("openvino") else [])]:
        result = segment(model, ct, SegmentOptions(device="cpu", fast=True, backend=backend,
                                                   roi=((-60, -60, -1000), (60, 60, 1000))))
        runs[backend] = result
        info = result.report["backend"]
        assert info["device"] == "cpu" and info["reason"] and info["stitch_dtype"] == "float32"
        assert info["name"] == (backend if backend != "auto" else info["name"])
    assert runs["torch"].report["backend"]["reason"] == "requested"
    if "openvino" in runs:
        a, b = runs["torch"].labelmap.array, runs["openvino"].labelmap.array
        assert float((a == b).mean()) >= 0.999


def test_cli_accepts_backend():
    from unetrpp.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["segment", "--model", "m", "x.nii.gz", "-o", "y.nii.gz", "--backend", "torch"]).backend == "torch"
    assert parser.parse_args(["batch", "--model", "m", "in", "-o", "out"]).backend == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "--model", "m", "x.nii.gz", "-o", "y.nii.gz", "--backend", "tensorrt"])
