"""Official checkpoints (torch.save dicts with numpy scalars, optional `module.` prefix) import as
model packages; unsafe pickles are refused without being executed."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import unetrpp
from unetrpp.errors import CheckpointError
from unetrpp.network import build_network
from unetrpp.network.deterministic import set_deterministic_weights
from unetrpp.official import import_official_checkpoint


def write_official_checkpoint(path, variant, prefix="", drop=(), dtype=torch.float32):
    """A checkpoint shaped like the official trainers' (deep supervision heads included)."""
    net = set_deterministic_weights(build_network(variant, deep_supervision=True).to(dtype))
    state = {prefix + k: v.clone() for k, v in net.state_dict().items() if k not in drop}
    torch.save(
        {
            "epoch": 1000,
            "state_dict": state,
            "optimizer_state_dict": None,
            "lr_scheduler_state_dict": None,
            "plot_stuff": ([np.float64(0.9), np.float64(0.8)], [np.float32(0.7)], [np.float64(0.1)], [np.float64(0.85)]),
            "best_stuff": (np.int64(998), np.float64(0.81), np.float64(0.82), np.int64(0)),
        },
        path,
    )
    return net


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["synapse", "acdc", "brats", "lung"])
def test_import_each_variant_keeps_every_weight(tmp_path, variant):
    ckpt = tmp_path / "model_final_checkpoint.model"
    net = write_official_checkpoint(ckpt, variant, prefix="module." if variant == "acdc" else "")
    out = import_official_checkpoint(ckpt, variant, tmp_path / "pkg")
    model = unetrpp.load(out)
    loaded = model.network.state_dict()
    for k, v in loaded.items():
        assert torch.equal(v, net.state_dict()[k]), k
    m = model.manifest
    assert m.data["provenance"]["source"] == "official-checkpoint"
    assert m.data["provenance"]["epochs"] == 1000
    assert len(m.data["provenance"]["checkpoint_sha256"]) == 64
    assert m.network_config.variant == variant
    assert [l.value for l in m.labels] == list(range(1, m.network_config.out_channels))
    assert all(l.terminology["category"]["scheme"] == "SCT" for l in m.labels)
    assert m.plan["target_spacing"]
    if variant == "brats":
        assert [i.name for i in m.inputs] == ["flair", "t1", "t1gd", "t2"]
        assert {r.name: r.labels for r in m.regions}["tumour core"] == (2, 3)


def test_cli_imports_and_rejects_wrong_variant(tmp_path):
    ckpt = tmp_path / "model_final_checkpoint.model"
    write_official_checkpoint(ckpt, "synapse", prefix="module.")
    out = tmp_path / "synapse-official"
    ok = subprocess.run([sys.executable, "-m", "unetrpp", "import-official", "--variant", "synapse", str(ckpt), "-o", str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((out / "model.json").read_text())["name"] == "synapse-official"

    bad = subprocess.run([sys.executable, "-m", "unetrpp", "import-official", "--variant", "acdc", str(ckpt), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "use --variant synapse" in bad.stderr and "wrong shape" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_missing_keys_are_listed(tmp_path):
    ckpt = tmp_path / "c.model"
    write_official_checkpoint(ckpt, "synapse", drop=("out1.conv.conv.weight", "encoder1.conv1.conv.weight"))
    with pytest.raises(CheckpointError, match=r"2 missing \(first: encoder1.conv1.conv.weight, out1.conv.conv.weight"):
        import_official_checkpoint(ckpt, "synapse", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_needing_arbitrary_unpickling_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.model"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": _Exploit(str(marker))}, ckpt)
    with pytest.raises(CheckpointError, match="refused"):
        import_official_checkpoint(ckpt, "synapse", tmp_path / "pkg")
    assert not marker.exists()


def test_plain_pickle_and_garbage_are_refused(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(CheckpointError):
        import_official_checkpoint(p, "synapse", tmp_path / "pkg")
    g = tmp_path / "g.model"
    g.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable"):
        import_official_checkpoint(g, "synapse", tmp_path / "pkg")
    with pytest.raises(CheckpointError, match="does not exist"):
        import_official_checkpoint(tmp_path / "nope.model", "synapse", tmp_path / "pkg")
