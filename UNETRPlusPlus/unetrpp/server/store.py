"""Jobs persisted under the data folder, so a restart loses no finished result.

    DATA/jobs/<id>/job.json              the job record (state, owner, model, options, times, error and
                                         its category)
    DATA/jobs/<id>/inputs/<name><suffix> the uploaded input files (a DICOM series: a folder)
    DATA/jobs/<id>/result<suffix>        the segmentation, DATA/jobs/<id>/result.report.json its report
    DATA/jobs/<id>/cancel                present once a cancel was asked (the worker polls it)

The record is rewritten atomically on every state change (progress lives in memory only). On
start, a job found `running` is marked failed with the reason, and `queued` jobs are queued again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..manifest import load_json

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
RESTART_REASON = "the server restarted while this job was running; submit it again"
#: the error category (`unetrpp.errors`) of a job the restart interrupted: the machine, not the input
RESTART_CATEGORY = "environment"


class JobStore:
    """Thread-safe job records: in memory, mirrored to `job.json` on every state change."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    # Paths -----------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def result_path(self, job: dict[str, Any]) -> Path:
        return self.job_dir(job["id"]) / f"result{job['output_suffix']}"

    def report_path(self, job: dict[str, Any]) -> Path:
        return self.job_dir(job["id"]) / "result.report.json"

    def cancel_flag(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "cancel"

    # Records ---------------------------------------------------------------------------------
    def new_job_dir(self) -> tuple[str, Path]:
        job_id = secrets.token_urlsafe(16)
        path = self.job_dir(job_id)
        (path / "inputs").mkdir(parents=True)
        return job_id, path

    def add(self, job: dict[str, Any]) -> dict[str, Any]:
        job = {"state": "queued", "created": time.time(), "started": None, "finished": None, "error": None,
               "category": None, "device": None, **job}
        with self._lock:
            self._jobs[job["id"]] = job
            self._save(job)
        return dict(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        if not _ID_RE.match(job_id):
            return None
        with self._lock:
            job = self._jobs.get(job_id)
            return dict(job) if job is not None else None

    def update(self, job_id: str, *, persist: bool = True, **fields: Any) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job["state"] in FINISHED and fields.get("state") not in (None, job["state"]):
                return dict(job)  # a finished job never changes state again (e.g. late worker events)
            job.update(fields)
            if persist:
                self._save(job)
            return dict(job)

    def active_count(self, owner: str) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j["owner"] == owner and j["state"] in ACTIVE)

    def queued_ids(self) -> list[str]:
        with self._lock:
            return [j["id"] for j in sorted(self._jobs.values(), key=lambda j: j["created"]) if j["state"] == "queued"]

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _save(self, job: dict[str, Any]) -> None:
        folder = self.job_dir(job["id"])
        fd, tmp = tempfile.mkstemp(prefix=".job.json.", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(job, f, indent=1)
        os.replace(tmp, folder / "job.json")

    # Start and retention ---------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Load the jobs on disk; running ones become failed (the work is lost), queued ones are
        returned, oldest first, to be queued again. Folders without a readable record are removed."""
        for folder in sorted(self.root.iterdir()):
            record = folder / "job.json"
            try:
                job = load_json(record.read_bytes(), str(record), error=ValueError)
                assert job["id"] == folder.name and job["state"] in STATES
            except (OSError, ValueError, KeyError, AssertionError, TypeError):
                log.warning("removing %s: no readable job record (an upload interrupted by a restart?)", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if job["state"] == "running":
                job.update(state="failed", error=RESTART_REASON, category=RESTART_CATEGORY, finished=time.time())
            self._jobs[job["id"]] = job
            self._save(job)
        return self.queued_ids()

    def expire(self, retention_s: float, now: float | None = None) -> list[str]:
        """Delete finished jobs (record, inputs, result) older than `retention_s` after finishing."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j["id"] for j in self._jobs.values()
                   if j["state"] in FINISHED and j["finished"] is not None and now - j["finished"] > retention_s]
        for job_id in old:
            log.info("job %s: retention time over, deleting its files", job_id)
            self.discard(job_id)
        return old
