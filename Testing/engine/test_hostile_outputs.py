"""Issue 12, outputs: no output ever replaces an input or the model (by path, symlink or hard link,
even with --overwrite); two runs writing the same output at once never silently replace each
other (no-clobber placement is one atomic step); an unwritable output folder is refused before
any inference; an output folder that does not exist yet is created (and removed again if the run
fails). Real `unetrpp segment` processes with the bundled demo model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from unetrpp.atomic import StagedOutputs, place
from unetrpp.errors import OutputExistsError, UnetrppError
from unetrpp.outputs import OutputPlan, protected_sources

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"
CLI = [sys.executable, "-m", "unetrpp"]


def segment_cmd(*args) -> list[str]:
    return [*CLI, "segment", "--model", str(DEMO_MODEL), "--fast", "--progress", "none", *map(str, args)]


def segment(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(segment_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr
    assert "[predict]" not in proc.stderr  # refused before any inference


@pytest.fixture()
def ct(tmp_path) -> Path:
    path = tmp_path / "ct.nii.gz"
    shutil.copyfile(EXAMPLE_CT, path)
    return path


# Item 3: outputs that are inputs ------------------------------------------------------------------
def test_output_equal_to_input_refused_even_with_overwrite(ct, tmp_path):
    """Issue 12 case 3: `-o ct.nii.gz --overwrite` replaced the CT by the labelmap, `--report
    ct.nii.gz --overwrite` by the JSON report."""
    before = ct.read_bytes()
    for args in (["-o", "ct.nii.gz"], ["-o", "out.nii.gz", "--report", "ct.nii.gz"]):
        assert_refused(segment("ct.nii.gz", *args, "--overwrite", cwd=tmp_path), "would replace .*an input of this run")
        assert ct.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_other_names_of_the_input_refused(ct, tmp_path, monkeypatch):
    """The same file under another name: a hard link, a symlink (either side), `..`, absolute vs
    relative; the probability map too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hard.nii.gz").hardlink_to(ct)
    (tmp_path / "sym.nii.gz").symlink_to(ct)
    (tmp_path / "sub").mkdir()
    cases = [
        ("ct.nii.gz", dict(output="hard.nii.gz")),
        ("sym.nii.gz", dict(output="ct.nii.gz")),
        ("ct.nii.gz", dict(output="sym.nii.gz")),
        ("ct.nii.gz", dict(output="sub/../ct.nii.gz")),
        ("ct.nii.gz", dict(output=str(ct))),
        (str(ct), dict(output="out.nii.gz", probabilities="ct.nii.gz")),
    ]
    for source, paths in cases:
        with pytest.raises(UnetrppError, match="would replace .*an input of this run"):
            OutputPlan.create(overwrite=True, protected=protected_sources({"ct": source}), **paths)


@pytest.mark.slow
def test_outputs_never_replace_the_model_or_a_dicom_input(tmp_path, data_dir):
    pkg = tmp_path / "pkg"
    shutil.copytree(DEMO_MODEL, pkg)
    manifest = (pkg / "model.json").read_bytes()
    proc = subprocess.run([*CLI, "segment", "--model", str(pkg), str(EXAMPLE_CT), "-o", str(tmp_path / "o.nii.gz"),
                           "--report", str(pkg / "model.json"), "--overwrite", "--progress", "none"],
                          capture_output=True, text=True, timeout=300)
    assert_refused(proc, "would replace a file in .*pkg")
    assert (pkg / "model.json").read_bytes() == manifest
    dicom = tmp_path / "series"
    shutil.copytree(data_dir / "ct_dicom/example_ct_dicom", dicom)
    first = sorted(dicom.iterdir())[0]
    proc = segment(dicom, "-o", dicom / "seg.nii.gz", "--report", first, "--overwrite", cwd=tmp_path)
    assert_refused(proc, "would replace a file in .*series")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg", "series"]


def test_detached_data_file_of_an_input_is_protected(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(EXAMPLE_CT)), str(tmp_path / "ct.nhdr"), False)
    data = next(p for p in tmp_path.iterdir() if p.suffix != ".nhdr")
    plan_args = dict(report=tmp_path / data.name, overwrite=True)
    with pytest.raises(UnetrppError, match="would replace"):
        OutputPlan.create(tmp_path / "o.nii.gz", protected=[tmp_path / "ct.nhdr"], **plan_args)


