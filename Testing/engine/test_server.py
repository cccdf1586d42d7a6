"""The segmentation server (`unetrpp serve`) as a real uvicorn process on 127.0.0.1, driven by a real
HTTP client (httpx) and by `unetrpp segment --server`: authentication, identical labels to a local
run, every bad input of issue 13 (a clear message, no traceback, the server keeps serving), cancel,
per-token limit, and a restart that keeps finished results and fails interrupted jobs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from support.server import ENV, EXAMPLE_CT, TOKENS, Server, wait_state, write_tokens

CLI = [sys.executable, "-m", "unetrpp"]
UPLOAD_LIMIT_MB = 4


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> tuple[Path, Path]:
    return write_tokens(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokens):
    root = tmp_path_factory.mktemp("server")
    srv = Server(root / "data", tokens[0], "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--max-jobs-per-token", "2")
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
        (submit(alice, notes), 400, "not an image"),
        (submit(alice, Path(__file__), field="ct"), 400, "send a .nii.gz"),
        (submit(alice, field="t1"), 422, "unexpected form field 't1'"),
        (alice.post("/v1/jobs", data={"model": "demo-abdomen-ct"}), 422, "missing: ct"),
        (submit(alice, model="no-such-model"), 404, "not on this server"),
        (submit(alice, options={"overlap": 3}), 422, "overlap"),
        (submit(alice, options={"bogus": 1}), 422, "unknown option"),
        (submit(alice, output_format=".dcm"), 400, "DICOM series input"),
        (alice.get("/v1/jobs/does-not-exist-0000000"), 404, "no job"),
        (alice.get("/v1/jobs/../../etc/passwd"), 404, ""),
        (alice.delete("/v1/jobs/does-not-exist-0000000"), 404, "no job"),
    ]
    big = tmp_path / "big.nii.gz"
    big.write_bytes(b"\0" * ((UPLOAD_LIMIT_MB + 1) << 20))
    cases.append((submit(alice, big), 413, f"at most {UPLOAD_LIMIT_MB} MiB"))
    # without a Content-Length (chunked): counted while it arrives
    head = b'--x\r\nContent-Disposition: form-data; name="ct"; filename="ct.nii.gz"\r\n\r\n'
    chunks = iter([head] + [b"\0" * (1 << 20)] * (UPLOAD_LIMIT_MB + 2))
    cases.append((alice.post("/v1/jobs", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}),
                  413, f"at most {UPLOAD_LIMIT_MB} MiB"))
    for response, status, text in cases:
        assert response.status_code == status, (response.status_code, response.text)
        body = response.json()
        assert set(body) == {"error"} and text in body["error"]
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
