"""Model management from the module: install from file / download through the engine's
`unetrpp models install` in a real process (progress relayed), SHA256 failures, listing without
torch, removal. Downloads come from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from UNETRPlusPlusLib import modelstore
from UNETRPlusPlusLib.errors import ModelError, ModuleError
from UNETRPlusPlusLib.modeltasks import ModelManager
from UNETRPlusPlusLib.state import GuiState

pytestmark = pytest.mark.slicer


@pytest.fixture()
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("UNETRPP_HOME", str(h))
    monkeypatch.setenv("UNETRPP_BUNDLED_MODELS", "")  # the shipped demo model stays out of these lists
    return h


@pytest.fixture()
def served(tmp_path, synapse_pkg):
    root = tmp_path / "www"
    root.mkdir()
    archive = root / "synapse-tiny-test.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(synapse_pkg.iterdir()):
            zf.write(f, f.name)

    def handler(*args, **kwargs):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

        return Quiet(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield archive, f"http://127.0.0.1:{httpd.server_address[1]}/{archive.name}"
    httpd.shutdown()
    httpd.server_close()


def _catalogue(tmp_path: Path, url: str, sha: str, size: int) -> Path:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [{
        "name": "synapse-tiny-test", "version": "1.0.0", "title": "Tiny test model", "summary": "test",
        "url": url, "sha256": sha, "size": size, "variant": "synapse", "inputs": ["ct"], "licence": "test",
    }]}))
    return path


def test_download_with_progress_then_listed_then_removed(home, tmp_path, served, monkeypatch):
    archive, url = served
    data = archive.read_bytes()
    monkeypatch.setenv("UNETRPP_CATALOGUE", str(_catalogue(tmp_path, url, hashlib.sha256(data).hexdigest(), len(data))))
    state = GuiState()
    state.set_models(modelstore.available_models())
    assert [(m.name, m.installed, m.downloadable) for m in state.models] == [("synapse-tiny-test", False, True)]
    assert "click Download" in state.segment_enabled()[1]
    events = []
    task = ModelManager().download("synapse-tiny-test", on_event=events.append)
    path = task.wait(timeout=60)
    assert path == home / "models" / "synapse-tiny-test" and (path / "weights.safetensors").is_file()
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["stage"] == "download" and progress[-1]["done"] == len(data)
    state.set_models(modelstore.available_models())
    model = state.model
    assert model.installed and model.input_names == ("ct",) and model.labels[0].name == "spleen"
    assert model.size and model.size > 0
    ModelManager.remove("synapse-tiny-test")
    assert modelstore.installed_models() == []
    with pytest.raises(ModelError, match="no installed model"):
        ModelManager.remove("synapse-tiny-test")


def test_download_failing_sha256_installs_nothing(home, tmp_path, served, monkeypatch):
    archive, url = served
    monkeypatch.setenv("UNETRPP_CATALOGUE", str(_catalogue(tmp_path, url, "0" * 64, archive.stat().st_size)))
    task = ModelManager().download("synapse-tiny-test")
    with pytest.raises(ModelError) as info:
        task.wait(timeout=60)
    assert info.value.category == "model" and "SHA256" in str(info.value)
    assert modelstore.installed_models() == []
    assert not (home / "downloads").exists() or not any((home / "downloads").iterdir())  # created folders go too


def test_install_from_file_folder_zip_and_corrupt(home, tmp_path, synapse_pkg, served):
    archive, _ = served
    manager = ModelManager()
    assert manager.install_from_file(synapse_pkg).wait(timeout=60).name == "synapse-tiny-test"
    again = manager.install_from_file(archive)
    with pytest.raises(ModuleError, match="already installed") as info:
        again.wait(timeout=60)
    assert info.value.category == "output"
    assert manager.install_from_file(archive, overwrite=True).wait(timeout=60).is_dir()
    bad = tmp_path / "bad"
    shutil.copytree(synapse_pkg, bad)
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[100] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    ModelManager.remove("synapse-tiny-test")
    with pytest.raises(ModelError) as info:
        manager.install_from_file(bad).wait(timeout=60)
    assert info.value.category == "model" and "SHA256" in str(info.value) and "Nothing was installed" in str(info.value)
    assert modelstore.installed_models() == []
    checkpoint = tmp_path / "model_final_checkpoint.model"
    checkpoint.write_bytes(b"not really")
    with pytest.raises(ModelError) as info:
        manager.install_from_file(checkpoint)
    assert info.value.kind == "needs-variant"
    with pytest.raises(ModelError) as info:  # an unreadable "official checkpoint" is refused by the engine
        manager.install_from_file(checkpoint, official_variant="synapse").wait(timeout=60)
    assert "not a readable PyTorch checkpoint" in str(info.value)
    assert modelstore.installed_models() == []


def test_bundled_demo_model_is_offered_and_not_removable(home, monkeypatch):
    monkeypatch.delenv("UNETRPP_BUNDLED_MODELS", raising=False)
    models = modelstore.available_models()
    demo = next(m for m in models if m.name == "demo-abdomen-ct")
    assert demo.installed and demo.bundled and demo.input_names == ("ct",)
    assert {l.name for l in demo.labels} >= {"liver", "spleen", "aorta"}
    assert modelstore.installed_models() == []
    state = GuiState()
    state.set_models(models)
    state.model_name = "demo-abdomen-ct"
    assert state.model.bundled


# synapse (DDP prefix, one CT input) and brats (no prefix, four MRI inputs, regions); all four variants
# go through the same reader in Testing/engine/test_official_import.py (about a minute each here)
@pytest.mark.parametrize("variant", ["synapse", "brats"])
def test_install_from_file_a_full_size_official_checkpoint_written_by_numpy1(home, tmp_path, variant):
    """Issue 22: the module's "Install from file..." path (the variant dialog's answer, then
    ModelManager.install_from_file in the engine's process) with a full-size checkpoint in the
    container the official trainers publish, pickled by numpy 1.x: installed, listed with the
    variant's inputs and labels, every weight unchanged."""
    import torch
    from support.official_checkpoint import pickle_globals, write_numpy1_official_checkpoint

    import unetrpp
    from UNETRPlusPlusLib.state import official_variant_choice

    ckpt = tmp_path / "model_final_checkpoint.model"
    net = write_numpy1_official_checkpoint(ckpt, variant, prefix="module." if variant != "brats" else "")
    assert "numpy.core.multiarray scalar" in pickle_globals(ckpt)
    manager = ModelManager()
    with pytest.raises(ModelError) as info:  # without the variant the module asks for it first
        manager.install_from_file(ckpt)
    assert info.value.kind == "needs-variant"
    chosen = official_variant_choice(True, variant, ("synapse", "acdc", "brats", "lung"))
    events = []
    path = manager.install_from_file(ckpt, official_variant=chosen, on_event=events.append).wait(timeout=600)
    ckpt.unlink()  # full-size files: keep the temporary folder small
    assert path.parent == home / "models" and (path / "weights.safetensors").is_file()
    (model,) = modelstore.installed_models()
    assert model.path == path and model.variant == variant and model.source == "official-checkpoint"
    state = GuiState()
    state.set_models(modelstore.available_models())
    state.select_model(model.name)
    assert state.model.installed and state.required_inputs() == model.inputs
    expected = net.state_dict()
    loaded = unetrpp.load(path).network.state_dict()
    assert set(loaded) <= set(expected) and len(loaded) > 100  # the deep-supervision heads are not kept
    assert all(torch.equal(v, expected[k]) for k, v in loaded.items())
    assert not any(e.get("event") == "error" for e in events)
