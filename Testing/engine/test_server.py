"""The segmentation server (`unetrpp serve`) as a real uvicorn process on 127.0.0.1, driven by a real
HTTP client (httpx) and by `unetrpp segment --server`: authentication, identical labels to a local
run, every bad input of issue 13 (a clear message with its category, no traceback, the server keeps
serving), uploads that name other files refused before any read and job options through the bounded
JSON reader (issue 18 item 5), cancel, per-token limit, a restart that keeps finished results and
fails interrupted jobs, and TLS with a certificate authority made at test time."""

from __future__ import annotations

import gzip
import io
import json
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from support.server import ENV, EXAMPLE_CT, TOKENS, Server, make_certificates, wait_state, write_tokens

CLI = [sys.executable, "-m", "unetrpp"]
UPLOAD_LIMIT_MB = 4
MAX_TRAIN_ITERATIONS = 4


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> tuple[Path, Path]:
    return write_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokens):
    root = tmp_path_factory.mktemp("server")
    srv = Server(root / "data", tokens[0], "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-jobs-per-token", "2",
                 "--allow-training", "--max-train-iterations", str(MAX_TRAIN_ITERATIONS))
    yield srv
    srv.stop()


@pytest.fixture
def alice(server):
    with httpx.Client(base_url=server.url, headers=server.headers(TOKENS[0]), timeout=60) as c:
        yield c


def submit(client: httpx.Client, path: Path = EXAMPLE_CT, options: dict | None = None, field: str = "ct", **form):
    with open(path, "rb") as f:
        return client.post("/v1/jobs", data={"model": "demo-abdomen-ct", "options": json.dumps(options or {"fast": True}),
                                             **form}, files={field: (path.name, f)})


def labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_requests_without_the_right_token_get_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKENS[0]}):
        r = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = httpx.post(f"{server.url}/v1/jobs", headers=headers, data={"model": "demo-abdomen-ct"})
        assert r.status_code == 401
    r = httpx.get(f"{server.url}/v1/models", headers=server.headers())
    assert r.status_code == 200
    assert [m["name"] for m in r.json()["models"]] == ["demo-abdomen-ct"]
    assert r.json()["models"][0]["inputs"][0]["name"] == "ct"


