"""DICOM SEG output (`-o result.dcm`) for a real DICOM CT series (single-frame files, with or without
Study/Series UIDs, and Enhanced multi-frame files in both frame orders), read back with
highdicom/pydicom and compared voxel for voxel with the labelmap on the source grid, and validated by
an independent validator (dciodvfy); refused for a non-DICOM input or a source it cannot reference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest

from support.dicom import assert_valid_dicom, make_enhanced_ct, series_with_uids
from support.server import DEMO_MODEL, ENV, EXAMPLE_CT

DICOM = "ct_dicom/example_ct_dicom"
CLI = [sys.executable, "-m", "unetrpp"]


@pytest.fixture(scope="module")
def segmenter():
    import torch

    torch.set_num_threads(1)
    from unetrpp.segmenter import Segmenter

    return Segmenter(DEMO_MODEL, "cpu")


def test_dicom_seg_round_trip_is_exact(segmenter, data_dir, tmp_path):
    from unetrpp.dicom_seg import read_dicom_seg, write_dicom_seg
    from unetrpp.image import read_image

    source = data_dir / DICOM
    result = segmenter.run(source, fast=True)
    labels = result.labelmap.array
    assert labels.max() > 0 and len(np.unique(labels)) > 3
    out = write_dicom_seg(result.labelmap, segmenter.manifest, tmp_path / "seg.dcm")
    back = read_dicom_seg(out, source, segmenter.manifest, read_image(source))
    assert back.shape == labels.shape and np.array_equal(back, labels)

    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(source.iterdir()), stop_before_pixels=True)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    # the shared series is anonymised with its Study/Series UIDs blanked: the SEG has generated ones
    assert src.StudyInstanceUID == "" and ds.StudyInstanceUID and ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    # (these files carry their SOP instance UIDs in the file meta information only)
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                          for f in source.iterdir()}
    segments = {s.SegmentLabel: s for s in ds.SegmentSequence}
    labels_by_name = {l.name: l for l in segmenter.manifest.labels if l.value}
    assert set(segments) == set(labels_by_name)
    kidney = segments["right kidney"].SegmentedPropertyTypeCodeSequence[0]
    assert (kidney.CodeValue, kidney.CodingSchemeDesignator) == ("64033007", "SCT")
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert_valid_dicom(out)


@pytest.mark.slow
def test_cli_writes_dicom_seg_and_refuses_it_for_a_nifti_input(data_dir, tmp_path):
    out = tmp_path / "ct.dcm"
    proc = subprocess.run([*CLI, "segment", "--model", str(DEMO_MODEL), str(data_dir / DICOM), "-o", str(out), "--fast",
                           "--device", "cpu", "--progress", "none"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert pydicom.dcmread(out).Modality == "SEG" and (tmp_path / "ct.report.json").is_file()
    bad = tmp_path / "nifti.dcm"
    proc = subprocess.run([*CLI, "segment", "--model", str(DEMO_MODEL), str(EXAMPLE_CT), "-o", str(bad)],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "needs a DICOM series" in proc.stderr and "Traceback" not in proc.stderr
    assert not bad.exists()
    assert_valid_dicom(out)


# Without the network: a labelmap made from the CT itself (thresholds) on each kind of source --------
@pytest.fixture(scope="module")
def manifest():
    from unetrpp.manifest import read_manifest

    return read_manifest(DEMO_MODEL)


@pytest.fixture(scope="module")
def enhanced_ct(data_dir, tmp_path_factory):
    return make_enhanced_ct(data_dir, tmp_path_factory.mktemp("enhanced"))


def _threshold_labels(image, manifest):
    values = [l.value for l in manifest.labels if l.value]
    labels = np.zeros(image.array.shape, dtype=np.uint8)
    labels[(image.array > 0) & (image.array <= 200)] = values[0]
    labels[image.array > 200] = values[-1]
    return image.with_array(labels)


def _write_and_check(source, manifest, out):
    """Write a SEG of `source` and read it back voxel-exact; the SEG (validated by each test, last)."""
    from unetrpp.dicom_seg import read_dicom_seg, write_dicom_seg
    from unetrpp.image import read_image

    image = read_image(source)
    labelmap = _threshold_labels(image, manifest)
    write_dicom_seg(labelmap, manifest, out, source)
    np.testing.assert_array_equal(read_dicom_seg(out, source, manifest, image), labelmap.array)
    return pydicom.dcmread(out)


def test_seg_of_an_anonymised_series_has_generated_uids_and_validates(data_dir, manifest, tmp_path):
    """The shared series has empty StudyInstanceUID/SeriesInstanceUID: the SEG gets UIDs generated from
    the source's frame of reference and SOP Instance UIDs (the same for every SEG of that source) and
    references the real source instances."""
    source = data_dir / DICOM
    first = _write_and_check(source, manifest, tmp_path / "a.dcm")
    second = _write_and_check(source, manifest, tmp_path / "b.dcm")
    study = first.StudyInstanceUID
    assert study and study == second.StudyInstanceUID
    referenced = first.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == second.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced.SeriesInstanceUID not in ("", study, first.SeriesInstanceUID)
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID for f in source.iterdir()}
    assert_valid_dicom(tmp_path / "a.dcm", tmp_path / "b.dcm")


def test_seg_of_a_series_with_uids_keeps_them(data_dir, manifest, tmp_path):
    source = series_with_uids(data_dir, tmp_path / "series")
    src = pydicom.dcmread(next(source.iterdir()), stop_before_pixels=True)
    seg = _write_and_check(source, manifest, tmp_path / "seg.dcm")
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    # a SEG given back as an input is named for what it is
    from unetrpp.errors import InputImageError
    from unetrpp.image import read_image

    with pytest.raises(InputImageError, match="is a DICOM Segmentation .*not a scan"):
        read_image(tmp_path / "seg.dcm")
    assert_valid_dicom(tmp_path / "seg.dcm")


@pytest.mark.parametrize("order", ["feetward", "headward"])
def test_seg_of_an_enhanced_ct_references_its_frames(enhanced_ct, manifest, tmp_path, order):
    """An Enhanced CT source, as a folder or as the file: each SEG frame is matched to its source frame
    by position (whatever the frame order), validates, and reads back voxel-exact."""
    enhanced = pydicom.dcmread(enhanced_ct[order] / "enhanced.dcm", stop_before_pixels=True)
    for source in (enhanced_ct[order], enhanced_ct[order] / "enhanced.dcm"):
        seg = _write_and_check(source, manifest, tmp_path / f"{source.name}.dcm")
        assert enhanced.StudyInstanceUID == "" and seg.StudyInstanceUID  # copied blank from the series: generated
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == enhanced.SeriesInstanceUID
        frames = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in seg.PerFrameFunctionalGroupsSequence]
        assert {f.ReferencedSOPInstanceUID for f in frames} == {enhanced.SOPInstanceUID}
        # a frame of the SEG lies where the source frame it references lies
        for item, ref in zip(seg.PerFrameFunctionalGroupsSequence, frames):
            source_frame = enhanced.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
            assert (list(item.PlanePositionSequence[0].ImagePositionPatient)
                    == list(source_frame.PlanePositionSequence[0].ImagePositionPatient))
    segs = sorted(tmp_path.glob("*.dcm"))
    assert len(segs) == 2
    assert_valid_dicom(*segs)


def test_seg_refused_before_work_for_a_source_it_cannot_reference(data_dir, tmp_path):
    """No frame of reference, or no SOP Instance UID even in the file meta: refused, with what to do."""
    from unetrpp.dicom_seg import check_output_for_inputs
    from unetrpp.errors import InputImageError, classify

    for name, change in (("nofor", lambda ds: setattr(ds, "FrameOfReferenceUID", "")),
                         ("nosop", lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", ""))):
        folder = tmp_path / name
        folder.mkdir()
        for f in sorted((data_dir / DICOM).iterdir()):
            ds = pydicom.dcmread(f)
            change(ds)
            ds.save_as(folder / f.name)
        with pytest.raises(InputImageError, match="could not reference the images it segments.*Write .seg.nrrd") as err:
            check_output_for_inputs(tmp_path / "out.dcm", {"ct": folder})
        assert classify(err.value).category == "input"
    with pytest.raises(InputImageError, match="needs a DICOM series"):
        check_output_for_inputs(tmp_path / "out.dcm", {"ct": EXAMPLE_CT})
