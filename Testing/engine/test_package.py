"""Model packages: schema-validated manifest, SHA256-checked weights, bit-identical round trips."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

import unetrpp
from unetrpp.errors import IntegrityError, ManifestError, OutputExistsError, PackageError
from unetrpp.manifest import Manifest
from unetrpp.network import build_network
from unetrpp.network.deterministic import set_deterministic_weights
from unetrpp.official_models import official_manifest
from support.packages import make_tiny_package, tiny_config


def _forward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *model.network.config.input_shape, generator=g)
    with torch.inference_mode():
        return model.network(x)


@pytest.mark.parametrize("suffix", ["", ".zip"])
def test_save_load_gives_bit_identical_outputs(tmp_path, suffix):
    cfg = tiny_config("synapse")
    net = build_network(cfg)
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    net.eval()
    manifest = official_manifest("synapse", name="roundtrip")
    manifest["architecture"] = cfg.to_dict()
    path = unetrpp.save_package(net, manifest, tmp_path / f"pkg{suffix}")
    model = unetrpp.load(path)
    assert not model.network.training
    x = torch.randn(1, *cfg.input_shape)
    with torch.inference_mode():
        assert torch.equal(model.network(x), net(x))
    assert model.manifest.name == "roundtrip"
    assert [l.name for l in model.manifest.labels][:3] == ["spleen", "right kidney", "left kidney"]
    assert model.manifest.labels[0].terminology["type"]["code"] == "78961009"


def test_tied_projection_is_stored_once_and_restored(tmp_path):
    path = make_tiny_package(tmp_path / "p")
    from safetensors import safe_open

    with safe_open(str(path / "weights.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any(".epa_block.E.weight" in k for k in keys)
    assert not any(".epa_block.F.weight" in k for k in keys)
    model = unetrpp.load(path)
    epa = model.network.unetr_pp_encoder.stages[0][0].epa_block
    assert epa.E is epa.F


def test_untied_projections_round_trip(tmp_path):
    path = make_tiny_package(tmp_path / "lung", variant="lung")
    model = unetrpp.load(path)
    epa = model.network.unetr_pp_encoder.stages[0][0].epa_block
    assert epa.E is not epa.F
    ref = set_deterministic_weights(build_network(model.network.config)).eval()
    assert torch.equal(epa.F.weight, ref.unetr_pp_encoder.stages[0][0].epa_block.F.weight)


def test_manifest_records_sha256_and_tampered_weights_are_refused(tmp_path):
    path = make_tiny_package(tmp_path / "p")
    data = json.loads((path / "model.json").read_text())
    assert len(data["weights"]["sha256"]) == 64
    w = path / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="SHA256"):
        unetrpp.load(path)


def test_tampered_zip_is_refused(tmp_path):
    folder = make_tiny_package(tmp_path / "p")
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(folder / "model.json", "model.json")
        zf.writestr("weights.safetensors", (folder / "weights.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError):
        unetrpp.load(z)


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.pop("labels"), "labels"),
        (lambda d: d["labels"][0].__setitem__("color", [300, 0, 0]), "labels[0].color[0]"),
        (lambda d: d["inputs"][0]["normalization"].__setitem__("scheme", "minmax"), "inputs[0].normalization"),
        (lambda d: d["plan"].__setitem__("target_spacing", [1, 1]), "plan.target_spacing"),
        (lambda d: d.__setitem__("name", "Has Spaces"), "name"),
        (lambda d: d["architecture"].__setitem__("patch_size", [30, 64, 64]), "architecture"),
        (lambda d: d["inputs"].append(dict(d["inputs"][0], name="second")), "inputs"),
        (lambda d: d["labels"].append({"value": 40, "name": "x", "color": [1, 2, 3]}), "labels"),
        (lambda d: d.__setitem__("schema_version", 99), "schema_version"),
        # a fine-tuned model's lineage must name its parent's weights (unetrpp-train finetune writes it)
        (lambda d: d["provenance"].__setitem__("lineage", {"parent": {"name": "demo", "version": "1.0.0",
                                                                      "weights_sha256": "not-a-sha"},
                                                           "data": {"sha256": "0" * 64, "cases": ["a"]},
                                                           "iterations": 5, "metrics": {"before": {}, "after": {}}}),
         "provenance.lineage.parent.weights_sha256"),
    ],
)
def test_bad_manifest_names_the_field(tmp_path, mutate, field):
    path = make_tiny_package(tmp_path / "p")
    data = json.loads((path / "model.json").read_text())
    mutate(data)
    with pytest.raises(ManifestError) as info:
        Manifest(data)
    assert f"'{field}" in str(info.value), str(info.value)


def test_missing_and_non_package_paths(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        unetrpp.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackageError, match="no model.json"):
        unetrpp.load(tmp_path / "empty")
    (tmp_path / "junk.bin").write_bytes(b"not a package")
    with pytest.raises(PackageError, match="neither"):
        unetrpp.load(tmp_path / "junk.bin")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "model.json").write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        unetrpp.load(tmp_path / "badjson")


def test_weights_for_another_network_are_refused(tmp_path):
    path = make_tiny_package(tmp_path / "p")
    other = make_tiny_package(tmp_path / "q", feature_size=16, proj_sizes=(16, 16, 16, 8))
    shutil.copy(other / "weights.safetensors", path / "weights.safetensors")
    data = json.loads((path / "model.json").read_text())
    data["weights"]["sha256"] = json.loads((other / "model.json").read_text())["weights"]["sha256"]
    (path / "model.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match="wrong shape"):
        unetrpp.load(path)


def test_existing_output_is_not_overwritten(tmp_path):
    path = make_tiny_package(tmp_path / "p")
    before = (path / "weights.safetensors").read_bytes()
    with pytest.raises(OutputExistsError):
        make_tiny_package(tmp_path / "p")
    assert (path / "weights.safetensors").read_bytes() == before


def test_invalid_manifest_writes_nothing(tmp_path):
    net = build_network(tiny_config())
    manifest = official_manifest("synapse")
    manifest["architecture"] = tiny_config().to_dict()
    manifest["labels"][0]["color"] = [1, 2]
    with pytest.raises(ManifestError):
        unetrpp.save_package(net, manifest, tmp_path / "p")
    assert list(tmp_path.iterdir()) == []
