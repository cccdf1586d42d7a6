"""Issue 18, "Done means": the neighbours of every rule, tried through every entry point, behave as
`unetrpp segment` does — the same exit code (batch: the case's category in summary.csv), the same
`error:` message with its category, no traceback, and the input files byte-identical afterwards.

Entry points: `unetrpp segment`, the worker (`python -m unetrpp.worker`, JSON events), `unetrpp
batch`, `unetrpp segment --server` (the remote client) and a real `unetrpp serve` on 127.0.0.1 driven
by httpx. The CLI entry points run in this process through their `main(argv)` (the same code as the
console scripts, minus the interpreter start that would make this file take minutes); the server and
the cancellation cases run as real processes. The demo model, `--fast`, the small example CT."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import SimpleITK as sitk

from support.server import ENV, EXAMPLE_CT, TOKENS, Server, wait_state, write_tokens

DEMO = "demo-abdomen-ct"
LOCAL = ("segment", "worker", "client")  # the entry points that take an output path (-o)
ALL = LOCAL + ("batch", "server")
INPUT_ENTRIES = ("segment", "worker", "client", "batch", "server")


# fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def own_home(tmp_path_factory):
    """A model cache of this module's own: `demo-abdomen-ct` names the bundled package, whatever
    another run installed in ~/.unetrpp."""
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("UNETRPP_HOME")
    os.environ["UNETRPP_HOME"] = str(home)
    ENV["UNETRPP_HOME"] = str(home)
    yield home
    if saved is None:
        os.environ.pop("UNETRPP_HOME", None)
    else:
        os.environ["UNETRPP_HOME"] = saved
    ENV.pop("UNETRPP_HOME", None) if saved is None else ENV.__setitem__("UNETRPP_HOME", saved)


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir) -> dict[str, Path]:
    """Writable copies of real inputs plus their hostile neighbours, made once."""
    import pydicom

    root = tmp_path_factory.mktemp("neighbours")
    f: dict[str, Path] = {"root": root}
    f["ct"] = root / "ct.nii.gz"
    shutil.copy(EXAMPLE_CT, f["ct"])
    f["dicom"] = root / "dicom"
    f["dicom"].mkdir()
    f["nouid"] = root / "nouid"
    f["nouid"].mkdir()
    for src in sorted((data_dir / "ct_dicom" / "example_ct_dicom").iterdir()):
        shutil.copyfile(src, f["dicom"] / src.name)
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = ""  # an anonymiser's blanked UIDs (issue 18, item 6)
        ds.SeriesInstanceUID = ""
        _crop(ds, 200, 160, 128)  # 128 x 128 x 20 voxels: a few seconds of inference per entry point
        ds.save_as(f["nouid"] / src.name)
    image = sitk.ReadImage(str(f["ct"]))
    size, spacing = image.GetSize(), image.GetSpacing()
    # a detached header whose data file has the name an output would take
    f["nhdr_dir"] = root / "nhdr"
    f["nhdr_dir"].mkdir()
    (f["nhdr_dir"] / "ct.nrrd").write_bytes(sitk.GetArrayFromImage(image).astype("<i2").tobytes())
    f["nhdr"] = f["nhdr_dir"] / "ct.nhdr"
    f["nhdr"].write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {size[0]} {size[1]} {size[2]}\n"
        f"space directions: ({spacing[0]},0,0) (0,{spacing[1]},0) (0,0,{spacing[2]})\n"
        "kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: (0,0,0)\ndata file: ct.nrrd\n\n")
    f["2d"] = root / "slice2d.nii.gz"
    sitk.WriteImage(image[:, :, size[2] // 2], str(f["2d"]))
    f["loop"] = root / "loop.nii.gz"
    f["loop"].symlink_to(f["loop"].name)
    f["corrupt"] = root / "corrupt.nii.gz"
    whole = f["ct"].read_bytes()
    f["corrupt"].write_bytes(whole[: len(whole) // 2])
    f["mri"] = root / "mri.nrrd"
    shutil.copyfile(data_dir / "mr_brain" / "pyradiomics" / "brain1_image.nrrd", f["mri"])
    return f


def _crop(ds, row: int, col: int, size: int) -> None:
    """Keep a size x size block of a single-frame DICOM image from (row, col), its position moved
    with it (ImagePositionPatient is the centre of the first pixel)."""
    import numpy as np
    from pydicom.uid import ExplicitVRLittleEndian

    block = ds.pixel_array[row:row + size, col:col + size]
    iop = [float(v) for v in ds.ImageOrientationPatient]
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    ds.ImagePositionPatient = [float(p) + col * dc * iop[i] + row * dr * iop[3 + i]
                               for i, p in enumerate(ds.ImagePositionPatient)]
    ds.Rows, ds.Columns = block.shape
    ds.PixelData = np.ascontiguousarray(block).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the source may be compressed


def digests(f: dict[str, Path]) -> dict[str, str]:
    """sha256 of every input file (the files of the input folders included)."""
    out = {}
    for key in ("ct", "dicom", "nouid", "nhdr_dir", "2d", "corrupt", "mri"):
        p = f[key]
        for q in (sorted(p.iterdir()) if p.is_dir() else [p]):
            if q.is_file() and not q.is_symlink() and q.name in _ORIGINAL.get(str(p), {q.name}):
                out[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()
    return out


_ORIGINAL: dict[str, set[str]] = {}


@pytest.fixture
def untouched(files):
    """The inputs are byte-identical after the test (the folders' original files; outputs a test
    writes next to them do not count)."""
    for key in ("dicom", "nouid", "nhdr_dir"):
        _ORIGINAL.setdefault(str(files[key]), {q.name for q in files[key].iterdir()})
    before = digests(files)
    yield
    assert digests(files) == before, "an input file was modified"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("neighbour-server")
    tokens = write_tokens(root)
    srv = Server(root / "data", tokens[0], "--max-upload-mb", "16")
    srv.client_token = tokens[1]
    yield srv
    srv.stop()


# running one entry point ---------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int | str  # exit code; server: HTTP status of the submission, or the job's final state
    category: str | None
    message: str
    stderr: str = ""


@contextlib.contextmanager
def _signals_kept():
    """The CLI installs SIGINT/SIGTERM handlers for cancellation; keep pytest's."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _main(fn, argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with _signals_kept():
        try:
            code = fn(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def _last_event(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return events[-1] if events else {}


def run_local(entry: str, inputs, output: Path, *extra: str, server: Server | None = None,
              overwrite: bool = False, capsys=None) -> Outcome:
    """`unetrpp segment`, the worker or `unetrpp segment --server` with JSON events: exit code,
    the error event's category and message, stderr."""
    from unetrpp import cli, worker

    given = [str(inputs)] if not isinstance(inputs, dict) else [a for k, v in inputs.items()
                                                                for a in ("--input", f"{k}={v}")]
    argv = ["--model", DEMO, "--fast", *given, "-o", str(output), *extra] + (["--overwrite"] if overwrite else [])
    if entry == "worker":
        code, out, err = _main(worker.main, argv, capsys)
    else:
        if entry == "client":
            argv += ["--server", server.url, "--token-file", str(server.client_token)]
        code, out, err = _main(cli.main, ["segment", *argv, "--progress", "json"], capsys)
    event = _last_event(out)
    if code:
        assert event.get("event") in ("error", "cancelled"), (entry, out, err)
        assert f"error: {event['message']}" in err or code == 130, (entry, err)
    return Outcome(code, event.get("category"), event.get("message", ""), err)


def run_batch(inputs, output_dir: Path, *extra: str, fmt: str = ".nii.gz", overwrite: bool = False,
              capsys=None) -> Outcome:
    """`unetrpp batch` on one case: a refused run (exit 2, message on stderr) or the case's row."""
    from unetrpp import cli

    argv = ["batch", "--model", DEMO, "--fast", str(inputs), "-o", str(output_dir), "--format", fmt, *extra]
    code, out, err = _main(cli.main, argv + (["--overwrite"] if overwrite else []), capsys)
    summary = output_dir / "summary.csv"
    if code == 2:  # refused before any case: the run's own error line
        line = next(l for l in err.splitlines() if l.startswith("error: "))
        return Outcome(code, None, line[len("error: "):], err)
    rows = list(csv.DictReader(summary.open())) if summary.is_file() else []
    assert len(rows) == 1, (out, err)
    return Outcome(code, rows[0]["category"] or None, rows[0]["error"], err)


def run_server(srv: Server, path: Path, options: dict | None = None, output_format: str | None = None,
               field: str = "ct", tmp: Path | None = None) -> Outcome:
    """POST /v1/jobs with a real HTTP client (a folder goes as a zip, as the client sends it); the
    refusal's status and body, or the job's final state, category and error."""
    if path.is_dir():
        archive = tmp / f"{path.name}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for q in sorted(path.iterdir()):
                zf.write(q, q.name)
        path = archive
    data = {"model": DEMO, "options": json.dumps(options if options is not None else {"fast": True})}
    if output_format:
        data["output_format"] = output_format
    with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=120) as c, open(path, "rb") as fh:
        r = c.post("/v1/jobs", data=data, files={field: (path.name, fh)})
        if r.status_code != 202:
            body = r.json()
            return Outcome(r.status_code, body.get("category"), body.get("error", ""))
        st = wait_state(c, r.json()["id"], ("done", "failed", "cancelled"), timeout=300)
        outcome = Outcome(st["state"], st.get("category"), st.get("error") or "")
        outcome.job = st["id"]
        return outcome


def no_traceback(*outcomes: Outcome) -> None:
    for o in outcomes:
        assert "Traceback" not in o.stderr and "internal error" not in o.message, o


# output rules: segment, worker, client take -o; batch names its outputs by case ----------------------
@pytest.mark.parametrize("entry", LOCAL + ("batch",))
@pytest.mark.parametrize("rule", ["same path", "symlink", "hard link", "nhdr data file", "inside dicom folder",
                                  "symlink loop", "parent is a file"])
def test_an_output_never_replaces_an_input(entry, rule, files, server, capsys, tmp_path, untouched):
    """Every name of an input as an output path is refused with the same output error, even with
    --overwrite; nothing is written."""
    ct, inputs, fmt, expect = files["ct"], files["ct"], ".nii.gz", "an input of this run"
    if rule == "same path":
        target = ct
    elif rule == "symlink":
        target = tmp_path / "ct.nii.gz"
        target.symlink_to(ct)
    elif rule == "hard link":
        target = tmp_path / "ct.nii.gz"
        os.link(ct, target)
    elif rule == "nhdr data file":
        inputs, target, fmt = files["nhdr"], files["nhdr_dir"] / "ct.nrrd", ".nrrd"
    elif rule == "inside dicom folder":
        inputs, target, fmt = files["dicom"], files["dicom"] / "dicom.dcm", ".dcm"
        expect = "a file in"
    elif rule == "symlink loop":
        target = tmp_path / "ct.nii.gz"
        target.symlink_to(target.name)
        expect = "cannot be used"
    else:  # the output folder is a file
        target = tmp_path / "file" / "ct.nii.gz"
        (tmp_path / "file").write_text("a file")
        expect = "is a file, not a folder"
    if entry == "batch":
        o = run_batch(inputs, target.parent, fmt=fmt, overwrite=True, capsys=capsys)
        if rule == "inside dicom folder":  # the summary is refused first, for the whole run
            assert o.code == 2 and "summary output" in o.message and expect in o.message, o
        elif rule == "parent is a file":
            assert o.code == 2 and expect in o.message, o
        else:
            assert (o.code, o.category) == (1, "output") and expect in o.message, o
    else:
        o = run_local(entry, inputs, target, server=server, overwrite=True, capsys=capsys)
        assert (o.code, o.category) == (2, "output") and expect in o.message, o
        assert "--overwrite never replaces an input" in o.message or rule in ("symlink loop", "parent is a file")
    no_traceback(o)
    if rule == "symlink loop":
        assert target.is_symlink() and os.readlink(target) == target.name


@pytest.mark.parametrize("entry", LOCAL)
def test_no_clobber_and_missing_folders(entry, files, server, capsys, tmp_path, untouched):
    existing = tmp_path / "seg.nii.gz"
    existing.write_bytes(b"keep me")
    o = run_local(entry, files["ct"], existing, server=server, capsys=capsys)
    assert (o.code, o.category) == (2, "output") and "already exists; choose another path or pass --overwrite" in o.message
    assert existing.read_bytes() == b"keep me"
    report = tmp_path / "seg.report.json"  # the report is a file of the run too
    o = run_local(entry, files["ct"], tmp_path / "other.nii.gz", "--report", str(existing), server=server,
                  capsys=capsys)
    assert (o.code, o.category) == (2, "output") and "already exists" in o.message and not report.exists()
    no_traceback(o)


def test_batch_keeps_a_finished_case(files, capsys, tmp_path, untouched):
    """Batch's neighbour of no-clobber: a case whose output exists (and no report) is an output
    error for that case, the file is kept."""
    (tmp_path / "ct.nii.gz").write_bytes(b"keep me")
    o = run_batch(files["ct"], tmp_path, capsys=capsys)
    assert (o.code, o.category) == (1, "output") and "already exists" in o.message, o
    assert (tmp_path / "ct.nii.gz").read_bytes() == b"keep me"


# input rules: every entry point ----------------------------------------------------------------------
INPUT_RULES = {  # rule -> (fixture key or None, extra CLI args, server options, expected category, phrase)
    "2D input": ("2d", (), None, "input", "is a 2D image"),
    "corrupt gzip": ("corrupt", (), None, "input", "damaged or truncated"),
    "symlink loop": ("loop", (), None, "input", "symbolic link loop"),
    "roi max below min": ("ct", ("--roi", "10,10,10,0,0,0"), {"fast": True, "roi": [[10, 10, 10], [0, 0, 0]]},
                          "input", "each max must be greater than its min"),
    "roi five numbers": ("ct", ("--roi", "1,2,3,4,5"), {"fast": True, "roi": [1, 2, 3, 4, 5]},
                         "input", "give six numbers"),
    "roi outside the image": ("ct", ("--roi", "1e6,1e6,1e6,2e6,2e6,2e6"),
                              {"fast": True, "roi": [[1e6] * 3, [2e6] * 3]}, "input", "does not overlap the input"),
    "strict MRI into the CT model": ("mri", ("--strict",), {"fast": True, "strict": True}, "quality",
                                     "refused (--strict)"),
}


@pytest.mark.parametrize("entry", INPUT_ENTRIES)
@pytest.mark.parametrize("rule", list(INPUT_RULES))
def test_input_rules_on_every_entry_point(entry, rule, files, server, capsys, tmp_path, untouched):
    key, extra, options, category, phrase = INPUT_RULES[rule]
    source = files[key]
    code = {"quality": 3}.get(category, 2)
    if entry == "server":
        if rule == "symlink loop":
            pytest.skip("a symlink loop cannot be uploaded: the client refuses it (entry 'client')")
        if rule == "roi outside the image":  # known only once the image is read: the job fails
            o = run_server(server, source, options, tmp=tmp_path)
            assert (o.code, o.category) == ("failed", category) and phrase in o.message, o
        else:
            o = run_server(server, source, options, tmp=tmp_path)
            expected = ("failed",) if rule in ("2D input", "corrupt gzip", "strict MRI into the CT model") else (400, 422)
            assert o.code in expected and o.category == category and phrase in o.message, o
        assert str(server.data_dir) not in o.message, f"the server's own paths in a client's message: {o.message}"
    elif entry == "batch":
        if rule.startswith("roi"):
            pytest.skip("batch has no --roi (a cohort has no common physical box)")
        o = run_batch(source, tmp_path / "out", *extra, capsys=capsys)
        if rule == "symlink loop":  # found when the cases are listed: the run is refused
            assert o.code == 2 and phrase in o.message, o
        else:
            assert (o.code, o.category) == (1, category) and phrase in o.message, o
    else:
        o = run_local(entry, source, tmp_path / "seg.nii.gz", *extra, server=server, capsys=capsys)
        assert (o.code, o.category) == (code, category) and phrase in o.message, o
        assert not (tmp_path / "seg.nii.gz").exists()
        if entry == "client":
            assert str(server.data_dir) not in o.message, f"the server's own paths in a client's message: {o.message}"
    no_traceback(o)


@pytest.mark.parametrize("entry", ("segment", "worker", "client", "server"))
def test_an_unknown_input_name_is_an_input_error(entry, files, server, capsys, tmp_path, untouched):
    if entry == "server":
        o = run_server(server, files["ct"], field="flair", tmp=tmp_path)
        assert o.code == 422
    else:
        o = run_local(entry, {"flair": files["ct"]}, tmp_path / "seg.nii.gz", server=server, capsys=capsys)
        assert o.code == 2
    assert o.category == "input" and "'flair'" in o.message and "ct: abdominal CT" in o.message, o
    no_traceback(o)


# DICOM SEG -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ALL)
def test_dicom_seg_from_an_image_file_is_refused_before_work_with_one_category(entry, files, server, capsys,
                                                                                tmp_path, untouched):
    if entry == "server":
        o = run_server(server, files["ct"], output_format=".dcm", tmp=tmp_path)
        assert o.code == 400
        assert str(server.data_dir) not in o.message, o.message
    elif entry == "batch":
        o = run_batch(files["ct"], tmp_path, fmt=".dcm", capsys=capsys)
        assert o.code == 1
    else:
        o = run_local(entry, files["ct"], tmp_path / "seg.dcm", server=server, capsys=capsys)
        assert o.code == 2 and not (tmp_path / "seg.dcm").exists()
    assert o.category == "input" and "DICOM SEG output (.dcm) needs a DICOM series" in o.message, o
    no_traceback(o)


@pytest.mark.parametrize("entry", ALL)
def test_dicom_seg_from_a_series_without_uids_is_valid(entry, files, server, capsys, tmp_path, untouched):
    """An anonymised series (Study/Series Instance UID blanked) gives, through every entry point,
    the same DICOM SEG: UIDs derived from the source, accepted by dciodvfy."""
    import pydicom

    from support.dicom import assert_valid_dicom

    out = tmp_path / "nouid.dcm"
    if entry == "server":
        o = run_server(server, files["nouid"], output_format=".dcm", tmp=tmp_path)
        assert o.code == "done", o
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c:
            out.write_bytes(c.get(f"/v1/jobs/{o.job}/result").content)
    elif entry == "batch":
        o = run_batch(files["nouid"], tmp_path, fmt=".dcm", capsys=capsys)
        assert o.code == 0, o
    else:
        o = run_local(entry, files["nouid"], out, server=server, capsys=capsys)
        assert o.code == 0, o
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.StudyInstanceUID and ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    source = pydicom.dcmread(next(iter(sorted(files["nouid"].iterdir()))))
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert_valid_dicom(out)


# cancellation: real processes ------------------------------------------------------------------------
def _wait_for_predict(proc: subprocess.Popen, timeout: float = 180) -> list[str]:
    """Read JSON events until the sliding window runs."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if '"stage": "predict"' in line or '"event": "progress"' in line:
            return lines
    raise AssertionError(f"no prediction started: {lines}")


@pytest.mark.parametrize("entry", ("segment", "worker", "client"))
def test_cancel_stops_with_130_and_leaves_no_output(entry, files, server, tmp_path, untouched):
    """SIGTERM (segment, worker) or SIGINT (the client: it cancels its server job) during the
    sliding window: exit 130, 'cancelled', no traceback, no output; the server's job cancelled."""
    out = tmp_path / "seg.nii.gz"
    # mirroring on (no --fast): a run long enough to be cancelled in the middle
    args = ["--model", DEMO, str(files["ct"]), "-o", str(out)]
    if entry == "worker":
        cmd = [sys.executable, "-m", "unetrpp.worker", *args]
    else:
        cmd = [sys.executable, "-m", "unetrpp", "segment", *args, "--progress", "json"]
        if entry == "client":
            cmd += ["--server", server.url, "--token-file", str(server.client_token)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for_predict(proc)
        proc.send_signal(signal.SIGINT if entry == "client" else signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (rest, err)
    assert "Traceback" not in err and "cancelled" in err, err
    assert json.loads(rest.strip().splitlines()[-1])["event"] in ("cancelled", "error"), rest
    assert not out.exists() and not (tmp_path / "seg.report.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [], "a partial output was left behind"
    if entry == "client":
        with httpx.Client(base_url=server.url, headers=server.headers(TOKENS[1]), timeout=30) as c:
            jobs = [p.name for p in (server.data_dir / "jobs").iterdir() if p.is_dir()]
            states = {j: c.get(f"/v1/jobs/{j}").json().get("state") for j in jobs}
        assert "running" not in states.values() and "queued" not in states.values(), states


def test_batch_cancel_stops_with_130_and_resumes(files, tmp_path, untouched):
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copyfile(files["ct"], cases / "a.nii.gz")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "unetrpp", "-v", "batch", "--model", DEMO, str(cases), "-o",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        seen = []
        while not seen or "sliding window" not in seen[-1]:  # the network runs on the case
            seen.append(proc.stderr.readline())
            assert seen[-1] or proc.poll() is None, seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "cancelled" in err, err
    assert not (out / "a.nii.gz").exists()


def test_server_cancel_of_a_running_job(files, server, tmp_path, untouched):
    with httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c, open(files["ct"], "rb") as fh:
        job = c.post("/v1/jobs", data={"model": DEMO, "options": "{}"}, files={"ct": ("ct.nii.gz", fh)}).json()["id"]
        wait_state(c, job, ("running",))
        assert c.delete(f"/v1/jobs/{job}").status_code == 202
        st = wait_state(c, job, ("cancelled", "failed", "done"))
        assert st["state"] == "cancelled", st
        r = c.get(f"/v1/jobs/{job}/result")
        assert r.status_code == 409 and r.json()["category"] == "cancelled" or r.status_code == 409, r.text


# the model package is protected as the inputs are ----------------------------------------------------
@pytest.fixture
def demo_package():
    """The bundled demo package (what `--model demo-abdomen-ct` names), restored if a test wrote
    into it."""
    from unetrpp.catalogue import resolve_model

    folder = resolve_model(DEMO)
    before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    yield folder
    for p in folder.iterdir():
        if p not in before:
            p.unlink()
    for p, content in before.items():
        if p.read_bytes() != content:
            p.write_bytes(content)
            pytest.fail(f"{p} of the model package was replaced")


@pytest.mark.parametrize("entry", LOCAL + ("batch",))
@pytest.mark.parametrize("rule", ["report is the model's model.json", "output inside the model folder"])
def test_an_output_never_goes_into_the_model_named_by_its_name(entry, rule, files, server, demo_package, capsys,
                                                               tmp_path, untouched):
    """`--model demo-abdomen-ct` (a name) protects the package it names, for the remote client too
    (it used to protect only a folder literally called 'demo-abdomen-ct': `--report
    <package>/model.json --overwrite` replaced the model's manifest with a report)."""
    if entry == "batch":
        if rule.startswith("report"):
            pytest.skip("batch has no --report")
        o = run_batch(files["ct"], demo_package, overwrite=True, capsys=capsys)
        assert o.code == 2 and "summary output" in o.message and "a file in" in o.message, o
    else:
        if rule.startswith("report"):
            o = run_local(entry, files["ct"], tmp_path / "seg.nii.gz", "--report", str(demo_package / "model.json"),
                          server=server, overwrite=True, capsys=capsys)
        else:
            o = run_local(entry, files["ct"], demo_package / "seg.nii.gz", server=server, overwrite=True,
                          capsys=capsys)
        assert (o.code, o.category) == (2, "output") and "--overwrite never replaces an input" in o.message, o
        assert not (tmp_path / "seg.nii.gz").exists()
    no_traceback(o)


def test_batch_summary_that_is_a_symlink_loop_is_refused_like_any_output(files, capsys, tmp_path, untouched):
    """It used to be replaced by the summary (exit 0): checked with overwrite=True, never resolved."""
    loop = tmp_path / "summary.csv"
    loop.symlink_to(loop.name)
    o = run_batch(files["ct"], tmp_path, capsys=capsys)
    assert o.code == 2 and "cannot be used" in o.message, o
