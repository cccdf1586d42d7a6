"""One worker process per device slot, each keeping the models it has used loaded.

The server process never runs torch: it puts job ids on one shared task queue; every worker takes
the next one, runs it with the engine's `Segmenter` (as `unetrpp segment` does) and reports on an event
queue, which one thread of the server drains into the `JobStore`. A worker that dies (out of
memory, killed) is noticed within a second: its job fails with the exit code and a new worker takes
its place. Cancel = a `cancel` file in the job folder, which the worker checks between windows.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import INTERNAL, RESOURCE
from .store import JobStore

log = logging.getLogger(__name__)

#: Progress events sent per job and second at most (the server keeps only the latest).
PROGRESS_RATE_HZ = 4.0


# The worker process ------------------------------------------------------------------------------
class _CancelFile:
    """Cancelled when the job's cancel file exists, or when the server process is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def is_set(self) -> bool:
        return self.path.exists() or not _server_alive()


def _server_alive() -> bool:
    parent = mp.parent_process()
    return parent is None or parent.is_alive()


def _worker_main(slot: int, device: str, threads: int | None, tasks: Any, events: Any) -> None:
    """Process entry: take tasks until None (or until the server is gone)."""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s worker{slot}[{device}] %(name)s: %(message)s")
    import torch

    if threads:
        torch.set_num_threads(threads)
    models: dict[str, Any] = {}  # model name -> Segmenter, loaded on first use and kept
    while True:
        try:
            task = tasks.get(timeout=2.0)
        except queue.Empty:
            if not _server_alive():  # the server was killed: do not linger as an orphan
                return
            continue
        if task is None:
            return
        if task.get("kind") == "finetune":
            _run_finetune(task, slot, device, events)
        else:
            _run_task(task, slot, device, models, events)


def _run_task(task: dict[str, Any], slot: int, device: str, models: dict[str, Any], events: Any) -> None:
    """Run one job; every outcome becomes one event, nothing raises. A failure carries the
    category and message of `errors.classify` (the one mapping of exceptions)."""
    from ..outputs import OutputPlan
    from ..request import SegmentRequest, options_from_json
    from ..segmenter import Segmenter

    job_id, job_dir = task["id"], Path(task["dir"])
    cancel = _CancelFile(job_dir / "cancel")
    if cancel.is_set():
        events.put(("cancelled", job_id, slot, {}))
        return
    events.put(("started", job_id, slot, {"device": device}))
    last = [0.0]

    def sink(event) -> None:  # stages always, progress at most PROGRESS_RATE_HZ
        now = time.monotonic()
        if event.event == "stage" or (event.event == "progress" and now - last[0] >= 1 / PROGRESS_RATE_HZ):
            last[0] = now
            events.put(("progress", job_id, slot, {"stage": event.stage, "message": event.message,
                                                   "done": event.done, "total": event.total,
                                                   "fraction": event.fraction, "eta_s": event.eta_s}))

    try:
        segmenter = models.get(task["model"])
        if segmenter is None:
            events.put(("progress", job_id, slot, {"stage": "load", "message": f"loading model {task['model']} on {device}"}))
            segmenter = models[task["model"]] = Segmenter(task["model_path"], device)
        inputs = {name: job_dir / "inputs" / rel for name, rel in task["inputs"].items()}
        # the request the server validated, rebuilt from its JSON (a request does not cross processes)
        request = SegmentRequest.build(segmenter.manifest, inputs, **options_from_json(task["options"]))
        plan = OutputPlan.create(job_dir / f"result{task['output_suffix']}", job_dir / "result.report.json",
                                 overwrite=True, request=request)
        result = segmenter.segment(request, plan, sink=sink, cancel=cancel)
        events.put(("done", job_id, slot, {"timing_s": result.report.get("timing_s", {})}))
    except Exception as exc:
        kind, data = _failure(exc, job_id, device)
        if "error" in data:
            data["error"] = public_message(data["error"], job_dir)
        events.put((kind, job_id, slot, data))


