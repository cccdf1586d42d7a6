"""The module logic on a real MRML scene (slicer-core) with the REAL engine worker process
(`python -m unetrpp.worker`) and tiny deterministic-weights packages: names, colours, terminology,
geometry (incl. an oblique MRI and a DICOM series), tables, probabilities, .seg.nrrd round trip,
cancel, corrupt packages, crashes, out-of-memory and bad input, each leaving the scene unchanged."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import vtk
from slicer_support import load_volume

from UNETRPlusPlusLib.errors import CancelledByUser, InputError, ModelError, ModuleError, WorkerError, event_category
from UNETRPlusPlusLib.scene import read_segmentation, scene_snapshot, scene_volumes
from UNETRPlusPlusLib.segment import SegmentationLogic, resolve_model
from unetrpp.terminology import slicer_terminology_string as terminology_string
from UNETRPlusPlusLib.state import GuiState

pytestmark = pytest.mark.slicer

DATA_CT = "ct/example_ct_sm.nii.gz"
TIMEOUT = 120


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def export_labelmap(seg_node, reference, segment_ids=None):
    """Export segments onto the reference grid (private scene: nothing is added to the test's)."""
    scratch = slicer.vtkMRMLScene()
    out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    if segment_ids is None:
        seg_node.GetSegmentation().GetSegmentIDs(ids)
    else:
        for sid in segment_ids:
            ids.InsertNextValue(sid)
    assert slicer.vtkSlicerSegmentationsModuleLogic().ExportSegmentsToLabelmapNode(seg_node, ids, out, reference)
    return out


def segments(seg_node):
    s = seg_node.GetSegmentation()
    return [(s.GetNthSegmentID(i), s.GetNthSegment(i)) for i in range(s.GetNumberOfSegments())]


def manifest_of(pkg: Path) -> dict:
    return json.loads((pkg / "model.json").read_text())


@pytest.fixture()
def logic(scene):
    return SegmentationLogic(scene)


# Success ---------------------------------------------------------------------------------------------
def test_ct_segmentation_names_colours_terminology_geometry_table(scene, logic, data_dir, synapse_pkg, tmp_path):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    events = []
    run = logic.start(synapse_pkg, {"ct": ct}, fast=True, on_event=events.append)
    result = run.wait(timeout=TIMEOUT)
    after = scene_snapshot(scene)  # before the test's own exports (they add colour tables)
    assert not run.workdir.exists()

    seg = result.segmentation_node
    assert seg.GetScene() is scene and seg.GetName() == "abdomen synapse-tiny-test"
    manifest = manifest_of(synapse_pkg)
    got = segments(seg)
    assert [s.GetName() for _, s in got] == [l["name"] for l in manifest["labels"]]
    for (_, s), label in zip(got, manifest["labels"]):
        assert np.allclose(s.GetColor(), np.array(label["color"]) / 255.0)
        assert s.GetTerminology() == terminology_string(label["terminology"])
    assert "SCT^78961009^Spleen" in got[0][1].GetTerminology()

    # geometry: reference is the input volume; exported labelmap lies exactly on its grid
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ct
    exported = export_labelmap(seg, ct)
    assert exported.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    assert np.allclose(ijk_to_ras(exported), ijk_to_ras(ct), atol=1e-6)
    arr = slicer.util.arrayFromVolume(exported)

    # the table holds the report's volumes, and they match the voxels in the scene
    report = result.report
    table = result.table_node
    assert table is not None and table.GetNumberOfRows() == len(report["segments"])
    voxel_ml = np.prod(ct.GetSpacing()) / 1000.0
    for row, entry in enumerate(report["segments"]):
        assert table.GetCellText(row, 0) == entry["name"]
        assert table.GetTable().GetValue(row, 3).ToDouble() == pytest.approx(entry["volume_ml"], rel=1e-9)
        sid = next(sid for sid, s in got if s.GetName() == entry["name"])
        n = int(slicer.util.arrayFromVolume(export_labelmap(seg, ct, [sid])).astype(bool).sum())
        assert n == entry["voxels"] and entry["volume_ml"] == pytest.approx(n * voxel_ml, rel=1e-4)
    assert arr.any(), "deterministic weights should label some voxels"

    # only the new nodes were added; progress reached the GUI with stages in order
    assert after[: len(before)] == before
    added = {cls for _, cls, _ in after[len(before):]}
    assert added <= {"vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode", "vtkMRMLTableNode"}
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert stages[:3] == ["read", "preprocess", "predict"] and stages[-1] == "import"
    assert any(e["event"] == "progress" and e.get("eta_s") is not None for e in events)

    # saves to .seg.nrrd and reads back identically
    path = logic.save_segmentation(seg, tmp_path / "result.seg.nrrd")
    back = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(back)
    back_segments = segments(back)
    assert [s.GetName() for _, s in back_segments] == [s.GetName() for _, s in got]
    assert [s.GetTerminology() for _, s in back_segments] == [s.GetTerminology() for _, s in got]
    assert np.allclose([s.GetColor() for _, s in back_segments], [s.GetColor() for _, s in got])
    back_arr = slicer.util.arrayFromVolume(export_labelmap(back, ct))
    names_back = {s.GetLabelValue(): s.GetName() for _, s in back_segments}
    # compare segment by segment (label values inside the exported maps are assigned by order)
    assert np.array_equal(back_arr, arr)
    import slicerio

    assert [s["name"] for s in slicerio.read_segmentation(str(path))["segments"]] == [s.GetName() for _, s in got]
    assert names_back


@pytest.mark.slow
def test_bundled_demo_model_finds_the_organs_in_the_scene(scene, logic, data_dir):
    """The clinician's path with a model that has learnt something: the shipped demo model, chosen
    by name, on the CT in the scene; its segments overlap the reference organs (real Dice)."""
    import SimpleITK as sitk
    from unetrpp_train.demo import remap_totalseg

    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    result = logic.segment("demo-abdomen-ct", {"ct": ct}, fast=True, timeout=300)
    seg = result.segmentation_node
    assert seg.GetName() == "abdomen demo-abdomen-ct"
    ref = remap_totalseg(sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct" / "example_seg.nii.gz"))))
    by_name = {s.GetName(): sid for sid, s in segments(seg)}
    for value, organ in ((6, "liver"), (1, "spleen"), (8, "aorta")):
        mask = slicer.util.arrayFromVolume(export_labelmap(seg, ct, [by_name[organ]])) > 0
        truth = ref == value
        assert mask.shape == truth.shape
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.75, f"{organ}: Dice {dice:.3f}"

    # the results table from the real report (issue 19): the organs of this in-domain CT are OK, the
    # right kidney, cut by the scan's field of view, is marked as a lower bound beside its status
    from UNETRPlusPlusLib.results import overall_quality, result_rows

    report = result.report
    assert report["quality"]["status"] in ("ok", "review", "fail")
    rows = {r.name: r for r in result_rows(report)}
    for organ in ("liver", "spleen", "aorta"):
        assert rows[organ].status == "ok", (organ, rows[organ].reasons)
        assert rows[organ].status_text == "OK" and rows[organ].colour
    kidney = rows["right kidney"]
    assert kidney.partial and kidney.volume_text.startswith("\u2265") and "lower bound" in kidney.tooltip
    table = result.table_node
    titles = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert titles[4:] == ["Quality", "Volume is", "Reasons"]
    row = next(r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "right kidney")
    assert table.GetCellText(row, 5).startswith("lower bound")
    assert overall_quality(report)[0] == report["quality"]["status"]


def test_dicom_series_geometry(scene, logic, data_dir, synapse_pkg):
    series = sorted((data_dir / "ct_dicom" / "example_ct_dicom").iterdir())
    ct = load_volume(scene, series[0], "CT DICOM")
    assert ct.GetImageData().GetDimensions()[2] == len(series)  # the whole series, not one slice
    seg = logic.segment(synapse_pkg, {"ct": ct}, fast=True, timeout=TIMEOUT).segmentation_node
    exported = export_labelmap(seg, ct)
    assert exported.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    assert np.allclose(ijk_to_ras(exported), ijk_to_ras(ct), atol=1e-5)
    assert seg.GetSegmentation().GetNumberOfSegments() == 13


def test_rerun_replaces_the_chosen_output_and_loads_probabilities(scene, logic, data_dir, synapse_pkg):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    seg = logic.segment(synapse_pkg, {"ct": ct}, fast=True, timeout=TIMEOUT).segmentation_node
    seg.GetSegmentation().AddEmptySegment("", "my own segment")
    n_seg_nodes = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    second = logic.segment(synapse_pkg, {"ct": ct}, output_node=seg, fast=True, probabilities=True, timeout=TIMEOUT)
    assert second.segmentation_node is seg
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_seg_nodes
    names = [s.GetName() for _, s in segments(seg)]
    assert len(names) == 13 and "my own segment" not in names
    prob = second.probability_node
    assert prob is not None and prob.GetScene() is scene
    assert prob.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    assert np.allclose(ijk_to_ras(prob), ijk_to_ras(ct), atol=1e-5)
    p = slicer.util.arrayFromVolume(prob)
    assert 0.0 <= p.min() and p.max() <= 1.0 + 1e-6 and p.max() > 0


def test_brats_four_sequences_auto_assigned_with_regions(scene, logic, data_dir, brats_pkg):
    case = data_dir / "mr_brain" / "brats_case"
    for seq in ("t1c", "t1n", "t2f", "t2w"):
        load_volume(scene, case / f"{seq}.nii.gz", f"BraTS {seq}")
    model = resolve_model(brats_pkg)
    state = GuiState()
    state.set_volumes(scene_volumes(scene))
    state.set_models([model])
    assert state.segment_enabled()[0], state.segment_enabled()
    inputs = {name: scene.GetNodeByID(vid) for name, vid in state.assignments.items()}
    assert {k: v.GetName() for k, v in inputs.items()} == {
        "flair": "BraTS t2f", "t1": "BraTS t1n", "t1gd": "BraTS t1c", "t2": "BraTS t2w"}
    result = logic.segment(model, inputs, fast=True, timeout=TIMEOUT)
    seg = result.segmentation_node
    names = [s.GetName() for _, s in segments(seg)]
    assert names == ["oedema", "non-enhancing tumour", "enhancing tumour", "whole tumour", "tumour core",
                     "enhancing tumour region"]
    ref = inputs["flair"]
    ids = {s.GetName(): sid for sid, s in segments(seg)}
    count = lambda *n: int(slicer.util.arrayFromVolume(export_labelmap(seg, ref, [ids[x] for x in n])).astype(bool).sum())
    assert count("whole tumour") == count("oedema", "non-enhancing tumour", "enhancing tumour")
    assert count("tumour core") == count("non-enhancing tumour", "enhancing tumour")
    assert "SCT^12738006^Brain" in segments(seg)[3][1].GetTerminology()
    regions = {result.table_node.GetCellText(r, 0) for r in range(result.table_node.GetNumberOfRows())}
    assert {"whole tumour", "tumour core"} <= regions


def test_result_is_the_engines_seg_nrrd_and_must_lie_on_the_input_grid(scene, data_dir, synapse_pkg, tmp_path):
    """The scene gets the segments the engine's writer made (its segment ids, names, colours,
    terminology); a file on another grid is refused."""
    from unetrpp.image import read_image
    from unetrpp.manifest import read_manifest
    from unetrpp.segmentation import write_seg_nrrd

    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    image = read_image(data_dir / DATA_CT)
    labels = np.zeros(image.array.shape, np.uint8)
    labels[10:20, 30:40, 30:40] = 6  # liver
    manifest = read_manifest(synapse_pkg)
    path = tmp_path / "result.seg.nrrd"
    write_seg_nrrd(image.with_array(labels), manifest, path)
    staging = slicer.vtkMRMLScene()
    seg = read_segmentation(staging, path, ct)
    got = segments(seg)
    assert [sid for sid, _ in got] == [f"label_{l.value}" for l in manifest.labels]
    assert [s.GetName() for _, s in got] == [l.name for l in manifest.labels]
    assert [s.GetTerminology() for _, s in got] == [terminology_string(l.terminology) for l in manifest.labels]
    liver = export_labelmap(seg, ct, ["label_6"])
    assert np.array_equal(slicer.util.arrayFromVolume(liver).astype(bool), labels == 6)
    import dataclasses

    shifted = dataclasses.replace(image.with_array(labels), origin=tuple(o + 5.0 for o in image.origin))
    write_seg_nrrd(shifted, manifest, tmp_path / "shifted.seg.nrrd")
    with pytest.raises(WorkerError, match="does not match the input volume"):
        read_segmentation(slicer.vtkMRMLScene(), tmp_path / "shifted.seg.nrrd", ct)


def test_oblique_volume_geometry(scene, logic, data_dir, tmp_path):
    from slicer_support import make_package

    pkg = make_package(tmp_path / "acdc-tiny", "acdc", spacing=(8.0, 8.0, 8.0))
    mri = load_volume(scene, data_dir / "mr_brain" / "raw_unregistered" / "TCGA-FG-6692-t1c.nii.gz", "oblique t1c")
    direction = ijk_to_ras(mri)[:3, :3] / np.array(mri.GetSpacing())
    assert np.abs(direction - np.diag(np.diag(direction))).max() > 1e-3, "test volume should be oblique"
    seg = logic.segment(pkg, {"mri": mri}, fast=True, timeout=TIMEOUT).segmentation_node
    exported = export_labelmap(seg, mri)
    assert exported.GetImageData().GetDimensions() == mri.GetImageData().GetDimensions()
    assert np.allclose(ijk_to_ras(exported), ijk_to_ras(mri), atol=1e-5)
    assert slicer.util.arrayFromVolume(exported).any()


# Cancel / failures: scene unchanged, temp files gone -----------------------------------------------
def test_cancel_leaves_scene_unchanged(scene, logic, data_dir, slow_pkg):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    run = logic.start(slow_pkg, {"ct": ct}, fast=False)
    deadline = time.monotonic() + TIMEOUT
    while not any(e["event"] == "progress" and e.get("stage") == "predict" for e in run.events):
        assert not run.poll(), f"finished before it could be cancelled: {run.error}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    run.cancel()
    assert time.monotonic() - t0 < 10
    assert run.done and run.error is not None and run.error.kind == "cancelled"
    assert "scene was not changed" in str(run.error)
    assert not run.workdir.exists() and not run.proc.running
    assert scene_snapshot(scene) == before


def _corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    data = bytearray((dst / "weights.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "weights.safetensors").write_bytes(bytes(data))
    return dst


def test_failed_sha256_gives_clear_error_and_no_nodes(scene, logic, data_dir, synapse_pkg, tmp_path):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    bad = _corrupt_copy(synapse_pkg, tmp_path / "corrupt")
    before = scene_snapshot(scene)
    run = logic.start(bad, {"ct": ct}, fast=True)
    with pytest.raises(ModelError) as info:
        run.wait(timeout=TIMEOUT)
    assert info.value.category == "model" and "SHA256" in str(info.value) and "install it again" in str(info.value)
    assert run.proc.last_error["category"] == "model"  # the engine's event carries it (errors.classify)
    assert scene_snapshot(scene) == before and not run.workdir.exists()


def test_corrupt_manifest(scene, logic, data_dir, synapse_pkg, tmp_path):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    broken = tmp_path / "broken"
    shutil.copytree(synapse_pkg, broken)
    (broken / "model.json").write_text("{ not json")
    with pytest.raises(ModelError) as info:
        logic.start(broken, {"ct": ct})
    assert info.value.kind == "corrupt-model" and "unreadable" in str(info.value)
    manifest = manifest_of(synapse_pkg)
    manifest["plan"]["target_spacing"] = [-1, 1, 1]  # readable JSON, invalid for the engine's schema
    (broken / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError) as info:
        logic.segment(broken, {"ct": ct}, fast=True, timeout=TIMEOUT)
    assert info.value.category == "model" and "target_spacing" in str(info.value)
    assert scene_snapshot(scene) == before


CRASH = "import os, signal; print('{\"event\": \"stage\", \"stage\": \"read\", \"message\": \"x\"}', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
# the engine's own error event for a MemoryError (unetrpp.errors.classify), as the worker sends it
OOM_PY = ("import json, sys; from unetrpp.errors import classify; "
          "print(json.dumps({'event': 'error', **classify(MemoryError()).as_json()}), flush=True); sys.exit(2)")
OOM_KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.parametrize(
    "code, kind, text",
    [
        (CRASH, "crash", "crashed (stopped by signal 11)"),
        ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "crash", "crashed (exit code 3)"),
        (OOM_PY, "resource", "out of memory"),
        (OOM_KILLED, "out-of-memory", "killed by the system"),
    ],
)
def test_worker_crash_and_out_of_memory(scene, data_dir, synapse_pkg, code, kind, text):
    """Real processes that crash or run out of memory in place of the engine (the logic's command
    is configurable, e.g. another Python environment)."""
    logic = SegmentationLogic(scene, command=[sys.executable, "-c", code])
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    run = logic.start(synapse_pkg, {"ct": ct})
    with pytest.raises(WorkerError) as info:
        run.wait(timeout=60)
    assert info.value.kind == kind and text in str(info.value)
    assert scene_snapshot(scene) == before and not run.workdir.exists()


# Bad input (checked before anything runs) -------------------------------------------------------------
def _volume_from_array(scene, name, array, cls="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    image = vtk.vtkImageData()
    comps = array.shape[3] if array.ndim == 4 else 1
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk.VTK_FLOAT, comps)
    node.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(node)[:] = array
    return node


def test_bad_inputs_each_have_a_specific_message(scene, logic, data_dir, synapse_pkg, brats_pkg):
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    flat = _volume_from_array(scene, "scout", np.zeros((1, 64, 64), np.float32))
    four_d = _volume_from_array(scene, "perfusion", np.zeros((8, 16, 16, 5), np.float32), "vtkMRMLVectorVolumeNode")
    labels = _volume_from_array(scene, "labels", np.zeros((8, 16, 16), np.float32), "vtkMRMLLabelMapVolumeNode")
    before = scene_snapshot(scene)
    cases = [
        (synapse_pkg, {}, "no-volume", "No input volume selected"),
        (synapse_pkg, {"ct": None}, "no-volume", "No input volume selected"),
        (synapse_pkg, {"ct": flat}, "not-3d", "is a 2D image (64 x 64 x 1 voxels)"),
        (synapse_pkg, {"ct": four_d}, "not-3d", "5 values per voxel"),
        (synapse_pkg, {"ct": labels}, "wrong-inputs", "is a labelmap"),
        (synapse_pkg, {"mri": ct}, "wrong-inputs", "has no input(s) mri; it takes 1: ct"),
        (brats_pkg, {"flair": ct}, "wrong-inputs", "needs 4 input volume(s) (flair, t1, t1gd, t2); select a volume for t1, t1gd, t2"),
        (brats_pkg, {"flair": ct, "t1": ct, "t1gd": ct, "t2": ct}, "wrong-inputs", "selected for both 'flair' and 't1'"),
    ]
    for pkg, inputs, kind, text in cases:
        with pytest.raises(InputError) as info:
            logic.start(pkg, inputs)
        assert info.value.kind == kind, (inputs, info.value)
        assert text in str(info.value), (text, str(info.value))
    with pytest.raises(ModelError, match="neither a package path nor an installed model"):
        logic.start("no-such-model", {"ct": ct})
    assert scene_snapshot(scene) == before
    assert isinstance(InputError("x"), ModuleError)


@pytest.mark.slow
def test_out_of_domain_scan_is_flagged_in_the_results_table(scene, logic, data_dir):
    """A chest CT given to the abdominal demo model (issue 19): the run is not OK, the doubtful
    structures carry their status and reasons in the rows the module's table shows and in the
    scene's table node."""
    from UNETRPlusPlusLib.results import overall_quality, result_rows

    ct = load_volume(scene, data_dir / "ct_lung" / "lung1_image.nrrd", "chest")
    result = logic.segment("demo-abdomen-ct", {"ct": ct}, fast=True, timeout=300)
    status, text = overall_quality(result.report)
    assert status in ("review", "fail") and text.startswith("Quality:")
    doubtful = [r for r in result_rows(result.report) if r.status in ("review", "fail")]
    assert doubtful and all(r.reasons and r.reasons[0] in r.tooltip and r.colour for r in doubtful)
    table = result.table_node
    by_name = {table.GetCellText(r, 0): r for r in range(table.GetNumberOfRows())}
    for row in doubtful:
        assert table.GetCellText(by_name[row.name], 4) == row.status_text
        assert table.GetCellText(by_name[row.name], 6) == "; ".join(row.reasons)
