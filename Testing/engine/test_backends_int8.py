"""Issue 21, item 2: int8 only as an explicit option. `unetrpp quantize` calibrates a package's
network on scans preprocessed by the engine's own path and cut as the sliding window cuts them,
stores the int8 ONNX (ONNX Runtime's static quantization, QDQ) beside the float32 one with the
measured label agreement; `--precision int8` runs it (OpenVINO or ONNX Runtime), reports it, and is
refused when the package has no current int8 export. Real trained network (the bundled demo
model), real CTs, real runtimes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unetrpp.backends import BackendError, choose_backend, clear_cache, is_installed

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "Resources" / "models" / "demo-abdomen-ct"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "UNETRPlusPlus"), os.environ.get("PYTHONPATH", "")])}
HIDDEN = {"UNETRPP_HIDE_BACKENDS": "openvino,onnxruntime"}
needs_ort = pytest.mark.skipif(not is_installed("onnxruntime"), reason="onnxruntime not installed")
#: int8 labels equal to float32 on the held-out example CT, at least. Measured spread over five
#: calibrations of the demo model (1-2 CTs, 8-32 windows; benchmarks/int8.py spread, docs/benchmarks.md):
#: 99.74-99.81 %, standard deviation 0.027 points; the bound (99.4 %) is the lowest minus 12 of them,
#: room for other CPUs' int8 kernels.
HELD_OUT_BOUND = 0.994


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNETRPP_CACHE", str(tmp_path_factory.getbasetemp() / "int8-cache"))
    clear_cache()
    yield
    clear_cache()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetrpp", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=900)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    return last


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, data_dir) -> Path:
    """The demo model (trained) quantized by the command: calibrated on the DICOM CT, the example CT held out."""
    if not is_installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    pkg = tmp_path_factory.mktemp("int8") / "demo"
    shutil.copytree(DEMO, pkg)
    proc = _cli("quantize", pkg, "--calibration", data_dir / "ct_dicom" / "example_ct_dicom",
                "--held-out", data_dir / "ct" / "example_ct_sm.nii.gz", "--max-windows", "8", "--json",
                env={"UNETRPP_CACHE": str(tmp_path_factory.getbasetemp() / "int8-cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "windows" in proc.stderr and "left" in proc.stderr  # progress with an ETA
    return pkg


@needs_ort
def test_quantize_stores_int8_beside_float32_with_the_measured_agreement(quantized):
    from unetrpp.hashing import sha256_file

    data = json.loads((quantized / "model.json").read_text())
    f32, int8 = data["exports"]["onnx"], data["exports"]["onnx_int8"]
    assert int8["file"] == "model-int8.onnx" and int8["sha256"] == sha256_file(quantized / "model-int8.onnx")
    assert int8["source_sha256"] == f32["sha256"] == sha256_file(quantized / "model.onnx")
    assert int8["weights_sha256"] == data["weights"]["sha256"] and int8["input_shape"] == ["batch", 1, 32, 64, 64]
    q = int8["quantization"]
    assert q["format"] == "QDQ" and q["per_channel"] is True and q["windows"] == 8 and q["scans"] == 1
    assert q["reduce_range"] is True and q["activation_type"] == "QUInt8"
    assert int8["bytes"] < 0.6 * f32["bytes"]  # int8 weights

    import onnx

    ops = {n.op_type for n in onnx.load(str(quantized / "model-int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops

    a = int8["agreement"]
    assert [r["scan"] for r in a["calibration"]] == ["example_ct_dicom"]
    assert [r["scan"] for r in a["held_out"]] == ["example_ct_sm.nii.gz"]
    assert a["held_out_min_labels_equal"] >= HELD_OUT_BOUND, a
    assert a["held_out_min_labels_equal"] < 1.0  # int8 is not float32: the measurement measured something


@needs_ort
def test_segment_precision_int8_runs_the_stored_export_and_reports_it(quantized, data_dir, tmp_path):
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    outs = {}
    for precision in ("f32", "int8"):
        out, report = tmp_path / f"{precision}.nii.gz", tmp_path / f"{precision}.json"
        proc = _cli("segment", "--model", quantized, ct, "-o", out, "--report", report, "--fast", "--device", "cpu",
                    "--precision", precision, "--progress", "none")
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[precision] = (out, json.loads(report.read_text()))
    backend = outs["int8"][1]["backend"]
    assert backend["precision"] == "int8" and backend["name"] in ("openvino", "onnxruntime")
    recorded = json.loads((quantized / "model.json").read_text())["exports"]["onnx_int8"]
    assert backend["int8_export"]["sha256"] == recorded["sha256"]
    assert backend["int8_export"]["labels_equal_to_float32"]["held_out_min_labels_equal"] >= HELD_OUT_BOUND
    assert outs["f32"][1]["backend"]["precision"] == "f32"  # never the default

    from unetrpp.image import read_image

    a, b = (np.asarray(read_image(outs[p][0]).array) for p in ("f32", "int8"))
    assert float((a == b).mean()) >= HELD_OUT_BOUND
    assert (b != 0).sum() > 0.5 * (a != 0).sum()  # int8 still segments the organs


@needs_ort
def test_int8_on_onnxruntime_agrees_with_openvino_int8(quantized, data_dir):
    """Both runtimes execute the same QDQ graph: their labels agree with each other and with float32."""
    from unetrpp import load
    from unetrpp.pipeline import SegmentOptions, segment

    if not is_installed("openvino"):
        pytest.skip("openvino not installed")
    model = load(quantized)
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    runs = {b: segment(model, ct, SegmentOptions(device="cpu", fast=True, backend=b, precision="int8"))
            for b in ("openvino", "onnxruntime")}
    for b, r in runs.items():
        assert r.report["backend"]["name"] == b and r.report["backend"]["precision"] == "int8"
    a, b = (np.asarray(r.labelmap.array) for r in runs.values())
    assert float((a == b).mean()) >= HELD_OUT_BOUND


@needs_ort
def test_tampered_or_stale_int8_export_is_refused_even_with_auto(quantized, tmp_path, data_dir):
    import safetensors.torch

    from unetrpp.hashing import sha256_file

    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    pkg = tmp_path / "tampered"
    shutil.copytree(quantized, pkg)
    raw = bytearray((pkg / "model-int8.onnx").read_bytes())
    raw[len(raw) // 3] ^= 0x01
    (pkg / "model-int8.onnx").write_bytes(bytes(raw))
    last = _error_line(_cli("segment", "--model", pkg, ct, "-o", tmp_path / "x.nii.gz", "--fast", "--precision", "int8",
                            "--progress", "none"))
    assert "SHA256" in last and "unetrpp quantize" in last
    assert not (tmp_path / "x.nii.gz").exists()

    stale = tmp_path / "stale"
    shutil.copytree(quantized, stale)
    state = {k: v * 1.01 if k.startswith("out1.") else v
             for k, v in safetensors.torch.load_file(str(stale / "weights.safetensors")).items()}
    safetensors.torch.save_file(state, str(stale / "weights.safetensors"))
    data = json.loads((stale / "model.json").read_text())
    data["weights"]["sha256"] = sha256_file(stale / "weights.safetensors")
    (stale / "model.json").write_text(json.dumps(data))
    last = _error_line(_cli("segment", "--model", stale, ct, "-o", tmp_path / "y.nii.gz", "--fast", "--precision",
                            "int8", "--progress", "none"))
    assert "stale" in last and "other weights" in last and "--overwrite" in last


def test_int8_is_refused_without_an_export_and_is_never_the_default(tmp_path, data_dir):
    from support.packages import make_tiny_package

    pkg = make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    if is_installed("onnxruntime") or is_installed("openvino"):
        last = _error_line(_cli("segment", "--model", pkg, ct, "-o", tmp_path / "o.nii.gz", "--precision", "int8",
                                "--progress", "none"))
        assert "no int8 export" in last and f"unetrpp quantize {pkg} --calibration" in last
    last = _error_line(_cli("segment", "--model", pkg, ct, "-o", tmp_path / "o.nii.gz", "--precision", "int8",
                            "--backend", "torch", "--progress", "none"))
    assert "not in PyTorch" in last
    assert not (tmp_path / "o.nii.gz").exists()
    for backend in ("auto", "openvino", "onnxruntime"):
        if backend == "auto" or is_installed(backend):
            assert choose_backend(backend, "cpu").precision == "f32"
    with pytest.raises(BackendError, match="CPU"):
        choose_backend("auto", "cuda", "int8")


def test_python_api_never_falls_back_from_int8(tmp_path):
    """`auto` falls back to PyTorch when an ONNX backend fails, but never from an explicit int8."""
    from support.packages import make_tiny_package

    from unetrpp import load

    if not (is_installed("onnxruntime") or is_installed("openvino")):
        pytest.skip("no ONNX runtime")
    model = load(make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4)))
    with pytest.raises(BackendError, match="unetrpp quantize"):
        model.predict(torch.randn(1, 16, 40, 32), device="cpu", fast=True, backend="auto", precision="int8")
    with pytest.raises(BackendError, match="unetrpp quantize"):
        model.optimized(backend="auto", device="cpu", precision="int8")


def test_only_pytorch_installed_int8_names_the_install(tmp_path, data_dir):
    from support.packages import make_tiny_package

    pkg = make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    last = _error_line(_cli("segment", "--model", pkg, ct, "-o", tmp_path / "o.nii.gz", "--precision", "int8",
                            "--progress", "none", env=HIDDEN))
    assert "pip install" in last
    last = _error_line(_cli("quantize", pkg, "--calibration", ct, env=HIDDEN))
    assert "pip install" in last
    assert "exports" not in json.loads((pkg / "model.json").read_text())


def test_bad_quantize_input_is_an_error_not_a_traceback(tmp_path, data_dir):
    from support.packages import make_tiny_package

    pkg = make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    last = _error_line(_cli("quantize", pkg, "--calibration", tmp_path / "missing.nii.gz"))
    assert "missing.nii.gz" in last
    last = _error_line(_cli("quantize", pkg, "--calibration", data_dir / "ct" / "example_ct_sm.nii.gz",
                            "--max-windows", "0"))
    assert "--max-windows" in last
    assert "exports" not in json.loads((pkg / "model.json").read_text())  # nothing stored


def test_calibration_windows_are_the_sliding_windows(data_dir):
    """The calibration windows are cut from the Segmenter's preprocessed volume exactly as the
    sliding window cuts the windows it runs (same starts, same zero padding)."""
    from unetrpp import load
    from unetrpp.backends.quantize import cut_window, preprocessed_scans, window_positions
    from unetrpp.predict import predict_probabilities

    model = load(DEMO)
    (_, volume), = preprocessed_scans(model, [data_dir / "ct" / "example_ct_sm.nii.gz"])
    volume = volume[:, :40, :70, :60]  # smaller than the patch along D: padded
    patch = tuple(model.manifest.network_config.patch_size)
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.extend(x.clone())
            return torch.zeros((x.shape[0], 14, *x.shape[2:]))

    predict_probabilities(Recorder(), volume, patch_size=patch, overlap=0.5, mirror_axes=(), device="cpu",
                          backend="torch", batch_size=1)
    positions = window_positions([volume], patch, 0.5, max_windows=10_000)
    assert len(positions) == len(seen) > 1
    for (i, start), ran in zip(positions, seen):
        assert np.array_equal(cut_window(volume, start, patch)[0], ran.numpy())
    few = window_positions([volume, volume], patch, 0.5, max_windows=3)
    assert len(few) == 3 and few[0][0] == 0 and few[-1][0] == 1  # spread over every scan


def test_precision_is_a_request_option_of_every_entry_point():
    from unetrpp.cli import build_parser
    from unetrpp.errors import RequestError
    from unetrpp.request import check_options, options_from_json
    from unetrpp.server.app import JOB_OPTIONS

    parser = build_parser()
    assert parser.parse_args(["segment", "--model", "m", "x.nii.gz", "-o", "y.nii.gz"]).precision == "auto"
    assert parser.parse_args(["batch", "--model", "m", "in", "-o", "out", "--precision", "int8"]).precision == "int8"
    assert parser.parse_args(["serve", "--precision", "int8", "--insecure-no-auth"]).precision == "int8"
    assert options_from_json('{"precision": "int8"}', allowed=JOB_OPTIONS)["precision"] == "int8"
    assert check_options()["precision"] == "auto"
    with pytest.raises(RequestError, match="precision"):
        options_from_json('{"precision": "int4"}', allowed=JOB_OPTIONS)
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "--model", "m", "x.nii.gz", "-o", "y.nii.gz", "--precision", "int4"])