@pytest.mark.slow
def test_cli_client_gives_the_labels_of_a_local_run(server, tokens, tmp_path):
    remote, local = tmp_path / "remote.nii.gz", tmp_path / "local.nii.gz"
    proc = subprocess.run([*CLI, "segment", "--server", server.url, "--token-file", tokens[1], "--model", "demo-abdomen-ct",
                           str(EXAMPLE_CT), "-o", str(remote), "--fast", "--progress", "json"],
                          env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr + server.log_text()
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    stages = [e["stage"] for e in events if e["event"] == "stage"]
    assert "predict" in stages and stages[-1] == "write"
    assert any(e["event"] == "progress" for e in events) or "queued" in stages
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["segmentation"] == str(remote)
    proc = subprocess.run([*CLI, "segment", "--model", "demo-abdomen-ct", str(EXAMPLE_CT), "-o", str(local), "--fast",
                           "--device", "cpu", "--progress", "none"], env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    a, b = labels(remote), labels(local)
    assert a.shape == b.shape and np.array_equal(a, b) and a.max() > 0
    rep_remote = json.loads((tmp_path / "remote.report.json").read_text())
    rep_local = json.loads((tmp_path / "local.report.json").read_text())
    assert rep_remote["segments"] == rep_local["segments"]
    # the same again: the output exists now, so the client refuses before uploading anything
    proc = subprocess.run([*CLI, "segment", "--server", server.url, "--token-file", tokens[1], "--model", "demo-abdomen-ct",
                           str(EXAMPLE_CT), "-o", str(remote)], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_seg_nrrd_result_and_report_over_http(alice):
    r = submit(alice)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    st = wait_state(alice, job, ("done", "failed"))
    assert st["state"] == "done", st
    assert st["fraction"] == 1.0 and st["device"] == "cpu"
    result = alice.get(f"/v1/jobs/{job}/result")
    assert result.status_code == 200 and result.content.startswith(b"NRRD")
    report = alice.get(f"/v1/jobs/{job}/report").json()
    assert report["model"]["name"] == "demo-abdomen-ct" and report["segments"]
    cancel = alice.delete(f"/v1/jobs/{job}")
    assert cancel.status_code == 409 and "already done" in cancel.json()["error"]
    # another token does not see it
    other = httpx.get(f"{alice.base_url}/v1/jobs/{job}", headers={"Authorization": f"Bearer {TOKENS[1]}"})
    assert other.status_code == 404 and "no job" in other.json()["error"]


def test_bad_input_gets_a_message_and_the_server_keeps_serving(alice, server, tmp_path):
    notes = tmp_path / "notes.nii.gz"
    notes.write_text("this is not an image")
    cases = [
        (submit(alice, notes), 400, "not an image", "input"),
        (submit(alice, Path(__file__), field="ct"), 400, "send a .nii.gz", "input"),
        (submit(alice, field="t1"), 422, "unexpected form field 't1'", "input"),
        (alice.post("/v1/jobs", data={"model": "demo-abdomen-ct"}), 422, "missing: ct", "input"),
        (submit(alice, model="no-such-model"), 404, "not on this server", "model"),
        (submit(alice, options={"overlap": 3}), 422, "overlap", "input"),
        (submit(alice, options={"bogus": 1}), 422, "unknown option", "input"),
        (submit(alice, output_format=".dcm"), 400, "DICOM series input", "input"),
        (alice.get("/v1/jobs/does-not-exist-0000000"), 404, "no job", "input"),
        (alice.get("/v1/jobs/../../etc/passwd"), 404, "", "input"),
        (alice.delete("/v1/jobs/does-not-exist-0000000"), 404, "no job", "input"),
    ]
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"\0" * ((UPLOAD_LIMIT_MB + 1) << 20))
    cases.append((submit(alice, big), 413, f"at most {UPLOAD_LIMIT_MB} MiB", "resource"))
    # without a Content-Length (chunked): counted while it arrives
    head = b'--x\r\nContent-Disposition: form-data; name="ct"; filename="ct.nii.gz"\r\n\r\n'
    chunks = iter([head] + [b"\0" * (1 << 20)] * (UPLOAD_LIMIT_MB + 2))
    cases.append((alice.post("/v1/jobs", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}),
                  413, f"at most {UPLOAD_LIMIT_MB} MiB", "resource"))
    for response, status, text, category in cases:
        assert response.status_code == status, (response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error", "category"} and text in body["error"], body
        assert body["category"] == category, body
        assert "Traceback" not in response.text
    assert alice.get("/v1/models").status_code == 200
    # nothing half-created is left behind: every refused upload was removed
    assert all((d / "job.json").is_file() for d in (server.data_dir / "jobs").iterdir())


def test_cancel_and_per_token_limit(alice, server):
    slow = {"fast": False, "overlap": 0.95}  # hundreds of windows: runs long enough to be cancelled
    first = submit(alice, options=slow).json()["id"]
    second = submit(alice, options=slow).json()["id"]
    third = submit(alice, options=slow)
    assert third.status_code == 429 and "limit" in third.json()["error"]
    # bob's jobs do not count against alice
    with httpx.Client(base_url=server.url, headers=server.headers(TOKENS[1]), timeout=60) as bob:
        assert bob.get(f"/v1/jobs/{first}").status_code == 404
    st = wait_state(alice, first, ("running",))
    assert alice.delete(f"/v1/jobs/{second}").json()["state"] == "cancelled"  # still queued: cancelled at once
    assert alice.delete(f"/v1/jobs/{first}").json()["cancel_requested"] is True
    assert wait_state(alice, first, ("cancelled", "done", "failed"), timeout=60)["state"] == "cancelled"
    assert alice.get(f"/v1/jobs/{first}/result").status_code == 409
    assert submit(alice).status_code == 202  # the limit is free again


@pytest.mark.slow
def test_client_messages(server, tokens, tmp_path):
    out = tmp_path / "x.seg.nrrd"
    base = [*CLI, "segment", "--model", "demo-abdomen-ct", str(EXAMPLE_CT), "-o", str(out)]
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-right-token-0123456789\n")
    unreachable = f"http://127.0.0.1:{server.port + 1 if server.port < 65535 else 1}"
    for args, text in (
        (["--server", server.url, "--token-file", str(wrong)], "refused the token"),
        (["--server", unreachable, "--token-file", str(tokens[1])], "cannot reach the server"),
        (["--server", server.url, "--token-file", str(tmp_path / "missing")], "cannot read the token file"),
    ):
        proc = subprocess.run([*base, *args], env=ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"name": "liver-only"}))
    proc = subprocess.run([*CLI, "segment", "--server", server.url, "--token-file", str(tokens[1]), "--model", str(other),
                           str(EXAMPLE_CT), "-o", str(out)], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "'liver-only' is not on the server" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_restart_keeps_finished_results_and_fails_interrupted_jobs(tmp_path, tokens):
    data = tmp_path / "data"
    srv = Server(data, tokens[0])
    try:
        with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
            done = submit(c).json()["id"]
            assert wait_state(c, done, ("done", "failed"))["state"] == "done"
            result = c.get(f"/v1/jobs/{done}/result").content
            running = submit(c, options={"fast": False, "overlap": 0.95}).json()["id"]
            wait_state(c, running, ("running",))
            queued = submit(c).json()["id"]
    finally:
        srv.stop(kill=True)  # a crash: no chance to tidy up
    srv = Server(data, tokens[0])
    try:
        with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
            assert c.get(f"/v1/jobs/{done}/result").content == result
            st = c.get(f"/v1/jobs/{running}").json()
            assert st["state"] == "failed" and "restarted" in st["error"]
            assert wait_state(c, queued, ("done", "failed"))["state"] == "done"  # queued work is not lost
    finally:
        srv.stop()


def test_retention_deletes_old_finished_jobs(tmp_path):
    from unetrpp.server.store import JobStore

    store = JobStore(tmp_path)
    ids = []
    for state in ("done", "running"):
        job_id, folder = store.new_job_dir()
        (folder / "result.seg.nrrd").write_bytes(b"NRRD")
        store.add({"id": job_id, "owner": "x", "output_suffix": ".seg.nrrd"})
        store.update(job_id, state=state, finished=time.time() - 100 if state == "done" else None)
        ids.append(job_id)
    assert store.expire(retention_s=1000) == []
    assert store.expire(retention_s=50) == [ids[0]]
    assert store.get(ids[0]) is None and not store.job_dir(ids[0]).exists()
    assert store.get(ids[1])["state"] == "running"
    reloaded = JobStore(tmp_path)
    assert reloaded.recover() == [] and reloaded.get(ids[1])["state"] == "failed"


@pytest.mark.slow
def test_dicom_series_in_dicom_seg_out(server, data_dir, tmp_path):
    """The client zips a DICOM series folder; the server returns a DICOM SEG over it."""
    import pydicom

    from unetrpp.client import segment_on_server

    source = data_dir / "ct_dicom" / "example_ct_dicom"
    out = tmp_path / "ct.dcm"
    report, outputs = segment_on_server(server.url, TOKENS[0], "demo-abdomen-ct", {"ct": source}, out,
                                        options={"fast": True})
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    assert outputs["report"] == str(tmp_path / "ct.report.json") and report["inputs"]["ct"]["size"] == [512, 512, 20]
    assert sum(s["voxels"] for s in report["segments"]) > 0


def test_serve_refuses_to_start_without_authentication(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("secret\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# no token yet\n")
    for args, text in (([], "give --token-file"), (["--insecure-no-auth", "--host", "0.0.0.0"], "loopback"),
                       (["--token-file", str(short)], "shorter than 16"), (["--token-file", str(empty)], "holds no token"),
                       (["--token-file", str(tmp_path / "missing.txt")], "cannot read the token file")):
        proc = subprocess.run([*CLI, "serve", "--port", "1", *args], env=ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _worker_pids(server_pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow
def test_a_worker_killed_mid_job_fails_that_job_and_is_replaced(tmp_path, tokens):
    import os
    import signal

    srv = Server(tmp_path / "data", tokens[0])
    try:
        with httpx.Client(base_url=srv.url, headers=srv.headers(), timeout=60) as c:
            job = submit(c, options={"fast": False, "overlap": 0.95}).json()["id"]
            wait_state(c, job, ("running",))
            (worker,) = _worker_pids(srv.proc.pid)
            os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer would
            st = wait_state(c, job, ("failed", "done", "cancelled"), timeout=60)
            assert st["state"] == "failed" and "stopped unexpectedly" in st["error"] and "-9" in st["error"]
            after = submit(c).json()["id"]  # a new worker serves the next job
            assert wait_state(c, after, ("done", "failed"))["state"] == "done"
            assert _worker_pids(srv.proc.pid) != [worker]
    finally:
        srv.stop()


# Uploads are self-contained or refused before any read (issue 18 item 5) ----------------------------
def _nrrd_header(data_line: str) -> bytes:
    return ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 64 64 32\n"
            "space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\n"
            f"{data_line}\n\n").encode()


def _mha_header(data_file: str) -> bytes:
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "DimSize = 64 64 32\nElementSpacing = 1 1 1\nElementType = MET_SHORT\n"
            f"ElementDataFile = {data_file}\n").encode()


def _nifti_pair_header(tmp_path: Path, magic: bytes | None) -> bytes:
    """The .hdr of a NIfTI .hdr/.img pair as SimpleITK writes it (magic ni1), or with another magic
    (an Analyze 7.5 header has none)."""
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "pair.hdr"))
    header = bytearray((tmp_path / "pair.hdr").read_bytes())
    assert header[344:348] == b"ni1\0"
    if magic is not None:
        header[344:348] = magic
    return bytes(header)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_uploads_that_name_other_files_are_refused_before_any_read(alice, server, tmp_path):
    """A header that names another file for its voxels would make the server read one of its own
    files on a client's word (/dev/zero, /etc/..., another job's upload): refused with 400."""
    other_job = submit(alice).json()["id"]  # an upload on the server another header could point to
    sneaky = f"../../{other_job}/inputs/ct.nii.gz"
    cases = {
        "ct.nrrd": (_nrrd_header("data file: /dev/zero"), "data file"),
        "ct2.nrrd": (_nrrd_header(f"data file: {sneaky}"), "another file"),
        "ct3.nrrd": (_nrrd_header("datafile: /etc/hostname"), "another file"),
        "ct4.nrrd": (_nrrd_header("Data File: LIST\n/etc/hostname"), "another file"),
        "ct5.nrrd": (_mha_header("LOCAL"), "not a NRRD file"),
        "ct.mha": (_mha_header("/dev/zero"), "ElementDataFile"),
        "ct2.mha": (_mha_header(sneaky), "another file"),
        "ct3.mha": (_mha_header("LIST\n/etc/hostname"), "another file"),
        "ct4.mha": (_nrrd_header("encoding: raw"), "not a MetaImage"),
        "ct.nii": (_nifti_pair_header(tmp_path, None), ".hdr/.img pair"),
        "ct2.nii": (_nifti_pair_header(tmp_path, b"\0\0\0\0"), "Analyze 7.5"),
        "ct.nii.gz": (gzip.compress(_nifti_pair_header(tmp_path, None)), ".hdr/.img pair"),
        "ct.nhdr": (_nrrd_header("data file: ct.raw"), "separate data file"),
        "ct.mhd": (_mha_header("ct.raw"), "separate data file"),
        "ct.hdr": (_nifti_pair_header(tmp_path, None), "separate .img"),
        "ct.img": (b"\0" * 1024, "without their header"),
        "series.zip": (_zip({"001.dcm": _nrrd_header("data file: /dev/zero")}), "not a DICOM file"),
        "empty.zip": (_zip({"__MACOSX/._x": b"junk"}), "no files"),
    }
    for name, (content, text) in cases.items():
        r = alice.post("/v1/jobs", data={"model": "demo-abdomen-ct", "options": '{"fast": true}'},
                       files={"ct": (name, content)})
        assert r.status_code == 400, (name, r.status_code, r.text)
        body = r.json()
        assert text in body["error"] and body["category"] == "input", (name, body)
        assert f"input 'ct' ('{name}')" in body["error"] and "Traceback" not in r.text
    assert wait_state(alice, other_job, ("done", "failed"))["state"] == "done"
    # nothing half-created is left behind
    assert all((d / "job.json").is_file() for d in (server.data_dir / "jobs").iterdir())


