"""unetrpp.pipeline.segment on real volumes with tiny deterministic model packages: the outputs are
meaningless, but every geometry, report, file and cancellation check is real."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import SimpleITK as sitk

from segment_helpers import make_package
from unetrpp import load
from unetrpp.errors import CancelledError, InputImageError, OutputExistsError, UnetrppError
from unetrpp.image import read_image
from unetrpp.pipeline import SegmentOptions, default_report_path, parse_roi, segment
from unetrpp.segmentation import remove_small_components
from unetrpp.progress import Event

CT = "ct/example_ct_sm.nii.gz"
DICOM = "ct_dicom/example_ct_dicom"
OBLIQUE = "mr_brain/raw_unregistered/TCGA-FG-6692-t1c.nii.gz"
BRATS = "mr_brain/brats_case/{}.nii.gz"


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    return load(make_package(tmp_path_factory.mktemp("pkg") / "synapse-tiny"))


@pytest.fixture(scope="module")
def brats_model(tmp_path_factory):
    return load(make_package(tmp_path_factory.mktemp("pkg") / "brats-tiny", "brats", target_spacing=(8.0, 8.0, 8.0)))


def assert_same_grid(path_or_img, ref_path):
    ref = read_image(ref_path)
    out = path_or_img if not isinstance(path_or_img, (str, type(ref_path))) else read_image(path_or_img)
    assert out.size == ref.size
    np.testing.assert_allclose(out.spacing, ref.spacing, atol=1e-9)
    np.testing.assert_allclose(out.origin, ref.origin, atol=1e-6)
    np.testing.assert_allclose(out.direction, ref.direction, atol=1e-9)
    return out


def test_ct_to_seg_nrrd_with_report_and_confidence(ct_model, data_dir, tmp_path):
    import slicerio

    events: list[Event] = []
    out = tmp_path / "ct.seg.nrrd"
    result = segment(ct_model, {"ct": data_dir / CT},
                     SegmentOptions(output=out, fast=True, probabilities=tmp_path / "conf.nii.gz", sink=events.append))
    assert set(result.outputs) == {"segmentation", "report", "probabilities"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf.nii.gz", "ct.report.json", "ct.seg.nrrd"]
    # labelmap exactly on the input grid
    lab = result.labelmap
    assert_same_grid(lab, data_dir / CT)
    conf = assert_same_grid(tmp_path / "conf.nii.gz", data_dir / CT)
    assert 0.0 <= conf.array.min() and conf.array.max() <= 1.0 + 1e-6
    assert conf.array[lab.array > 0].min() > 1.0 / 14 - 1e-6  # the chosen class beats the uniform share
    # report: volumes are voxel counts x voxel volume, and the counts add up
    report = json.loads((tmp_path / "ct.report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    voxel_ml = 3.0 * 3.0 * 3.0 / 1000
    counts = np.bincount(lab.array.ravel(), minlength=14)
    for s in report["segments"]:
        assert s["voxels"] == counts[s["value"]]
        assert s["volume_ml"] == pytest.approx(s["voxels"] * voxel_ml)
    assert sum(s["voxels"] for s in report["segments"]) + counts[0] == lab.array.size
    assert report["model"]["name"] == "synapse-tiny-test"
    assert report["model"]["weights_sha256"] == ct_model.manifest.weights_sha256
    assert report["device"] == "cpu"
    assert set(report["timing_s"]) >= {"read", "preprocess", "predict", "postprocess", "write", "total"}
    assert report["timing_s"]["total"] >= sum(report["timing_s"][k] for k in ("read", "preprocess", "predict", "postprocess", "write")) - 1e-3
    assert report["options"]["mirror_axes"] == []
    # the .seg.nrrd reads back in slicerio with the manifest's names
    seg = slicerio.read_segmentation(str(out))
    names = {s["name"] for s in seg["segments"]}
    present = {s["name"] for s in report["segments"] if s["voxels"]}
    assert present and present <= names
    # progress events: every stage, in order, then done
    stages = [e.stage for e in events if e.event == "stage"]
    assert stages == ["read", "preprocess", "predict", "postprocess", "write"]
    assert events[-1].event == "done" and events[-1].outputs["segmentation"] == str(out)


def test_dicom_folder_to_nifti_labelmap(ct_model, data_dir, tmp_path):
    out = tmp_path / "dicom_labels.nii.gz"
    result = segment(ct_model, data_dir / DICOM, SegmentOptions(output=out, fast=True))
    written = read_image(out)
    ref = read_image(data_dir / DICOM)
    assert written.size == ref.size == (512, 512, 20)
    np.testing.assert_allclose(written.spacing, ref.spacing, atol=1e-6)
    np.testing.assert_allclose(written.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(written.direction, ref.direction, atol=1e-6)
    np.testing.assert_array_equal(written.array, result.labelmap.array)
    assert result.report["inputs"]["ct"]["size"] == [512, 512, 20]


def test_oblique_left_handed_input_nrrd(ct_model, data_dir, tmp_path):
    out = tmp_path / "oblique.nrrd"
    segment(ct_model, data_dir / OBLIQUE, SegmentOptions(output=out, fast=True))
    written = assert_same_grid(out, data_dir / OBLIQUE)
    assert np.linalg.det(written.direction) < 0
    assert written.array.dtype == np.uint8


def test_brats_named_inputs_with_aliases_and_regions(brats_model, data_dir, tmp_path):
    inputs = {n: data_dir / BRATS.format(n) for n in ("t2f", "t1n", "t1c", "t2w")}  # BraTS 2023 names
    result = segment(brats_model, inputs, SegmentOptions(output=tmp_path / "tumour.nii.gz", fast=True))
    assert_same_grid(tmp_path / "tumour.nii.gz", data_dir / BRATS.format("t2f"))
    assert set(result.report["inputs"]) == {"flair", "t1", "t1gd", "t2"}
    assert result.report["inputs"]["t1gd"]["source"].endswith("t1c.nii.gz")
    regions = {r["name"]: r for r in result.report["regions"]}
    seg = {s["value"]: s["voxels"] for s in result.report["segments"]}
    assert regions["whole tumour"]["voxels"] == seg[1] + seg[2] + seg[3]
    assert regions["tumour core"]["voxels"] == seg[2] + seg[3]
    assert regions["enhancing tumour region"]["voxels"] == seg[3]
    # outside the brain (cropped away as zero) is background
    assert not result.labelmap.array[read_image(inputs["t2f"]).array == 0].any() or result.state.crop_box != tuple(
        slice(0, n) for n in (155, 240, 240))


def test_wrong_inputs_name_the_expected_ones(brats_model, data_dir):
    with pytest.raises(InputImageError, match="missing: t2. Give each as --input NAME=PATH"):
        segment(brats_model, {n: data_dir / BRATS.format(n) for n in ("t2f", "t1n", "t1c")})
    with pytest.raises(InputImageError, match="no input named 'pd'; its inputs are flair"):
        segment(brats_model, {"pd": data_dir / BRATS.format("t2f")})


def test_roi_outside_is_background(ct_model, data_dir):
    ct = read_image(data_dir / CT)
    lo = ct.index_to_physical(np.array([30, 20, 5]))
    hi = ct.index_to_physical(np.array([90, 80, 25]))
    roi = (np.minimum(lo, hi).tolist(), np.maximum(lo, hi).tolist())
    result = segment(ct_model, ct, SegmentOptions(fast=True, roi=roi))
    inside = np.zeros(ct.array.shape, bool)
    inside[result.state.roi_box] = True
    assert result.state.roi_box == (slice(5, 26), slice(20, 81), slice(30, 91))
    assert not result.labelmap.array[~inside].any()
    assert result.labelmap.array[inside].any()
    assert result.outputs == {}


def test_existing_output_refused_then_overwritten(ct_model, data_dir, tmp_path):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="already exists.*--overwrite"):
        segment(ct_model, data_dir / CT, SegmentOptions(output=out, fast=True))
    assert out.read_bytes() == b"precious"
    default_report_path(out).write_text("{}")
    out.unlink()
    with pytest.raises(OutputExistsError, match="report output"):
        segment(ct_model, data_dir / CT, SegmentOptions(output=out, fast=True))
    assert not out.exists()
    segment(ct_model, data_dir / CT, SegmentOptions(output=out, fast=True, overwrite=True))
    assert_same_grid(out, data_dir / CT)
    assert json.loads(default_report_path(out).read_text())["segments"]


def test_cancel_leaves_nothing(ct_model, data_dir, tmp_path):
    cancel = threading.Event()

    def sink(event: Event) -> None:
        if event.event == "stage" and event.stage == "postprocess":
            cancel.set()

    with pytest.raises(CancelledError):
        segment(ct_model, data_dir / CT, SegmentOptions(output=tmp_path / "x.seg.nrrd", fast=True, sink=sink, cancel=cancel))
    assert list(tmp_path.iterdir()) == []
    cancel.set()
    with pytest.raises(CancelledError):
        segment(ct_model, data_dir / CT, SegmentOptions(output=tmp_path / "x.seg.nrrd", cancel=cancel))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(ct_model, data_dir, tmp_path):
    # the probability map's folder is replaced by a file during the run (a missing folder would be
    # created): the write fails and nothing of this run may be left behind
    sub = tmp_path / "sub"
    sub.mkdir()

    def sink(event: Event) -> None:
        if event.event == "stage" and event.stage == "write":
            sub.rmdir()
            sub.write_text("not a folder")

    with pytest.raises(Exception):
        segment(ct_model, data_dir / CT, SegmentOptions(output=tmp_path / "y.nii.gz", probabilities=sub / "p.nii.gz",
                                                        fast=True, sink=sink))
    assert [p.name for p in tmp_path.iterdir()] == ["sub"] and sub.read_text() == "not a folder"


def test_largest_component(tmp_path, data_dir):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 6
    labels[6:8, 6:8, 6:8] = 6
    labels[0, 9, 9] = 2
    labels[4, 4, 4] = 6  # touches the big blob at a corner only: kept (26-connectivity)
    assert remove_small_components(labels, [6, 2, 9]) == {2: 0, 6: 8, 9: 0}
    assert (labels == 6).sum() == 28 and (labels == 2).sum() == 1
    model = load(make_package(tmp_path / "lcc", inference={"largest_component_labels": list(range(1, 14))}))
    result = segment(model, data_dir / CT, SegmentOptions(fast=True))
    for v in range(1, 14):
        mask = result.labelmap.array == v
        if mask.any():
            _, n = __import__("scipy.ndimage", fromlist=["label"]).label(mask, structure=np.ones((3, 3, 3)))
            assert n == 1, v


def test_option_errors(ct_model, data_dir, tmp_path):
    with pytest.raises(UnetrppError, match="unknown format '.png'"):
        segment(ct_model, data_dir / CT, SegmentOptions(output=tmp_path / "x.png"))
    with pytest.raises(UnetrppError, match="cannot write segmentation output .*: .* is a file, not a folder"):
        segment(ct_model, data_dir / CT, SegmentOptions(output=data_dir / CT / "x.nii.gz"))  # a missing folder is created
    with pytest.raises(InputImageError, match="six numbers"):
        parse_roi("1,2,3")
    assert parse_roi("-10,-20,-30,10,20,30") == ((-10, -20, -30), (10, 20, 30))
    assert list(tmp_path.iterdir()) == []