def public_message(message: str, job_dir: Path) -> str:
    """A job's message as its client reads it: without the server's own folders (the client sent
    the file; the server's paths are none of its business). An upload is then named by its file
    name in the job, e.g. `ct.nii.gz` for the input `ct`."""
    folders = {job_dir / "inputs", job_dir}
    with contextlib.suppress(OSError, RuntimeError):
        folders |= {job_dir.resolve() / "inputs", job_dir.resolve()}
    for folder in sorted(map(str, folders), key=len, reverse=True):
        message = message.replace(folder + os.sep, "").replace(folder, "the job's folder")
    return message


def _failure(exc: BaseException, job_id: str, device: str) -> tuple[str, dict[str, Any]]:
    """The event of a job that raised: cancelled, or failed with the category and message of
    `errors.classify` (a bug's traceback goes to the log, the client gets a message)."""
    from ..errors import CANCELLED, INTERNAL, classify

    found = classify(exc)
    if found.category == CANCELLED:
        return "cancelled", {}
    message = found.message
    if isinstance(exc, MemoryError):
        message = f"the server ran out of memory on {device} for this job's image"
    elif found.category == INTERNAL:
        log.error("job %s failed", job_id, exc_info=exc)
        message = f"internal error ({type(exc).__name__}) while running this job; the server log has the details"
    return "failed", {"error": message, "category": found.category}


