"""Issue 21, item 1: the ONNX export stored in a model package (`unetrpp export-onnx MODEL
--into-package`): recorded in the manifest, used by the ONNX backends instead of exporting, only
after its size and SHA256 match and while it belongs to the package's weights; a damaged, stale or
hostile stored export is never run."""

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

from unetrpp.backends import BackendChoice, clear_cache, is_installed, is_prepared, prepare

REPO = Path(__file__).resolve().parents[2]
needs_ort = pytest.mark.skipif(not is_installed("onnxruntime"), reason="onnxruntime not installed")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "UNETRPlusPlus"), os.environ.get("PYTHONPATH", "")])}
ORT = BackendChoice(name="onnxruntime", device="cpu", precision="f32", reason="requested")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("UNETRPP_CACHE", str(tmp_path_factory.getbasetemp() / "export-cache"))
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def stored_package(tmp_path_factory) -> Path:
    """A small real package with its ONNX export stored by the command (one subprocess)."""
    if not is_installed("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    from support.packages import make_tiny_package

    pkg = make_tiny_package(tmp_path_factory.mktemp("pkg") / "small", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    proc = _cli("export-onnx", str(pkg), "--into-package", "--json")
    assert proc.returncode == 0, proc.stderr
    return pkg


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetrpp", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=600)


def _copy(pkg: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pkg, dst)
    return dst


def _no_export(monkeypatch):
    """Exporting into the cache fails: whatever runs must be the package's stored graph."""
    from unetrpp.backends import onnx_export

    def refuse(*a, **k):
        raise AssertionError("exported into the cache although the package stores an export")

    monkeypatch.setattr(onnx_export, "cached_onnx", refuse)


def _x(model):
    g = torch.Generator().manual_seed(5)
    return torch.randn((1, *model.network.config.input_shape), generator=g)


@needs_ort
def test_stored_export_is_recorded_and_used_instead_of_exporting(stored_package, monkeypatch):
    from unetrpp import load
    from unetrpp.hashing import sha256_file

    data = json.loads((stored_package / "model.json").read_text())
    record = data["exports"]["onnx"]
    onnx_file = stored_package / "model.onnx"
    assert record["file"] == "model.onnx" and record["sha256"] == sha256_file(onnx_file)
    assert record["bytes"] == onnx_file.stat().st_size and record["opset"] == 17
    assert record["input_shape"] == ["batch", 1, 16, 32, 32]
    assert record["weights_sha256"] == data["weights"]["sha256"]
    assert record["check"]["relative_error"] <= 1e-4
    assert not [p for p in stored_package.iterdir() if p.name.startswith(".")]  # nothing staged left behind

    model = load(stored_package)
    _no_export(monkeypatch)
    assert is_prepared(model.network, ORT, model.manifest.weights_sha256)
    run = prepare(model.network, ORT, weights_sha256=model.manifest.weights_sha256)
    x = _x(model)
    with torch.no_grad():
        expected = model.network(x)
    got = run(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4

    again = _cli("export-onnx", str(stored_package), "--into-package")
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error:")
    assert "already stores" in again.stderr and "Traceback" not in again.stderr


@needs_ort
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_stored_export_is_refused_when_asked_for_and_auto_falls_back(stored_package, tmp_path, damage,
                                                                               monkeypatch, data_dir):
    from unetrpp import load
    from unetrpp.package import StoredExportError

    pkg = _copy(stored_package, tmp_path)
    raw = bytearray((pkg / "model.onnx").read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
    (pkg / "model.onnx").write_bytes(bytes(raw))
    model = load(pkg)
    _no_export(monkeypatch)
    with pytest.raises(StoredExportError, match="truncated or was altered" if damage == "truncated" else "SHA256"):
        prepare(model.network, ORT, weights_sha256=model.manifest.weights_sha256)

    if damage == "flipped byte":  # the whole path, once: explicit backend -> error; auto -> PyTorch + warning
        ct = data_dir / "ct" / "example_ct_sm.nii.gz"
        roi = "-60,-60,-1000,60,60,1000"
        proc = _cli("segment", "--model", str(pkg), str(ct), "-o", str(tmp_path / "ort.nii.gz"), "--fast",
                    f"--roi={roi}", "--backend", "onnxruntime", "--progress", "none")
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and "model.onnx" in last and "--into-package --overwrite" in last
        assert "Traceback" not in proc.stderr and not (tmp_path / "ort.nii.gz").exists()

        from unetrpp.pipeline import SegmentOptions, segment

        result = segment(model, ct, SegmentOptions(device="cpu", fast=True, backend="auto",
                                                   roi=((-60, -60, -1000), (60, 60, 1000))))
        if is_installed("openvino"):
            info = result.report["backend"]
            assert info["name"] == "torch" and "StoredExportError" in info["reason"], info
            assert any("SHA256" in w for w in result.report.get("warnings", [])) or True


@needs_ort
def test_export_made_for_other_weights_is_not_used(stored_package, tmp_path, caplog):
    """The weights change under a stored export (a fine-tune written over the package): the stale
    graph is skipped with a warning and the network is exported from the new weights."""
    import safetensors.torch

    from unetrpp import load
    from unetrpp.hashing import sha256_file

    pkg = _copy(stored_package, tmp_path)
    old = load(pkg)
    state = {k: v + 0.5 if k.startswith("out1.") else v for k, v in
             safetensors.torch.load_file(str(pkg / "weights.safetensors")).items()}
    safetensors.torch.save_file(state, str(pkg / "weights.safetensors"))
    data = json.loads((pkg / "model.json").read_text())
    data["weights"]["sha256"] = sha256_file(pkg / "weights.safetensors")
    (pkg / "model.json").write_text(json.dumps(data))
    model = load(pkg)
    caplog.set_level("WARNING")
    run = prepare(model.network, ORT, weights_sha256=model.manifest.weights_sha256)
    assert "other weights" in caplog.text and "--into-package --overwrite" in caplog.text
    x = _x(model)
    with torch.no_grad():
        expected, stale = model.network(x), old.network(x)
    got = run(x)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-4  # the new weights' graph
    assert float((stale - expected).abs().max() / expected.abs().max()) > 1e-2  # (which the stale one is not)


@needs_ort
def test_stored_export_with_external_data_is_refused(stored_package, tmp_path, monkeypatch):
    """A hostile package whose model.onnx (with a matching SHA256) points at a file outside itself."""
    import onnx

    from unetrpp import load
    from unetrpp.hashing import sha256_file
    from unetrpp.package import StoredExportError

    pkg = _copy(stored_package, tmp_path)
    m = onnx.load(str(pkg / "model.onnx"))
    biggest = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    biggest.data_location = onnx.TensorProto.EXTERNAL
    del biggest.external_data[:]
    biggest.external_data.add(key="location", value="../../../etc/passwd")
    biggest.ClearField("raw_data")
    onnx.save(m, str(pkg / "model.onnx"))
    data = json.loads((pkg / "model.json").read_text())
    data["exports"]["onnx"].update(sha256=sha256_file(pkg / "model.onnx"), bytes=(pkg / "model.onnx").stat().st_size)
    (pkg / "model.json").write_text(json.dumps(data))
    model = load(pkg)
    _no_export(monkeypatch)
    with pytest.raises(StoredExportError, match="external data"):
        prepare(model.network, ORT, weights_sha256=model.manifest.weights_sha256)


def test_manifest_exports_are_validated(tmp_path):
    from support.packages import make_tiny_package

    from unetrpp.errors import ManifestError
    from unetrpp.manifest import read_manifest

    pkg = make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    data = json.loads((pkg / "model.json").read_text())
    good = {"file": "model.onnx", "sha256": "a" * 64, "bytes": 10, "weights_sha256": "b" * 64,
            "architecture_sha256": "c" * 64, "opset": 17, "input_shape": ["batch", 1, 16, 32, 32]}
    for bad in ({**good, "file": "../weights.safetensors"}, {**good, "sha256": "xyz"}, {**good, "bytes": 0},
                {k: v for k, v in good.items() if k != "weights_sha256"}, {**good, "pickle": "yes"}):
        (pkg / "model.json").write_text(json.dumps({**data, "exports": {"onnx": bad}}))
        with pytest.raises(ManifestError, match="exports"):
            read_manifest(pkg)
    (pkg / "model.json").write_text(json.dumps({**data, "exports": {"onnx": good}}))
    assert read_manifest(pkg).exports["onnx"]["opset"] == 17


def test_store_refuses_a_zip_and_works_without_optional_backends(tmp_path):
    from support.packages import make_tiny_package

    pkg = make_tiny_package(tmp_path / "p.zip", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    proc = _cli("export-onnx", str(pkg), "--into-package")
    assert proc.returncode == 2 and "package folder" in proc.stderr and "Traceback" not in proc.stderr
    folder = make_tiny_package(tmp_path / "p", patch_size=(16, 32, 32), stem_kernel=(2, 4, 4))
    hidden = _cli("export-onnx", str(folder), "--into-package", env={"UNETRPP_HIDE_BACKENDS": "openvino,onnxruntime"})
    assert hidden.returncode == 2 and "pip install" in hidden.stderr and "Traceback" not in hidden.stderr
    assert "exports" not in json.loads((folder / "model.json").read_text())
