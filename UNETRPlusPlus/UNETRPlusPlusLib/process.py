"""Run an engine command in a separate process and relay its JSON-lines progress.

Slicer's main thread never waits on the engine: two daemon threads read the child's stdout (one
JSON object per line, see unetrpp/progress.py) and stderr into queues, and the GUI polls them
from a timer. Cancel = terminate the process (then kill it if it does not stop).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from .modelstore import MODULE_DIR

log = logging.getLogger(__name__)


def python_executable() -> str:
    """The Python that runs the engine: Slicer's own (PythonSlicer beside the Slicer executable),
    else this interpreter."""
    exe = Path(sys.executable)
    if exe.stem.lower() == "slicer" or exe.stem.lower() == "slicerapp-real":
        for candidate in (exe.with_name("PythonSlicer"), exe.with_name("PythonSlicer.exe"),
                          exe.parent.parent / "bin" / "PythonSlicer"):
            if candidate.exists():
                return str(candidate)
    return sys.executable


def worker_command() -> list[str]:
    """`python -m unetrpp.worker ARGS` = `unetrpp segment ARGS --progress json` (docs/CONTRACTS.md)."""
    return [python_executable(), "-m", "unetrpp.worker"]


def cli_command() -> list[str]:
    return [python_executable(), "-m", "unetrpp"]


def engine_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Child environment: the module folder (which ships the engine package `unetrpp`) first on
    PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    if extra:
        env.update(extra)
    return env


class WorkerProcess:
    """A child process whose stdout carries JSON-lines events."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.args = list(args)
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.stdout_other: deque[str] = deque(maxlen=20)
        self.last_error: dict[str, Any] | None = None
        self.done_event: dict[str, Any] | None = None
        self.cancelled = False
        self.started = time.perf_counter()
        creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        log.info("starting worker: %s", " ".join(self.args))
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=env if env is not None else engine_environment(), cwd=cwd, text=True, encoding="utf-8",
            errors="replace", bufsize=1, creationflags=creationflags,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, name="unetrpp-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="unetrpp-stderr", daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict) or "event" not in event:
                    raise ValueError
            except ValueError:
                self.stdout_other.append(line)
                continue
            if event["event"] == "error":
                self.last_error = event
            elif event["event"] == "done":
                self.done_event = event
            self.events.put(event)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    # -------------------------------------------------------------------------------------------
    def poll_events(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def finished(self) -> bool:
        """True once the process has exited and its output has been read completely."""
        if self.proc.poll() is None:
            return False
        for t in self._readers:
            t.join(timeout=5)
        return True

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.finished()
        return rc

    def cancel(self, grace_s: float = 5.0) -> None:
        """Terminate the process (SIGTERM / TerminateProcess), kill it if it lingers."""
        self.cancelled = True
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.finished()
