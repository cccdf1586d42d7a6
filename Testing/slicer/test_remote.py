"""The Slicer module's "Process on: server" path, headless: the real Logic with the remote worker
command against a real `unetrpp serve` on 127.0.0.1 gives the segments of a local run; settings
stay out of the scene; a wrong token and an unreachable server are clear messages."""

from __future__ import annotations

import numpy as np
import pytest

import slicer
from slicer_support import load_volume
from support.server import Server, TOKENS, write_tokens

from UNETRPlusPlusLib import remote
from UNETRPlusPlusLib.segment import SegmentationLogic
from UNETRPlusPlusLib.process import engine_environment

DATA_CT = "ct/example_ct_sm.nii.gz"


class Settings:
    """The two calls of qt.QSettings the module uses (no Qt headless)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value) -> None:
        self.values[key] = value


def test_settings_round_trip_and_problems():
    settings = Settings()
    assert remote.load_settings(settings) == remote.ServerSettings()  # local by default
    chosen = remote.ServerSettings("server", "http://gpu:8890", TOKENS[0])
    remote.save_settings(settings, chosen)
    assert remote.load_settings(settings) == chosen
    assert remote.settings_problem(chosen) == ""
    assert "server address" in remote.settings_problem(remote.ServerSettings("server", "gpu:8890", "t"))
    assert "access token" in remote.settings_problem(remote.ServerSettings("server", "http://gpu:8890", ""))
    assert remote.settings_problem(remote.ServerSettings("local")) == ""
    command = remote.worker_command_for(chosen)
    assert command[-2:] == ["--server", "http://gpu:8890"] and TOKENS[0] not in command
    assert remote.worker_environment(chosen)[remote.TOKEN_ENV] == TOKENS[0]
    assert remote.TOKEN_ENV not in remote.worker_environment(remote.ServerSettings())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    srv = Server(folder / "data", write_tokens(folder)[0])
    yield srv
    srv.stop()


def labelmap(seg_node, reference) -> np.ndarray:
    """All segments (in their order) as one labelmap on the reference grid."""
    import vtk

    ids = vtk.vtkStringArray()
    seg_node.GetSegmentation().GetSegmentIDs(ids)
    out = seg_node.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic().ExportSegmentsToLabelmapNode(seg_node, ids, out, reference)
    return slicer.util.arrayFromVolume(out).copy()


@pytest.mark.slow
def test_remote_run_gives_the_segments_of_a_local_run(scene, data_dir, server):
    slicer.mrmlScene = scene
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    settings = remote.ServerSettings("server", server.url, TOKENS[0])
    assert [m["name"] for m in remote.server_models(settings)] == ["demo-abdomen-ct"]
    remote_logic = SegmentationLogic(scene, command=remote.worker_command_for(settings),
                                     env=remote.worker_environment(settings))
    events = []
    got = remote_logic.segment("demo-abdomen-ct", {"ct": ct}, fast=True, device="cpu", timeout=300,
                               on_event=events.append)
    assert any(e.get("event") == "stage" and "on the server" in (e.get("message") or "") for e in events)
    # the same torch thread count as the server (--threads 1): float sums in another order can flip a voxel
    local = SegmentationLogic(scene, env=engine_environment({"OMP_NUM_THREADS": "1"})).segment(
        "demo-abdomen-ct", {"ct": ct}, fast=True, device="cpu", timeout=300)
    a, b = labelmap(got.segmentation_node, ct), labelmap(local.segmentation_node, ct)
    assert a.max() > 0 and np.array_equal(a, b)
    assert got.report["segments"] == local.report["segments"]
    # the token is nowhere in the scene
    for node in scene.GetNodes():
        for attr in ("GetName", "GetDescription"):
            assert TOKENS[0] not in str(getattr(node, attr, lambda: "")())


@pytest.mark.slow
def test_wrong_token_and_unreachable_server_are_clear_messages(scene, data_dir, server):
    from unetrpp.client import ServerError

    slicer.mrmlScene = scene
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    wrong = remote.ServerSettings("server", server.url, "not-the-token-0123456789")
    with pytest.raises(ServerError, match="refused the token"):
        remote.server_models(wrong)
    logic = SegmentationLogic(scene, command=remote.worker_command_for(wrong), env=remote.worker_environment(wrong))
    with pytest.raises(Exception, match="refused the token"):
        logic.segment("demo-abdomen-ct", {"ct": ct}, fast=True, timeout=120)
    with pytest.raises(ServerError, match="cannot reach the server"):
        remote.server_models(remote.ServerSettings("server", "http://127.0.0.1:9", TOKENS[0]), timeout=5)