# Item 4: concurrent runs --------------------------------------------------------------------------
@pytest.mark.slow
def test_two_concurrent_runs_one_output(ct, tmp_path):
    """Issue 12 case 4: both said "wrote segmentation" and the second silently replaced the first.
    Now exactly one run writes; the other exits 2 naming the file, and nothing is mixed."""
    procs = [subprocess.Popen(segment_cmd(ct, "-o", tmp_path / "same.seg.nrrd"), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "Traceback" not in loser[2]
    assert re.search(r"^error: .*same\.(seg\.nrrd|report\.json) already exists", loser[2].strip().splitlines()[-1]), loser[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "same.report.json", "same.seg.nrrd"]


def test_no_clobber_placement_is_atomic(tmp_path):
    """The final step itself refuses an existing target (no check-then-rename window): a file
    that appears after every check but before placement is kept, and the run's files go away."""
    target = tmp_path / "out.txt"
    staging = StagedOutputs(overwrite=False)
    try:
        staging.path_for(tmp_path / "report.json").write_text("ours")
        staging.path_for(target).write_text("ours")
        staged = staging._files[1][0]
        target.write_text("another run")  # appears after the writer finished, before commit
        with pytest.raises(OutputExistsError, match="another run writing the same output"):
            place(staged, target)
        with pytest.raises(OutputExistsError):
            staging.commit()
    finally:
        staging.cleanup()
    assert target.read_text() == "another run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # report.json taken back, no temp


def test_no_clobber_folder_placement(tmp_path):
    staged = tmp_path / ".staged"
    staged.mkdir()
    (staged / "model.json").write_text("{}")
    target = tmp_path / "pkg"
    target.mkdir()
    with pytest.raises(OutputExistsError):
        place(staged, target)
    assert list(target.iterdir()) == [] and (staged / "model.json").exists()
    target.rmdir()
    place(staged, target)
    assert (target / "model.json").read_text() == "{}" and not staged.exists()


# Item 5 and "also": output folders ----------------------------------------------------------------
def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process really cannot write: mode 555 (enough unless running as root), else
    made immutable (root), else a read-only kernel folder."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)

    def writable(d: Path) -> bool:
        try:
            fd, name = tempfile.mkstemp(dir=d)
        except OSError:
            return False
        os.close(fd)
        os.unlink(name)
        return True

    if writable(folder) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if writable(folder):
        folder = Path("/sys/fs")
    if writable(folder):
        pytest.skip("no unwritable folder available to this process")
    return folder


@pytest.mark.slow
def test_unwritable_output_folder_refused_before_inference(ct, tmp_path):
    """Issue 12 case 5: the whole inference ran first, then a PermissionError traceback."""
    folder = _unwritable_folder(tmp_path)
    try:
        assert_refused(segment(ct, "-o", folder / "out.seg.nrrd", cwd=tmp_path), "is not writable")
        assert_refused(segment(ct, "-o", tmp_path / "ok.seg.nrrd", "--report", folder / "r.json", cwd=tmp_path),
                       "report output .* is not writable")
        assert_refused(segment(ct, "-o", folder / "new" / "deeper" / "out.nii.gz", cwd=tmp_path), "is not writable")
    finally:
        if folder.is_relative_to(tmp_path):
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
            folder.chmod(0o755)
    assert not (tmp_path / "ok.seg.nrrd").exists()


@pytest.mark.slow
def test_missing_output_folder_is_created(ct, tmp_path):
    """Chosen behaviour (as nnU-Net and TotalSegmentator): `-o` into folders that do not exist
    creates them when the outputs are written."""
    proc = segment(ct, "-o", "results/case1/ct.seg.nrrd", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "results" / "case1").iterdir()) == ["ct.report.json", "ct.seg.nrrd"]


def test_missing_output_folder_removed_when_the_run_fails(tmp_path):
    staging = StagedOutputs()
    try:
        staging.path_for(tmp_path / "a" / "b" / "out.txt").write_text("x")
        raise_here = True
    finally:
        staging.cleanup()  # never committed
    assert raise_here and list(tmp_path.iterdir()) == []


def test_output_under_a_file_refused(ct, tmp_path):
    assert_refused(segment(ct, "-o", "ct.nii.gz/out.nii.gz", cwd=tmp_path), "is a file, not a folder")


# Issue 18: batch goes through the same plan -------------------------------------------------------
def _batch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "batch", "--model", str(DEMO_MODEL), "--fast", "--device", "cpu", "--progress",
                           "none", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def _summary(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_batch_never_replaces_an_input_scan(tmp_path):
    """Issue 18: `unetrpp batch cts/ -o cts/ --format .nrrd --overwrite` with cts/case.nrrd an
    input replaced the scan by its segmentation and reported success; without --overwrite the
    case failed with the advice to pass --overwrite. Both are refused now, the scan untouched."""
    import SimpleITK as sitk

    cts = tmp_path / "cts"
    cts.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(EXAMPLE_CT)), str(cts / "case.nrrd"))
    before = (cts / "case.nrrd").read_bytes()
    for extra in (["--overwrite"], []):
        proc = _batch("cts", "-o", "cts", "--format", ".nrrd", *extra, cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # the case failed; the batch reports it
        assert "Traceback" not in proc.stderr, proc.stderr
        row = _summary(cts / "summary.csv")["case"]
        assert row["status"] == "failed" and row["category"] == "output", row
        assert re.search(r"would replace .*case\.nrrd, an input of this run", row["error"]), row
        assert "pass --overwrite" not in row["error"] and "pass --overwrite" not in proc.stderr
        assert (cts / "case.nrrd").read_bytes() == before
        assert sorted(p.name for p in cts.iterdir()) == ["case.nrrd", "summary.csv"]  # no report, no temp files


def test_batch_outputs_never_go_into_a_dicom_input(tmp_path, data_dir):
    """A DICOM series folder as the case and as the output folder: the summary and the case's
    outputs would land inside the input; refused before any work, the folder unchanged."""
    series = tmp_path / "series"
    shutil.copytree(data_dir / "ct_dicom/example_ct_dicom", series)
    before = sorted(p.name for p in series.iterdir())
    proc = _batch(series, "-o", series, "--overwrite", cwd=tmp_path)
    assert_refused(proc, "summary output .*would replace a file in .*series")
    assert sorted(p.name for p in series.iterdir()) == before
