"""DICOM SEG output (`-o result.dcm`) for a real DICOM CT series, read back with highdicom/pydicom and
compared voxel for voxel with the labelmap on the source grid; refused for a non-DICOM input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pydicom
import pytest

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
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID and ds.StudyInstanceUID == src.StudyInstanceUID
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
