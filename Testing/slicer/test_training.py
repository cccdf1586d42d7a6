"""Improving a model from Slicer (issue 20 item 3): "Add to training cases" stores the input volume(s)
and the corrected segmentation of a real MRML scene as one case of a named case set in the nnU-Net raw
layout (through unetrpp_train.caseset, the one writer): segment names mapped to the model's label
values, geometry checked, provenance kept. "Fine-tune" starts `unetrpp-train finetune` as a background
task and turns its done event into before/after Dice per structure."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from slicer_support import load_volume

from UNETRPlusPlusLib.errors import InputError, ModuleError
from UNETRPlusPlusLib.modelstore import model_from_manifest
from UNETRPlusPlusLib.process import WorkerProcess, engine_environment
from UNETRPlusPlusLib.segment import resolve_model
from UNETRPlusPlusLib.training import (
    FineTuner, FineTuneResult, FineTuneTask, add_training_case, case_sets, cases_root, segment_label_values)

pytestmark = pytest.mark.slicer
DATA_CT = "ct/example_ct_sm.nii.gz"


def segmentation_from_array(scene, reference, array: np.ndarray, names: dict[int, str]):
    """A segmentation node on `reference`'s grid whose segments are the values of `array` (z, y, x),
    named as in `names` - what a user has after correcting a result in the Segment Editor."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "corrected labels")
    matrix = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    image = vtk.vtkImageData()
    image.SetDimensions(*reference.GetImageData().GetDimensions())
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    labelmap.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(labelmap)[:] = array
    slicer.util.arrayFromVolumeModified(labelmap)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "abdomen corrected")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert slicer.vtkSlicerSegmentationsModuleLogic().ImportLabelmapToSegmentationNode(labelmap, seg)
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment.SetName(names[segment.GetLabelValue()])
    scene.RemoveNode(labelmap)
    return seg


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETRPP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_add_case_stores_the_volume_and_the_corrected_segmentation(scene, home, data_dir, synapse_pkg):
    from UNETRPlusPlusLib.segment import SegmentationLogic  # registers the segmentation converters

    SegmentationLogic(scene)
    model = resolve_model(synapse_pkg)
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    shape = slicer.util.arrayFromVolume(ct).shape
    labels = np.zeros(shape, np.int16)
    labels[5:15, 20:40, 20:40] = 1   # "Liver" (the model's liver, value 6)
    labels[18:22, 50:60, 10:20] = 2  # "spleen" (value 1)
    labels[10:12, 25:30, 25:30] = 3  # "my lesion": a new name, drawn over the liver (later segment wins)
    seg = segmentation_from_array(scene, ct, labels, {1: "Liver", 2: "spleen", 3: "my lesion"})
    nodes_before = scene.GetNumberOfNodes()

    record = add_training_case(model, {"ct": ct}, seg, "abdomen", case_name="scan 7")
    assert scene.GetNumberOfNodes() == nodes_before  # nothing added to the user's scene
    folder = home / "cases" / "abdomen"
    assert record["case"] == "scan-7" and record["set"] == str(folder)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "ct"} and dataset["numTraining"] == 1
    assert dataset["labels"] == {"background": 0, "spleen": 1, "Liver": 6, "my lesion": 14}

    # the stored image is the scan, voxel for voxel and on its grid; the label lies on the same grid
    original = sitk.ReadImage(str(data_dir / DATA_CT))
    image = sitk.ReadImage(str(folder / "imagesTr" / "scan-7_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "scan-7.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    for img in (image, label):
        assert img.GetSize() == original.GetSize()
        assert np.allclose(img.GetOrigin(), original.GetOrigin(), atol=1e-3)
        assert np.allclose(img.GetDirection(), original.GetDirection(), atol=1e-5)
        assert np.allclose(img.GetSpacing(), original.GetSpacing(), atol=1e-5)
    stored = sitk.GetArrayFromImage(label)
    expected = np.select([labels == 3, labels == 1, labels == 2], [14, 6, 1], 0)
    # Slicer's array is in the node's IJK order, the file's in its own: both are the CT's grid here
    assert np.array_equal(stored, expected)

    provenance = json.loads((folder / "provenance" / "scan-7.json").read_text())
    assert provenance["source"]["model"] == "synapse-tiny-test"
    assert provenance["source"]["segmentation"] == "abdomen corrected"
    assert provenance["source"]["volumes"] == {"ct": "abdomen"}
    assert len(provenance["source"]["model_weights_sha256"]) == 64
    assert sorted(provenance["labels_present"]) == ["Liver", "my lesion", "spleen"]

    # a second case joins the set; the same name again is refused unless replacing is asked for
    add_training_case(model, {"ct": ct}, seg, "abdomen", case_name="scan-8")
    with pytest.raises(ModuleError) as info:
        add_training_case(model, {"ct": ct}, seg, "abdomen", case_name="scan-7")
    assert info.value.category == "output" and "already in" in str(info.value)
    add_training_case(model, {"ct": ct}, seg, "abdomen", case_name="scan-7", overwrite=True)
    (found,) = case_sets()
    assert found.name == "abdomen" and found.cases == ("scan-7", "scan-8") and found.channels == ("ct",)
    assert cases_root() == home / "cases"


def test_inputs_on_different_grids_are_refused(scene, home, data_dir, brats_pkg):
    from UNETRPlusPlusLib.segment import SegmentationLogic

    SegmentationLogic(scene)
    model = resolve_model(brats_pkg)
    case = data_dir / "mr_brain" / "brats_case"
    volumes = {name: load_volume(scene, case / f"{seq}.nii.gz", seq)
               for name, seq in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w"))}
    moved = volumes["t2"]
    matrix = vtk.vtkMatrix4x4()
    moved.GetIJKToRASMatrix(matrix)
    matrix.SetElement(0, 3, matrix.GetElement(0, 3) + 5.0)  # 5 mm off
    moved.SetIJKToRASMatrix(matrix)
    shape = slicer.util.arrayFromVolume(volumes["flair"]).shape
    labels = np.zeros(shape, np.int16)
    labels[60:70, 100:120, 100:120] = 1
    seg = segmentation_from_array(scene, volumes["flair"], labels, {1: "oedema"})
    with pytest.raises(InputError) as info:
        add_training_case(model, volumes, seg, "brain", case_name="moved")
    assert info.value.category == "input" and "not on the grid" in str(info.value) and "origin" in str(info.value)
    assert not (home / "cases" / "brain" / "labelsTr").exists() or not any((home / "cases" / "brain" / "labelsTr").iterdir())


def test_segment_names_to_label_values():
    from unetrpp.official_models import official_manifest

    brats = model_from_manifest(official_manifest("brats"), None)
    values, skipped = segment_label_values(
        ["Oedema", "enhancing_tumour", "whole tumour", "tumour core", "necrosis", "oedema"], brats)
    # regions (derived from the labels) are left out; a new name takes the next free value
    assert values == {"Oedema": 1, "enhancing_tumour": 3, "necrosis": 4}
    assert skipped == ["whole tumour", "tumour core", "oedema"]


def test_bad_requests_are_refused_before_anything_runs(scene, home, data_dir, synapse_pkg):
    model = resolve_model(synapse_pkg)
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    with pytest.raises(InputError, match="Case set name"):
        add_training_case(model, {"ct": ct}, None, "../outside")
    with pytest.raises(InputError, match="segmentation to store"):
        add_training_case(model, {"ct": ct}, None, "abdomen")
    tuner = FineTuner()
    with pytest.raises(InputError, match="holds no cases"):
        tuner.start(model, "abdomen", "synapse-tiny-test-ft")
    (home / "cases" / "abdomen").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no cases"):
        tuner.start(model, "abdomen", "synapse-tiny-test-ft")


def test_fine_tune_done_event_gives_dice_before_and_after(tmp_path):
    """The task's result from the command's done event (the form `unetrpp-train finetune --progress
    json` writes; a stand-in process sends it), progress relayed on the way."""
    done = {"event": "done", "model": "demo-ft", "package": str(tmp_path / "demo-ft"), "parent": "demo",
            "metrics": {"before": {"liver": 0.52, "spleen": 0.9}, "after": {"liver": 0.81, "spleen": 0.91}},
            "evaluation": {"held_out": False, "cases": ["a"], "note": "evaluated on all cases"}, "iterations": 4}
    code = (f"import json; print(json.dumps({{'event': 'progress', 'stage': 'train', 'done': 5, 'total': 10, "
            f"'fraction': 0.5, 'eta_s': 3.0}})); print({json.dumps(done)!r})")
    events = []
    task = FineTuneTask(WorkerProcess([sys.executable, "-c", code], env=engine_environment()), "demo-ft", events.append)
    result = task.wait(timeout=60)
    assert isinstance(result, FineTuneResult) and result.model_name == "demo-ft" and result.parent == "demo"
    assert result.package == tmp_path / "demo-ft" and result.note == "evaluated on all cases"
    assert result.rows() == [("liver", "0.520", "0.810", "+0.290"), ("spleen", "0.900", "0.910", "+0.010")]
    assert events[0]["stage"] == "train"


def test_panel_decisions(tmp_path):
    from UNETRPlusPlusLib.training import CaseSet
    from UNETRPlusPlusLib.training_panel import add_case_problem, default_new_name, finetune_problem
    from unetrpp.official_models import official_manifest

    assert default_new_name("demo-abdomen-ct", set()) == "demo-abdomen-ct-ft1"
    assert default_new_name("Demo", {"demo-ft1", "demo-ft2"}) == "demo-ft3"
    model = model_from_manifest(official_manifest("synapse"), tmp_path)
    absent = model_from_manifest(official_manifest("synapse"), None, installed=False)
    assert "installed model" in add_case_problem(absent, {}, None)
    assert "input volume" in add_case_problem(model, {"ct": None}, None)
    assert "corrected segmentation" in add_case_problem(model, {"ct": object()}, None)
    assert add_case_problem(model, {"ct": object()}, object()) == ""
    empty = CaseSet("s", tmp_path, (), {}, ("ct",))
    assert "at least one corrected case" in finetune_problem(model, empty, False)
    full = CaseSet("s", tmp_path, ("a",), {}, ("ct",))
    assert finetune_problem(model, full, False) == "" and "running" in finetune_problem(model, full, True)


def _corrected_case(scene, data_dir, model):
    """The example CT and its reference organs (what a corrected result looks like), in the scene."""
    from unetrpp_train.demo import remap_totalseg

    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    reference = remap_totalseg(sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct" / "example_seg.nii.gz"))))
    names = {label.value: label.name for label in model.labels}
    present = {int(v): names[int(v)] for v in np.unique(reference) if int(v) in names}
    return ct, segmentation_from_array(scene, ct, reference.astype(np.int16), present), present


def _digest(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_fine_tune_a_real_model_on_a_corrected_case_then_cancel_another(scene, home, data_dir, synapse_pkg):
    """The clinician's path, end to end with real processes: the parent installed, a corrected case
    added from the scene, `unetrpp-train finetune` run as a background task (progress with ETA in the
    GUI state), Dice before/after per structure, the new model listed beside the untouched parent;
    a second fine-tune cancelled mid-training installs nothing."""
    from UNETRPlusPlusLib import modelstore
    from UNETRPlusPlusLib.errors import CancelledByUser
    from UNETRPlusPlusLib.modeltasks import ModelManager
    from UNETRPlusPlusLib.segment import SegmentationLogic
    from UNETRPlusPlusLib.state import GuiState

    SegmentationLogic(scene)
    parent_path = ModelManager().install_from_file(synapse_pkg).wait(timeout=120)
    parent = resolve_model("synapse-tiny-test")
    before = _digest(parent_path)
    ct, seg, present = _corrected_case(scene, data_dir, parent)
    add_training_case(parent, {"ct": ct}, seg, "abdomen", case_name="example")

    state = GuiState()
    state.start_run()
    tuner = FineTuner(env=engine_environment({"OMP_NUM_THREADS": "1"}))
    task = tuner.start(parent, "abdomen", "synapse-tiny-ft", iterations=3, device="cpu",
                       on_event=state.apply_event, extra_args=["--workers", "0"])
    result = task.wait(timeout=900)
    stages = [e["stage"] for e in task.events if e["event"] == "stage"]
    assert "train" in stages and stages[-1] == "install"
    train = [e for e in task.events if e["event"] == "progress" and e["stage"] == "train"]
    assert train and train[-1]["done"] == 3 and all("eta_s" in e for e in train)
    assert any(line.startswith("Fine-tuning") for line in state.log)
    assert result.model_name == "synapse-tiny-ft" and result.package == home / "models" / "synapse-tiny-ft"
    assert result.parent == "synapse-tiny-test" and "none could be held out" in result.note
    rows = {name: (b, a) for name, b, a, _ in result.rows()}
    assert set(present.values()) <= set(rows)  # every corrected structure scored before and after
    assert all(b and a for b, a in rows.values())
    names = [m.name for m in modelstore.available_models()]
    assert "synapse-tiny-test" in names and "synapse-tiny-ft" in names
    assert _digest(parent_path) == before  # the parent stays as it was

    # Cancel: the fine-tune stops after its step (exit 130, category cancelled); nothing is installed
    task = tuner.start(parent, "abdomen", "synapse-tiny-ft2", iterations=500, device="cpu",
                       extra_args=["--workers", "0"])
    deadline = __import__("time").monotonic() + 600
    while not any(e["event"] == "progress" and e.get("stage") == "train" for e in task.events):
        assert not task.poll(), task.error
        assert __import__("time").monotonic() < deadline
        __import__("time").sleep(0.1)
    task.request_cancel()
    with pytest.raises(CancelledByUser, match="parent model is unchanged"):
        task.wait(timeout=120)
    assert task.proc.returncode == 130  # stopped by itself, not killed
    assert not (home / "models" / "synapse-tiny-ft2").exists()


@pytest.mark.slow
def test_fine_tune_on_a_server_with_allow_training(scene, home, data_dir, tmp_path):
    """Process on: a server (`unetrpp serve --allow-training`): the same panel action sends the case
    set as a fine-tune job of the server's model of that name (token in the environment, not the
    command line); progress comes back, the new package is installed here beside the parent."""
    from support.server import TOKENS, Server, write_tokens

    from UNETRPlusPlusLib import modelstore, remote
    from UNETRPlusPlusLib.segment import SegmentationLogic

    SegmentationLogic(scene)
    parent = resolve_model("demo-abdomen-ct")
    ct, seg, present = _corrected_case(scene, data_dir, parent)
    add_training_case(parent, {"ct": ct}, seg, "abdomen", case_name="example")
    (tmp_path / "srv").mkdir()
    server = Server(tmp_path / "srv" / "data", write_tokens(tmp_path / "srv")[0], "--allow-training",
                    "--max-train-iterations", "4")
    try:
        settings = remote.ServerSettings("server", server.url, TOKENS[0])
        tuner = FineTuner(server=settings)
        assert TOKENS[0] not in " ".join(tuner.command) and tuner.env[remote.TOKEN_ENV] == TOKENS[0]
        task = tuner.start(parent, "abdomen", "demo-abdomen-ct-ft", iterations=2)
        assert "--device" not in task.proc.args and task.proc.args[task.proc.args.index("--from") + 1] == "demo-abdomen-ct"
        result = task.wait(timeout=900)
    finally:
        server.stop()
    assert result.model_name == "demo-abdomen-ct-ft" and result.package == home / "models" / "demo-abdomen-ct-ft"
    assert set(present.values()) <= {name for name, *_ in result.rows()}
    assert any(e["event"] == "stage" and "on the server" in (e.get("message") or "") for e in task.events)
    assert "demo-abdomen-ct-ft" in [m.name for m in modelstore.installed_models()]