@pytest.mark.slow
def test_self_contained_nrrd_and_mha_are_segmented_like_nifti(alice, tmp_path):
    """The check refuses only what it must: .nrrd and .mha files with their voxels inside (as
    SimpleITK and Slicer write them, compressed or not) give the labels of the NIfTI input."""
    image = sitk.ReadImage(str(EXAMPLE_CT))
    results = {}
    for name, compress in (("ct.nii.gz", True), ("ct.nrrd", True), ("ct.mha", False)):
        path = tmp_path / name
        sitk.WriteImage(image, str(path), compress)
        r = submit(alice, path)  # one after the other: the module's server allows 2 jobs per token
        assert r.status_code == 202, (name, r.text)
        job = r.json()["id"]
        assert wait_state(alice, job, ("done", "failed"), timeout=300)["state"] == "done", name
        out = tmp_path / f"result-{name}.seg.nrrd"
        out.write_bytes(alice.get(f"/v1/jobs/{job}/result").content)
        results[name] = labels(out)
    assert results["ct.nii.gz"].max() > 0
    assert all(np.array_equal(results["ct.nii.gz"], r) for r in results.values())


def test_job_options_go_through_the_bounded_json_reader(alice, server):
    """`options` nested 100,000 levels deep (a RecursionError, HTTP 500, before) or not JSON at
    all: 400 with what is wrong; the server keeps serving."""
    deep = "[" * 100_000 + "]" * 100_000
    for options, text in ((deep, "the form field 'options'"), ("[" * 40 + "]" * 40, "levels deep"),
                          ('{"fast": tru', "not valid JSON"), ('{"overlap": NaN}', "not valid JSON"),
                          ('{"overlap": 1e999}', "not valid JSON")):
        with open(EXAMPLE_CT, "rb") as f:
            r = alice.post("/v1/jobs", data={"model": "demo-abdomen-ct", "options": options},
                           files={"ct": ("ct.nii.gz", f)})
        assert r.status_code == 400, (options[:20], r.status_code, r.text[:300])
        assert text in r.json()["error"] and r.json()["category"] == "input", r.json()
    assert alice.get("/v1/models").status_code == 200
    assert all((d / "job.json").is_file() for d in (server.data_dir / "jobs").iterdir())


