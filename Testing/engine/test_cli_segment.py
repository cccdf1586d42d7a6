"""The real `unetrpp segment` command and `python -m unetrpp.worker` in subprocesses: exit codes,
JSON-lines progress, output geometry, and every bad input of issue 4 (clear message, exit 2, no
output file, no partial file left)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from segment_helpers import make_package
from unetrpp.image import read_image, write_image

CT = "ct/example_ct_sm.nii.gz"
DICOM = "ct_dicom/example_ct_dicom"
BRATS = "mr_brain/brats_case/{}.nii.gz"
CLI = [sys.executable, "-m", "unetrpp"]
WORKER = [sys.executable, "-m", "unetrpp.worker"]


@pytest.fixture(scope="module")
def ct_pkg(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "synapse-tiny")


@pytest.fixture(scope="module")
def brats_pkg(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "brats-tiny", "brats", target_spacing=(8.0, 8.0, 8.0))


def run(args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def brats_inputs(data_dir: Path) -> list[str]:
    return [a for n in ("t2f", "t1n", "t1c", "t2w") for a in ("--input", f"{n}={data_dir / BRATS.format(n)}")]


def test_segment_json_progress(ct_pkg, data_dir, tmp_path):
    out = tmp_path / "ct.seg.nrrd"
    proc = run(["segment", "--model", ct_pkg, data_dir / CT, "-o", out, "--fast", "--progress", "json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["read", "preprocess", "predict", "postprocess", "write"]
    done = events[-1]
    assert done["event"] == "done"
    assert done["outputs"] == {"segmentation": str(out), "report": str(tmp_path / "ct.report.json")}
    assert done["report"]["model"]["name"] == "synapse-tiny-test"
    assert json.loads((tmp_path / "ct.report.json").read_text())["segments"] == done["report"]["segments"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.report.json", "ct.seg.nrrd"]


def test_segment_labelmap_and_summary(ct_pkg, data_dir, tmp_path):
    out = tmp_path / "labels.nii.gz"
    proc = run(["segment", "--model", ct_pkg, data_dir / CT, "-o", out, "--fast", "--progress", "none",
                "--report", tmp_path / "r.json", "--probabilities", tmp_path / "p.nrrd"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote segmentation: {out}" in proc.stdout and "volume mL" in proc.stdout and "liver" in proc.stdout
    ref = read_image(data_dir / CT)
    for path in (out, tmp_path / "p.nrrd"):
        img = read_image(path)
        assert img.size == ref.size and img.spacing == ref.spacing
        np.testing.assert_allclose(img.origin, ref.origin, atol=1e-5)
        np.testing.assert_allclose(img.direction, ref.direction, atol=1e-9)
    report = json.loads((tmp_path / "r.json").read_text())
    labels = read_image(out).array
    for s in report["segments"]:
        assert s["voxels"] == int((labels == s["value"]).sum())
        assert s["volume_ml"] == pytest.approx(s["voxels"] * 27 / 1000)


def test_multi_input_model_with_named_inputs(brats_pkg, data_dir, tmp_path):
    proc = run(["segment", "--model", brats_pkg, *brats_inputs(data_dir), "-o", tmp_path / "t.seg.nrrd", "--fast",
                "--progress", "none"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "whole tumour (labels 1+2+3)" in proc.stdout


# Bad input: each gets a clear message, exit code 2 and no output ------------------------------
def _dicom_copy(data_dir: Path, dst: Path) -> list[Path]:
    dst.mkdir()
    files = sorted((data_dir / DICOM).iterdir())
    for f in files:
        shutil.copy(f, dst / f.name)
    return [dst / f.name for f in files]


def _case(name: str, data_dir: Path, tmp: Path, ct_pkg: Path, brats_pkg: Path) -> tuple[list, str]:
    """(CLI arguments after `segment`, expected message fragment) for one bad input."""
    ct = read_image(data_dir / CT)
    if name == "missing file":
        return ["--model", ct_pkg, tmp / "nope.nii.gz"], "does not exist"
    if name == "not an image":
        (tmp / "notes.nii.gz").write_text("not an image")
        return ["--model", ct_pkg, tmp / "notes.nii.gz"], "not an image"
    if name == "2D image":
        sitk.WriteImage(ct.to_sitk()[:, :, 12], str(tmp / "slice.nii.gz"))
        return ["--model", ct_pkg, tmp / "slice.nii.gz"], "2D image"
    if name == "4D image for a one-channel model":
        sitk.WriteImage(sitk.JoinSeries([ct.to_sitk(), ct.to_sitk()]), str(tmp / "two.nii.gz"))
        return ["--model", ct_pkg, tmp / "two.nii.gz"], "4D image"
    if name == "wrong input names":
        args = brats_inputs(data_dir)
        args[-1] = args[-1].replace("t2w=", "pd=")
        return ["--model", brats_pkg, *args], "no input named 'pd'; its inputs are flair"
    if name == "wrong number of inputs":
        return ["--model", brats_pkg, data_dir / BRATS.format("t2f")], "takes 4 inputs; give each as --input NAME=PATH with NAME in: flair, t1, t1gd, t2"
    if name == "too few named inputs":
        return ["--model", brats_pkg, *brats_inputs(data_dir)[:6]], "missing: t2"
    if name == "inputs that do not overlap":
        moved = read_image(data_dir / BRATS.format("t2w"))
        moved.origin = (moved.origin[0], moved.origin[1], moved.origin[2] + 400.0)
        write_image(moved, tmp / "moved.nii.gz")
        args = brats_inputs(data_dir)
        args[-1] = f"t2w={tmp / 'moved.nii.gz'}"
        return ["--model", brats_pkg, *args], "does not overlap input 'flair' in physical space"
    if name == "DICOM folder with mixed series":
        for i, f in enumerate(_dicom_copy(data_dir, tmp / "mixed")):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = f"1.2.3.{i % 2 + 1}"
            ds.save_as(f)
        return ["--model", ct_pkg, tmp / "mixed"], "holds 2 DICOM series (mixed series): '1.2.3.1' (10 files); '1.2.3.2' (10 files)"
    if name == "DICOM folder with missing slices":
        files = _dicom_copy(data_dir, tmp / "gap")
        files[9].unlink()
        return ["--model", ct_pkg, tmp / "gap"], "missing slice"
    if name == "NaN voxels":
        arr = ct.array.astype(np.float32)
        arr[15, 50, 60] = np.nan
        write_image(ct.with_array(arr), tmp / "nan.nrrd")
        return ["--model", ct_pkg, tmp / "nan.nrrd"], "NaN or infinite"
    if name == "weights failing the sha256 check":
        bad = tmp / "tampered"
        shutil.copytree(ct_pkg, bad)
        data = bytearray((bad / "weights.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (bad / "weights.safetensors").write_bytes(bytes(data))
        return ["--model", bad, data_dir / CT], "SHA256"
    if name == "output exists":
        (tmp / "out.seg.nrrd").write_text("keep me")
        return ["--model", ct_pkg, data_dir / CT], "already exists"
    raise AssertionError(name)


BAD_INPUTS = [
    "missing file", "not an image", "2D image", "4D image for a one-channel model", "wrong input names",
    "wrong number of inputs", "too few named inputs", "inputs that do not overlap", "DICOM folder with mixed series",
    "DICOM folder with missing slices", "NaN voxels", "weights failing the sha256 check", "output exists",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_clear_error_no_output(case, ct_pkg, brats_pkg, data_dir, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    args, expected = _case(case, data_dir, work, ct_pkg, brats_pkg)
    before = sorted(p.name for p in work.iterdir())
    out = work / "out.seg.nrrd"
    proc = run(["segment", *args, "-o", out, "--fast", "--progress", "none"], work)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in work.iterdir()) == before  # no output, no report, no partial file
    if case == "output exists":
        assert out.read_text() == "keep me"


# The Slicer module's worker process --------------------------------------------------------
def test_worker_json_lines_and_error_event(ct_pkg, data_dir, tmp_path):
    out = tmp_path / "w.seg.nrrd"
    proc = subprocess.run([*WORKER, "--model", str(ct_pkg), str(data_dir / CT), "-o", str(out), "--fast"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done" and Path(events[-1]["outputs"]["segmentation"]) == out
    proc = subprocess.run([*WORKER, "--model", str(ct_pkg), str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.seg.nrrd")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["kind"] == "InputImageError" and "does not exist" in last["message"]
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_worker_cancel_with_sigterm(ct_pkg, data_dir, tmp_path):
    out = tmp_path / "c.seg.nrrd"
    proc = subprocess.Popen([*WORKER, "--model", str(ct_pkg), str(data_dir / DICOM), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(json.loads(line))
            if lines[-1].get("stage") == "predict":
                time.sleep(0.5)
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines += [json.loads(l) for l in rest.splitlines()]
    assert proc.returncode == 130, err
    assert lines[-1]["event"] == "error" and lines[-1]["kind"] == "CancelledError"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