def _run_finetune(task: dict[str, Any], slot: int, device: str, events: Any) -> None:
    """A fine-tune job (`server.training`): `unetrpp_train.finetune` on the uploaded case set, the
    result package zipped as the job's result, its summary as the report."""
    import json
    import zipfile

    from ..atomic import staged_file, write_text

    job_id, job_dir = task["id"], Path(task["dir"])
    cancel = _CancelFile(job_dir / "cancel")
    if cancel.is_set():
        events.put(("cancelled", job_id, slot, {}))
        return
    events.put(("started", job_id, slot, {"device": device}))
    last = [0.0]
    try:
        try:
            from unetrpp_train.finetune import Events, FinetuneOptions, finetune
        except ModuleNotFoundError as exc:
            from ..errors import EnvironmentProblem

            raise EnvironmentProblem(f"this server cannot fine-tune: {exc.name} is not installed "
                                     "(pip install 'unetrpp[train]' on the server)") from None

        class Relay(Events):  # stage events always, progress at most PROGRESS_RATE_HZ
            def emit(self, event: dict[str, Any]) -> None:
                now = time.monotonic()
                kind = event.get("event")
                if kind == "stage" or (kind == "progress" and now - last[0] >= 1 / PROGRESS_RATE_HZ):
                    last[0] = now
                    events.put(("progress", job_id, slot, {k: event.get(k) for k in
                                                           ("stage", "message", "done", "total", "fraction", "eta_s")}))

        o = task["options"]
        work = job_dir / "work"
        summary = finetune(FinetuneOptions(parent=task["model_path"], data=str(job_dir / "inputs" / "cases"),
                                           name=task["name"], iterations=o["iterations"], val=o["val"],
                                           unannotated=o["unannotated"], workdir=str(work), device=device,
                                           workers=0, install=False),
                           events=Relay(), cancel=cancel)
        package = Path(summary["package"])
        with staged_file(job_dir / "result.zip", overwrite=True) as tmp, zipfile.ZipFile(tmp, "w") as zf:
            for f in sorted(package.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{task['name']}/{f.relative_to(package)}")
        report = {k: v for k, v in summary.items() if k not in ("package", "workdir")}
        write_text(job_dir / "result.report.json", json.dumps(report, indent=2) + "\n", overwrite=True)
        shutil.rmtree(work, ignore_errors=True)  # checkpoints and converted data: the package is in the zip
        events.put(("done", job_id, slot, {"timing_s": {}}))
    except BaseException as exc:  # noqa: BLE001 - every outcome becomes one event
        if isinstance(exc, (SystemExit,)):
            raise
        kind, data = _failure(exc, job_id, device)
        events.put((kind, job_id, slot, data))


# The pool in the server process ------------------------------------------------------------------
class WorkerPool:
    """Worker processes over `devices` (`per_device` each), fed from one task queue."""

    def __init__(self, store: JobStore, devices: list[str], per_device: int = 1, threads: int | None = None) -> None:
        self.store = store
        self.slots = [d for d in devices for _ in range(per_device)]
        self.threads = threads
        self._ctx = mp.get_context("spawn")  # CUDA and threads in the parent need spawn
        self.tasks = self._ctx.Queue()
        self.events = self._ctx.Queue()
        self.procs: list[Any] = [None] * len(self.slots)
        self.current: list[str | None] = [None] * len(self.slots)
        self.progress: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._drain, name="unetrpp-events", daemon=True)

    def start(self) -> None:
        for slot in range(len(self.slots)):
            self._spawn(slot)
        self._pump.start()

    def _spawn(self, slot: int) -> None:
        proc = self._ctx.Process(target=_worker_main, name=f"unetrpp-worker{slot}",
                                 args=(slot, self.slots[slot], self.threads, self.tasks, self.events), daemon=True)
        proc.start()
        self.procs[slot] = proc
        log.info("worker %d on %s started (pid %d)", slot, self.slots[slot], proc.pid)

    def submit(self, job: dict[str, Any]) -> None:
        self.tasks.put({"id": job["id"], "dir": str(self.store.job_dir(job["id"])), "model": job["model"],
                        "model_path": job["model_path"], "inputs": job["inputs"],
                        "output_suffix": job["output_suffix"], "options": job["options"],
                        "kind": job.get("kind", "segment"), "name": job.get("name")})

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for _ in self.procs:
            self.tasks.put(None)
        for proc in self.procs:
            if proc is not None:
                proc.join(timeout)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout)
        self._pump.join(timeout)

    # Events ----------------------------------------------------------------------------------
    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                kind, job_id, slot, data = self.events.get(timeout=1.0)
            except queue.Empty:
                self._check_workers()
                continue
            except (EOFError, OSError):
                return
            self._handle(kind, job_id, slot, data)

    def _handle(self, kind: str, job_id: str, slot: int, data: dict[str, Any]) -> None:
        now = time.time()
        if kind == "started":
            self.current[slot] = job_id
            self.store.update(job_id, state="running", started=now, device=data["device"])
        elif kind == "progress":
            self.progress[job_id] = data
        else:
            self.current[slot] = None
            self.progress.pop(job_id, None)
            fields: dict[str, Any] = {"state": kind, "finished": now}
            if kind == "failed":
                fields["error"] = data["error"]
                fields["category"] = data.get("category", INTERNAL)
            if kind == "done":
                fields["timing_s"] = data["timing_s"]
            self.store.update(job_id, **fields)
            shutil.rmtree(self.store.job_dir(job_id) / "inputs", ignore_errors=True)  # not needed any more
            log.info("job %s %s", job_id, kind)

    def _check_workers(self) -> None:
        for slot, proc in enumerate(self.procs):
            if proc is None or proc.is_alive() or self._stop.is_set():
                continue
            job_id = self.current[slot]
            log.error("worker %d on %s exited with code %s", slot, self.slots[slot], proc.exitcode)
            if job_id is not None:  # killed (-9: the kernel's out-of-memory killer, most often) or crashed
                self._handle("failed", job_id, slot, {"error": (
                    f"the worker process on {self.slots[slot]} stopped unexpectedly (exit code {proc.exitcode}; "
                    "out of memory?) while segmenting this job"),
                    "category": RESOURCE if proc.exitcode == -signal.SIGKILL else INTERNAL})
            self._spawn(slot)


def default_threads(devices: list[str], per_device: int) -> int | None:
    """CPU workers share the cores; GPU workers keep torch's default."""
    cpu_slots = sum(per_device for d in devices if d == "cpu")
    return max(1, (os.cpu_count() or 1) // cpu_slots) if cpu_slots else None