def test_a_failed_job_carries_its_category_and_the_client_keeps_it(alice, server, tokens, tmp_path):
    """A job the engine refuses (a single-slice image: 2D data) fails with the category of
    `errors.classify`; the CLI client raises it in that category: the exit code of a local run."""
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(EXAMPLE_CT))[:, :, :1], str(flat))
    job = submit(alice, flat).json()["id"]
    st = wait_state(alice, job, ("done", "failed"))
    assert st["state"] == "failed" and "2D" in st["error"] and st["category"] == "input", st
    from unetrpp.client import ServerClient, ServerError
    from unetrpp.errors import classify

    with ServerClient(server.url, TOKENS[0]) as client:
        with pytest.raises(ServerError) as caught:
            client.wait(job)
    found = classify(caught.value)
    assert found.category == "input" and found.exit_code == 2 and "2D" in found.message
    proc = subprocess.run([*CLI, "segment", "--server", server.url, "--token-file", str(tokens[1]), "--model",
                           "demo-abdomen-ct", str(flat), "-o", str(tmp_path / "flat.seg.nrrd"), "--fast"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "2D" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_client_maps_server_errors_to_their_categories():
    """The category in an error body wins; without one (an older server) the status decides."""
    import httpx

    from unetrpp.client import ServerClient, ServerError
    from unetrpp.errors import classify

    answers = {"/v1/a": (400, {"error": "bad roi", "category": "input"}),
               "/v1/b": (500, {"error": "internal server error", "category": "internal"}),
               "/v1/c": (413, {"error": "too large"}), "/v1/d": (502, None),
               "/v1/e": (400, {"error": "x", "category": "output"})}

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[request.url.path]
        return httpx.Response(status, json=body) if body else httpx.Response(status, text="<html>bad gateway")

    client = ServerClient("http://127.0.0.1:9", TOKENS[0])
    client._http = httpx.Client(base_url="http://127.0.0.1:9/v1", transport=httpx.MockTransport(handler))
    expected = {"/a": ("input", 2), "/b": ("internal", 1), "/c": ("resource", 2), "/d": ("internal", 1),
                "/e": ("output", 2)}
    for path, (category, code) in expected.items():
        with pytest.raises(ServerError) as caught:
            client._request("GET", path)
        found = classify(caught.value)
        assert (found.category, found.exit_code) == (category, code), (path, found)


# TLS (issue 18 item 5) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, tokens, certificates):
    root = tmp_path_factory.mktemp("tls-server")
    srv = Server(root / "data", tokens[0], "--certfile", str(certificates["cert"]), "--keyfile",
                 str(certificates["key"]), ca_file=certificates["ca"])
    yield srv
    srv.stop()


def test_tls_server_talks_only_to_clients_that_trust_its_certificate(tls_server, certificates, tmp_path):
    from unetrpp.client import CA_FILE_ENV, ServerClient, ServerError

    assert tls_server.url.startswith("https://127.0.0.1:")
    with ServerClient(tls_server.url, TOKENS[0], ca_file=certificates["ca"]) as client:
        assert [m["name"] for m in client.models()] == ["demo-abdomen-ct"]
    # the system's authorities do not know the test CA; neither does another CA
    for ca in (None, certificates["other_ca"]):
        with pytest.raises(ServerError, match="not trusted.*--ca-file") as caught:
            with ServerClient(tls_server.url, TOKENS[0], ca_file=ca) as client:
                client.models()
        assert caught.value.category == "environment"
    # plain http to the TLS port: no answer, and a hint
    with pytest.raises(ServerError, match="cannot reach the server.*https://"):
        with ServerClient(tls_server.url.replace("https://", "http://"), TOKENS[0], timeout=10) as client:
            client.models()
    with pytest.raises(ServerError, match="cannot use the CA file"):
        ServerClient(tls_server.url, TOKENS[0], ca_file=tmp_path / "missing.pem")
    # the CA file from the environment (how the Slicer module's worker gets it)
    import os

    old = os.environ.get(CA_FILE_ENV)
    os.environ[CA_FILE_ENV] = str(certificates["ca"])
    try:
        with ServerClient(tls_server.url, TOKENS[0]) as client:
            assert client.models()
    finally:
        os.environ.pop(CA_FILE_ENV) if old is None else os.environ.__setitem__(CA_FILE_ENV, old)
    # raw httpx with the CA: the same API, and the token never travels unencrypted
    r = httpx.get(f"{tls_server.url}/v1/models", headers=tls_server.headers(),
                  verify=ssl.create_default_context(cafile=str(certificates["ca"])))
    assert r.status_code == 200 and r.url.scheme == "https"


def test_client_refuses_to_send_a_token_in_clear_text_over_a_network():
    from unetrpp.client import ServerClient, ServerError

    for url in ("http://gpu-server:8890", "http://192.0.2.10:8890", "http://[2001:db8::1]:8890"):
        with pytest.raises(ServerError, match="clear text"):
            ServerClient(url, TOKENS[0])
    for url in ("http://127.0.0.1:8890", "http://localhost:8890", "http://[::1]:8890", "https://gpu-server:8890"):
        ServerClient(url, TOKENS[0]).close()


@pytest.mark.slow
def test_cli_client_segments_over_tls(tls_server, tokens, certificates, tmp_path):
    out = tmp_path / "tls.seg.nrrd"
    base = [*CLI, "segment", "--server", tls_server.url, "--token-file", str(tokens[1]), "--model", "demo-abdomen-ct",
            str(EXAMPLE_CT), "-o", str(out), "--fast", "--progress", "none"]
    proc = subprocess.run(base, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not trusted" in proc.stderr and "--ca-file" in proc.stderr, proc.stderr
    assert not out.exists()
    proc = subprocess.run([*base, "--ca-file", str(certificates["ca"])], env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr + tls_server.log_text()
    assert labels(out).max() > 0 and json.loads((tmp_path / "tls.report.json").read_text())["segments"]


def test_serve_refuses_a_network_address_without_tls(tmp_path, tokens, certificates):
    proc = subprocess.run([*CLI, "serve", "--port", "1", "--token-file", str(tokens[0]), "--host", "0.0.0.0"],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "clear text" in proc.stderr and "--certfile" in proc.stderr, proc.stderr
    assert "--behind-tls-proxy" in proc.stderr and "Traceback" not in proc.stderr
    # the other refusals in this process (the same `serve` code, without starting a Python each)
    from unetrpp.cli import build_parser
    from unetrpp.commands.serve import check_transport
    from unetrpp.errors import UnetrppError, classify

    other_key = make_certificates(tmp_path / "other")["key"]
    for args, text in (
        (["--host", "192.0.2.10"], "--behind-tls-proxy"),
        (["--host", "::"], "clear text"),
        (["--keyfile", str(certificates["key"])], "--keyfile needs --certfile"),
        (["--certfile", str(certificates["cert"]), "--keyfile", str(other_key)], "cannot use --certfile"),
        (["--certfile", str(tmp_path / "missing.pem")], "no such file"),
        (["--certfile", str(certificates["cert"]), "--keyfile", str(certificates["key"]), "--behind-tls-proxy"],
         "exclude each other"),
    ):
        parsed = build_parser().parse_args(["serve", "--port", "1", "--token-file", str(tokens[0]), *args])
        with pytest.raises(UnetrppError, match=text) as caught:
            parsed.func(parsed)
        assert classify(caught.value).exit_code == 2
    assert check_transport("0.0.0.0", None, None, behind_tls_proxy=True) is None  # the proxy's TLS
    assert check_transport("127.0.0.1", None, None, behind_tls_proxy=False) is None  # this machine only
    assert check_transport("0.0.0.0", certificates["cert"], certificates["key"], False) is not None


def test_job_requests_are_checked_by_the_one_request_check(alice):
    """Options and input names go through `unetrpp.request` and `Manifest.resolve_inputs`, as for
    `unetrpp segment`: the same rules, the server's status codes (422 for valid JSON, bad options)."""
    for options, text in (({"roi": [[0, 0, 0], [10, 10, -5]]}, "each max must be greater"),
                          ({"roi": [[0, 0], [1, 1]]}, "six numbers"),
                          ({"device": "cuda:0"}, "unknown option"), ({"with_confidence": True}, "unknown option"),
                          ({"fast": "yes"}, "true or false"), ({"backend": "../x"}, "backend"),
                          ({"series_uid": 7}, "series_uid")):
        r = submit(alice, options=options)
        assert r.status_code == 422 and text in r.json()["error"] and r.json()["category"] == "input", (options, r.text)
    with open(EXAMPLE_CT, "rb") as a, open(EXAMPLE_CT, "rb") as b:  # one input under its name and its alias
        r = alice.post("/v1/jobs", data={"model": "demo-abdomen-ct"}, files=[("ct", ("a.nii.gz", a)), ("CT", ("b.nii.gz", b))])
    assert r.status_code == 422 and "twice" in r.json()["error"], r.text
    r = submit(alice, field="CT")  # a name in another case resolves as on the command line
    assert r.status_code == 202, r.text
    assert wait_state(alice, r.json()["id"], ("done", "failed"))["state"] == "done"


# Fine-tune jobs (serve --allow-training, issue 20 item 3) ----------------------------------------------
def _case_set(folder: Path) -> Path:
    """One case in the nnU-Net raw layout: the example CT with spleen, liver and stomach from its
    TotalSegmentator labels (1, 5, 6), named as the demo model names them."""
    ts = sitk.GetArrayFromImage(sitk.ReadImage(str(EXAMPLE_CT.parent / "example_seg_fast.nii.gz"))) \
        if (EXAMPLE_CT.parent / "example_seg_fast.nii.gz").is_file() else None
    image = sitk.ReadImage(str(EXAMPLE_CT))
    if ts is None:  # the repository's example has no labels beside it: a liver-sized box
        ts = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
        ts[5:20, 30:70, 40:90] = 5
    label = np.select([ts == 1, ts == 5, ts == 6], [1, 2, 3], 0).astype(np.uint8)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(image)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    sitk.WriteImage(image, str(folder / "imagesTr" / "case1_0000.nii.gz"))
    sitk.WriteImage(lab, str(folder / "labelsTr" / "case1.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1, "liver": 2, "stomach": 3},
        "numTraining": 1, "file_ending": ".nii.gz", "name": "one corrected case"}))
    return folder


def _finetune(client: httpx.Client, members: dict[str, bytes] | bytes, name: str = "demo-ft", options=None,
              filename: str = "cases.zip", **form):
    data = members if isinstance(members, bytes) else _zip(members)
    return client.post("/v1/finetune", data={"model": "demo-abdomen-ct", "name": name,
                                             "options": json.dumps(options or {"iterations": 2}), **form},
                       files={"data": (filename, data)})


def test_finetune_uploads_are_self_contained_or_refused(alice, server, tmp_path):
    """A case set names only its own files: zip slip, links, other files, headers naming server files
    and a dataset.json pointing anywhere else are refused (400) before anything reads them."""
    cases = _case_set(tmp_path / "set")
    good = {p.relative_to(cases).as_posix(): p.read_bytes() for p in sorted(cases.rglob("*")) if p.is_file()}
    meta = json.loads(good["dataset.json"])

    def with_meta(**changes) -> dict[str, bytes]:
        return {**good, "dataset.json": json.dumps({**meta, **changes}).encode()}

    link = io.BytesIO()
    with zipfile.ZipFile(link, "w") as zf:
        for n, d in good.items():
            zf.writestr(n, d)
        info = zipfile.ZipInfo("labelsTr/case2.nii.gz")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    refusals = [
        ({**good, "../evil.nii.gz": b"x"}, "outside the case set"),
        ({**good, "/abs/dataset.json": b"{}"}, "outside the case set"),
        ({**good, "imagesTr/case2_0000.nrrd": _nrrd_header("data file: /dev/zero")}, "another file"),
        ({**good, "imagesTr/case2_0000.nhdr": b"NRRD0004"}, "separate data file"),
        ({**good, "notes/readme.txt": b"hi"}, "not part of an nnU-Net raw case set"),
        ({k: v for k, v in good.items() if k != "dataset.json"}, "no dataset.json"),
        (with_meta(training=[{"image": "/etc/passwd", "label": "labelsTr/case1.nii.gz"}]), "not one of the zip's files"),
        (with_meta(training=[{"image": "./imagesTr/../../../x", "label": "labelsTr/case1.nii.gz"}]), "not one of"),
        (with_meta(dataset={"c": {"images": ["imagesTr/other.nii.gz"], "label": "labelsTr/case1.nii.gz"}}), "not one of"),
        (with_meta(file_ending="/../../../../etc/passwd"), "file_ending"),
        ({**good, "dataset.json": b"[" * 50_000 + b"]" * 50_000}, "levels deep"),
        (link.getvalue(), "link"),
        (b"not a zip", "not a readable zip"),
    ]
    for members, text in refusals:
        r = _finetune(alice, members)
        assert r.status_code == 400, (text, r.status_code, r.text)
        assert text in r.json()["error"] and r.json()["category"] == "input", (text, r.json())
    for kwargs, status, text in ((dict(options={"iterations": MAX_TRAIN_ITERATIONS + 1}), 422, "--max-train-iterations"),
                                 (dict(options={"replay": ["/data"]}), 422, "unknown option"),
                                 (dict(options={"val": ["../x"]}), 422, "case ids"),
                                 (dict(name="../Evil"), 422, "name"),
                                 (dict(name="demo-abdomen-ct"), 409, "on this server"),
                                 (dict(filename="cases.tar"), 400, ".zip"),
                                 (dict(extra="1"), 422, "unexpected: extra")):
        r = _finetune(alice, good, **kwargs)
        assert r.status_code == status and text in r.json()["error"], (kwargs, r.text)
    assert all((d / "job.json").is_file() for d in (server.data_dir / "jobs").iterdir())


def test_finetune_needs_allow_training(tls_server, certificates, tmp_path):
    with httpx.Client(base_url=tls_server.url, headers=tls_server.headers(), verify=tls_server.verify()) as c:
        r = _finetune(c, {"dataset.json": b"{}"})
    assert r.status_code == 403 and "--allow-training" in r.json()["error"] and r.json()["category"] == "environment"


@pytest.mark.slow
def test_finetune_job_returns_a_new_package_with_its_lineage(server, tmp_path):
    """The same fine-tune as `unetrpp-train finetune`, as a server job: progress, the new package as
    a zip (lineage: parent, iterations; metrics before and after), the served models unchanged."""
    from unetrpp.client import ServerClient

    cases = _case_set(tmp_path / "set")
    with ServerClient(server.url, TOKENS[0]) as client:
        job = client.finetune("demo-abdomen-ct", cases, "demo-abdomen-ct-ft", options={"iterations": 2})
        st = client.wait(job, poll=1.0)
        assert st["state"] == "done" and st["kind"] == "finetune"
        out = client.download(job, tmp_path / "demo-abdomen-ct-ft.zip")
        report = client.report(job)
        assert [m["name"] for m in client.models()] == ["demo-abdomen-ct"]  # nothing installed on the server
    with zipfile.ZipFile(out) as zf:
        manifest = json.loads(zf.read("demo-abdomen-ct-ft/model.json"))
        assert "demo-abdomen-ct-ft/weights.safetensors" in zf.namelist()
    lineage = manifest["provenance"]["lineage"]
    assert manifest["name"] == "demo-abdomen-ct-ft" and lineage["parent"]["name"] == "demo-abdomen-ct"
    assert lineage["iterations"] == 2 and set(report["metrics"]) == {"before", "after"}
    assert report["model"] == "demo-abdomen-ct-ft" and "package" not in report and "workdir" not in report


@pytest.mark.slow
def test_finetune_job_cancel(alice, tmp_path):
    """DELETE stops a running fine-tune at its next training step: the job is cancelled, no result."""
    cases = _case_set(tmp_path / "set")
    members = {p.relative_to(cases).as_posix(): p.read_bytes() for p in sorted(cases.rglob("*")) if p.is_file()}
    job = _finetune(alice, members, name="demo-ft-cancel", options={"iterations": MAX_TRAIN_ITERATIONS}).json()["id"]
    wait_state(alice, job, ("running",))
    assert alice.delete(f"/v1/jobs/{job}").json()["cancel_requested"] is True
    st = wait_state(alice, job, ("cancelled", "done", "failed"), timeout=300)
    assert st["state"] == "cancelled", st
    assert alice.get(f"/v1/jobs/{job}/result").status_code == 409


def test_serve_backend_is_the_default_of_jobs_that_name_none(tmp_path, tokens):
    """`serve --backend onnxruntime`: a job without a backend runs on it, a job naming one keeps its own;
    the job's report says which ran."""
    srv = Server(tmp_path / "data", tokens[0], "--backend", "onnxruntime")
    try:
        with httpx.Client(base_url=srv.url, headers=srv.headers(TOKENS[0]), timeout=120) as client:
            ran = {}
            for options in ({"fast": True}, {"fast": True, "backend": "torch"}):
                r = submit(client, options=options)
                assert r.status_code == 202, r.text
                st = wait_state(client, r.json()["id"], ("done", "failed"), timeout=600)
                assert st["state"] == "done", st
                report = client.get(f"/v1/jobs/{r.json()['id']}/report").json()
                ran[options.get("backend")] = report["backend"]["name"]
        assert ran == {None: "onnxruntime", "torch": "torch"}
    finally:
        srv.stop()
