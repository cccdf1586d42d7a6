"""Official checkpoints (torch.save dicts with numpy scalars, optional `module.` prefix) import as
model packages, whichever numpy wrote them (the published ones: numpy 1.x); unsafe pickles are refused
without being executed."""

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
from unetrpp.official import _numpy_safe_globals, import_official_checkpoint, read_official_checkpoint
from support.official_checkpoint import (pickle_bytes, pickle_globals, save_as_numpy1,
                                         write_numpy1_official_checkpoint)

NUMPY1_FIXTURE = "official_checkpoint_structure_numpy1.model"  # ../shared/parity/README.md


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


def test_the_official_container_written_by_numpy1_is_read(parity_dir):
    """The shared fixture: the container of the published checkpoints, written by numpy 1.26.4."""
    fixture = parity_dir / NUMPY1_FIXTURE
    assert "numpy.core.multiarray scalar" in pickle_globals(fixture)  # the numpy-1 name
    ckpt = read_official_checkpoint(fixture)
    assert list(ckpt["state_dict"]) == ["encoder1.weight", "encoder1.num_batches_tracked"]  # DDP prefix gone
    torch.testing.assert_close(ckpt["state_dict"]["encoder1.weight"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert ckpt["epoch"] == 1000 and all(isinstance(v, np.float64) for v in ckpt["plot_stuff"][0])


def test_numpy1_writer_of_the_tests_gives_the_bytes_numpy1_wrote(parity_dir):
    """support.official_checkpoint writes what numpy 1.x writes: re-saving the fixture's objects with it
    (under this numpy, 2.x) reproduces the fixture's pickle byte for byte; plain torch.save does not."""
    fixture = parity_dir / NUMPY1_FIXTURE
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        raw = torch.load(fixture, map_location="cpu", weights_only=True)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        again, plain = Path(tmp) / "numpy1.model", Path(tmp) / "plain.model"
        save_as_numpy1(raw, again)
        torch.save(raw, plain)
        assert pickle_bytes(again) == pickle_bytes(fixture)
        if np.__version__.startswith("2."):
            assert "numpy._core.multiarray scalar" in pickle_globals(plain)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["synapse", "acdc", "brats", "lung"])
def test_full_size_official_checkpoints_written_by_numpy1_import_through_the_cli(tmp_path, variant):
    """Every variant, full size, in the published container (numpy-1 pickle, DDP prefix), through
    `unetrpp import-official`: every weight arrives unchanged."""
    ckpt = tmp_path / "model_final_checkpoint.model"
    net = write_numpy1_official_checkpoint(ckpt, variant, prefix="module." if variant != "brats" else "")
    assert "numpy.core.multiarray scalar" in pickle_globals(ckpt)
    out = tmp_path / "pkg"
    done = subprocess.run([sys.executable, "-m", "unetrpp", "import-official", "--variant", variant, str(ckpt),
                           "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ckpt.unlink()  # full-size files: keep the temporary folder small
    model = unetrpp.load(out)
    expected = net.state_dict()
    for k, v in model.network.state_dict().items():
        assert torch.equal(v, expected[k]), k
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


@pytest.mark.parametrize("writer", [torch.save, save_as_numpy1], ids=["numpy2-pickle", "numpy1-pickle"])
def test_checkpoint_needing_arbitrary_unpickling_is_refused_and_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.model"
    writer({"state_dict": {"a": torch.zeros(1)}, "plot_stuff": [np.float64(0.5)], "payload": _Exploit(str(marker))},
           ckpt)
    with pytest.raises(CheckpointError, match="refused") as info:
        import_official_checkpoint(ckpt, "synapse", tmp_path / "pkg")
    assert not marker.exists() and not (tmp_path / "pkg").exists()
    message = str(info.value)
    # says what was found, and that this file is not an official checkpoint as published
    assert "open`" in message and "not an official checkpoint as published" in message
    assert "get the file from the official release" not in message
    done = subprocess.run([sys.executable, "-m", "unetrpp", "import-official", "--variant", "synapse", str(ckpt),
                           "-o", str(tmp_path / "pkg")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: refused") and "Traceback" not in done.stderr
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
