"""`unetrpp batch` on real CT cases: a batch killed midway resumes and completes with the outputs of
an uninterrupted run; an unreadable case is recorded and the batch goes on; case discovery
(files, DICOM folders, multi-input case folders) and deterministic sharding."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support.server import DEMO_MODEL, ENV, EXAMPLE_CT

CLI = [sys.executable, "-m", "unetrpp"]


def make_cohort(folder: Path) -> Path:
    """Four real CT cases (the example CT, cropped and flipped variants) and one unreadable file."""
    folder.mkdir()
    ct = sitk.ReadImage(str(EXAMPLE_CT))
    sitk.WriteImage(ct, str(folder / "case_a.nii.gz"))
    sitk.WriteImage(ct[:, :, 4:], str(folder / "case_b.nii.gz"))
    sitk.WriteImage(ct[10:, 5:, :], str(folder / "case_c.nrrd"))
    sitk.WriteImage(sitk.Flip(ct, [True, False, False]), str(folder / "case_d.mha"))
    (folder / "case_e.nii.gz").write_bytes(b"not an image at all")
    return folder


def summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def batch(cohort: Path, out: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "batch", "--model", str(DEMO_MODEL), str(cohort), "-o", str(out), "--fast",
                             "--device", "cpu", "--format", ".nii.gz", *extra], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_killed_batch_resumes_with_the_same_outputs(tmp_path):
    cohort = make_cohort(tmp_path / "cohort")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    proc = batch(cohort, reference)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err  # one case failed, the others are done
    rows = summary(reference / "summary.csv")
    assert {c: r["status"] for c, r in rows.items()} == {
        "case_a": "done", "case_b": "done", "case_c": "done", "case_d": "done", "case_e": "failed"}
    assert "not an image" in rows["case_e"]["error"] and rows["case_e"]["category"] == "input"  # errors.classify
    assert {r["category"] for c, r in rows.items() if c != "case_e"} == {""}
    assert float(rows["case_a"]["liver (mL)"]) > 100

    proc = batch(cohort, resumed, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (resumed / "case_a.nii.gz").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # killed midway, no chance to tidy up
    proc.communicate()
    done_before = {p.name for p in resumed.glob("case_*.nii.gz")}
    assert "case_a.nii.gz" in done_before and len(done_before) < 4

    proc = batch(cohort, resumed)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    rows = summary(resumed / "summary.csv")
    assert rows["case_a"]["status"] == "skipped" and rows["case_e"]["status"] == "failed"
    assert {r["status"] for c, r in rows.items() if c != "case_e"} <= {"done", "skipped"}
    for case in ("case_a", "case_b", "case_c", "case_d"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(resumed / f"{case}.nii.gz")))
        assert np.array_equal(a, b), case
        assert rows[case]["liver (mL)"] == summary(reference / "summary.csv")[case]["liver (mL)"]
    assert "1 failed" in out and "skipped" in out


def test_find_cases_and_shards(tmp_path):
    from unetrpp.batch import find_cases, shard
    from unetrpp.manifest import Manifest, read_manifest
    from unetrpp.official_models import official_manifest

    ct = read_manifest(DEMO_MODEL)
    cohort = tmp_path / "cohort"
    (cohort / "series_1").mkdir(parents=True)
    (cohort / "series_1" / "IM0001").write_bytes(b"")
    for name in ("x.nii.gz", "y.nrrd", "z.mha", ".hidden.nii.gz"):
        (cohort / name).write_bytes(b"")
    cases = find_cases([cohort, EXAMPLE_CT], ct)
    assert [c.name for c in cases] == ["example_ct_sm", "series_1", "x", "y", "z"]
    assert cases[1].inputs == {"ct": cohort / "series_1"}
    parts = [shard(cases, 2, i) for i in range(2)]
    assert [c.name for c in parts[0]] == ["example_ct_sm", "x", "z"] and [c.name for c in parts[1]] == ["series_1", "y"]
    assert shard(cases, 2, 1) == parts[1]  # deterministic
    with pytest.raises(Exception, match="part-id"):
        shard(cases, 2, 2)
    with pytest.raises(Exception, match="two cases are named 'x'"):
        find_cases([cohort, cohort / "x.nii.gz"], ct)

    data = official_manifest("brats", name="brats-test")
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    brats = Manifest(data)
    root = tmp_path / "brats"
    for case, names in (("p1", ("t2f.nii.gz", "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz")), ("p2", ("flair.nii.gz",))):
        (root / case).mkdir(parents=True)
        for n in names:
            (root / case / n).write_bytes(b"")
    found = find_cases([root], brats)
    assert [c.name for c in found] == ["p1", "p2"]
    assert found[0].problem is None and found[0].inputs["t1gd"] == root / "p1" / "t1c.nii.gz"
    assert "lacks input(s) t1, t1gd, t2" in found[1].problem
    assert find_cases([root / "p1"], brats)[0].name == "p1"  # one case folder given directly
