"""Real DICOM test objects made from the shared CT series (../shared/data/ct_dicom/example_ct_dicom):
Enhanced (multi-frame) CT files made with highdicom's Legacy Converted Enhanced CT, in both frame
orders, a copy of the series with complete UIDs, and dciodvfy (Debian `dicom3tools`) as an
independent validator."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

SERIES = "ct_dicom/example_ct_dicom"


def _sources(data_dir: Path) -> list[pydicom.Dataset]:
    out = []
    for f in sorted((data_dir / SERIES).iterdir()):
        ds = pydicom.dcmread(f)
        if not ds.get("SOPInstanceUID"):  # these files carry their SOP UIDs in the file meta only
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        out.append(ds)
    return out


def legacy_enhanced_ct(data_dir: Path, transfer_syntax: str) -> pydicom.Dataset:
    """A real Legacy Converted Enhanced CT (highdicom) of the shared 20-slice series. highdicom
    stores the frames as the instance numbers run: feet-ward (z decreasing)."""
    import highdicom as hd

    return hd.legacy.LegacyConvertedEnhancedCTImage(
        _sources(data_dir), series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(),
        instance_number=1, transfer_syntax_uid=transfer_syntax)


def with_frames(ds: pydicom.Dataset, order: list[int]) -> pydicom.Dataset:
    """A copy of an uncompressed multi-frame data set holding its frames in `order` (pixel data
    and per-frame functional groups move together)."""
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = pydicom.dcmread(pydicom.filebase.DicomBytesIO(buf.getvalue()))
    frames = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out.PixelData = np.ascontiguousarray(frames[order]).tobytes()
    out.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in order]
    out.NumberOfFrames = len(order)
    return out


def make_enhanced_ct(data_dir: Path, root: Path) -> dict[str, Path]:
    """Folders under `root`, each holding one Enhanced CT file `enhanced.dcm` of the shared series:
    "feetward" as highdicom writes it (JPEG 2000 like the source, frames z decreasing), "headward"
    uncompressed with its frames stored z increasing, "plain" uncompressed feet-ward."""
    from pydicom.uid import ExplicitVRLittleEndian

    source_syntax = pydicom.dcmread(next((data_dir / SERIES).iterdir()), stop_before_pixels=True).file_meta.TransferSyntaxUID
    feet = legacy_enhanced_ct(data_dir, source_syntax)
    plain = legacy_enhanced_ct(data_dir, ExplicitVRLittleEndian)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in plain.PerFrameFunctionalGroupsSequence]
    assert z == sorted(z, reverse=True)  # feet-ward, as the instance numbers run
    head = with_frames(plain, list(range(len(z)))[::-1])
    out = {}
    for name, ds in (("feetward", feet), ("headward", head), ("plain", plain)):
        (root / name).mkdir(parents=True)
        ds.save_as(root / name / "enhanced.dcm", enforce_file_format=True)
        out[name] = root / name
    return out


def series_with_uids(data_dir: Path, dst: Path) -> Path:
    """A copy of the shared series (anonymised with its Study/Series/SOP Instance UIDs blanked) with
    valid UIDs in every data set, as an unmodified scanner export has them."""
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted((data_dir / SERIES).iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(dst / f.name)
    return dst


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines of dciodvfy (David Clunie's DICOM validator, Debian package `dicom3tools`)
    on a file; skips the test where dciodvfy is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (Debian/Ubuntu: apt-get install dicom3tools); the DICOM SEG "
                    "validation against an independent validator needs it")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors or proc.returncode == 0, f"dciodvfy failed without an error line: {lines}"
    return errors


def assert_valid_dicom(*paths: Path) -> None:
    """dciodvfy finds no error in any of `paths`. Call it last in a test: where dciodvfy is not
    installed the test is skipped here, saying why, after its other checks have run."""
    for path in paths:
        errors = dciodvfy_errors(path)
        assert errors == [], f"dciodvfy rejects {path}: {errors}"
