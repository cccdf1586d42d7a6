"""Run an engine command in a separate process and relay its JSON-lines progress.

Slicer's main thread never waits on the engine: two daemon threads read the child's stdout (one
JSON object per line, see unetrpp/progress.py) and stderr into queues, and the GUI polls them
from a timer.

Inside Slicer `python` is the PythonSlicer launcher: it runs the real Python as ITS child, which
writes straight into our pipes, and a plain terminate() would only end the launcher. So the child
starts in a process group of its own (a new session on POSIX, a new process group on Windows) and
its descendants are tracked with psutil (Slicer ships it). Cancel = a cooperative stop first
(SIGTERM to the whole group: the engine stops at the next sliding window), then, after
`STOP_GRACE_S`, SIGKILL to the group and every tracked descendant. Cancelling never waits: the
escalation happens in `finished()`, which the GUI timer calls, and a run counts as finished only
once every process of the tree is gone and the pipes are drained, so its temporary folder is
removed only after the worker has stopped writing into it. `UNETRPlusPlusLib.supervise` sits
between the launcher and the worker so that an out-of-memory kill keeps its exit code (137).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - Slicer ships psutil; without it the process group still works (POSIX)
    psutil = None

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


def supervised(python: str, *args: str) -> list[str]:
    """`python -m UNETRPlusPlusLib.supervise ARGS`: ARGS run by the real interpreter as a direct
    child of the supervisor, whose exit status (signal N -> 128 + N) survives a launcher."""
    return [python, "-m", "UNETRPlusPlusLib.supervise", *args]


def worker_command() -> list[str]:
    """`python -m unetrpp.worker ARGS` = `unetrpp segment ARGS --progress json` (docs/CONTRACTS.md),
    under the supervisor."""
    return supervised(python_executable(), "-m", "unetrpp.worker")


def cli_command() -> list[str]:
    return supervised(python_executable(), "-m", "unetrpp")


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


# Which GPUs the engine's Python sees (names, in CUDA order), asked in a separate process so that
# Slicer's own process never imports torch.
GPU_PROBE = ("import json, torch; print(json.dumps([torch.cuda.get_device_name(i) for i in "
             "range(torch.cuda.device_count())] if torch.cuda.is_available() else []))")


class GpuProbe:
    """Start `python -c GPU_PROBE`; `result()` is None while it runs, then the GPU names ([] when
    there is none, torch is missing or the probe fails)."""

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([python or python_executable(), "-c", GPU_PROBE], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                     env=env if env is not None else engine_environment())
        self._names: list[str] | None = None

    def result(self) -> list[str] | None:
        if self._names is None and self.proc.poll() is not None:
            out = self.proc.stdout.read() if self.proc.stdout else ""
            try:
                names = json.loads(out.strip().splitlines()[-1]) if out.strip() else []
            except ValueError:
                names = []
            self._names = [str(n) for n in names] if isinstance(names, list) else []
        return self._names

    def wait(self, timeout: float = 120) -> list[str]:
        self.proc.wait(timeout=timeout)
        return self.result() or []


# Seconds between the cooperative stop (SIGTERM) and SIGKILL of the whole process tree.
STOP_GRACE_S = 1.0
# After the tree is killed, how long to wait for the pipes to close before giving up on them (a
# descendant that escaped the group could hold them open forever).
DRAIN_S = 3.0


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except OSError:  # gone already
        return True


def signal_status(returncode: int | None) -> int | None:
    """The signal that ended a process: -N from subprocess, or 128 + N passed on by the supervisor
    (through a launcher). None for a normal exit. 130 (= 128 + SIGINT) is the engine's "cancelled"."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if 128 < returncode <= 128 + 64 and returncode != 130:
        return returncode - 128
    return None


class WorkerProcess:
    """A child process (and whatever it starts) whose stdout carries JSON-lines events."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 stop_grace_s: float = STOP_GRACE_S) -> None:
        """`stop_grace_s`: how long the tree has after the stop request before it is killed (a
        segmentation stops at the next window; a fine-tune finishes its step and saves a checkpoint)."""
        self.args = list(args)
        self.stop_grace_s = stop_grace_s
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.stdout_other: deque[str] = deque(maxlen=20)
        self.last_error: dict[str, Any] | None = None
        self.done_event: dict[str, Any] | None = None
        self.cancelled = False
        self.started = time.perf_counter()
        self._stop_sent: float | None = None
        self._killed: float | None = None
        self._drain_started: float | None = None
        self._tree: dict[int, Any] = {}  # pid -> psutil.Process of every descendant seen
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                                       | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        else:
            kwargs["start_new_session"] = True  # its own process group: one signal reaches the launcher's child too
        log.info("starting worker: %s", " ".join(self.args))
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=env if env is not None else engine_environment(), cwd=cwd, text=True, encoding="utf-8",
            errors="replace", bufsize=1, **kwargs,
        )
        self._root = self._ps(self.proc.pid)
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

    # The process tree ------------------------------------------------------------------------
    @staticmethod
    def _ps(pid: int) -> Any:
        if psutil is None:
            return None
        try:
            return psutil.Process(pid)
        except psutil.Error:
            return None

    def _track_tree(self) -> None:
        """Remember every descendant while the root lives (the launcher's Python child, the worker):
        once the launcher is gone they are orphans that no parent link leads to any more."""
        if self._root is None or self.proc.poll() is not None:
            return
        try:
            for child in self._root.children(recursive=True):
                self._tree.setdefault(child.pid, child)
        except psutil.Error:
            pass

    @staticmethod
    def _alive(p: Any) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def tree_alive(self) -> list[Any]:
        """Descendants (seen so far) that still run; the root itself is `running`."""
        self._track_tree()
        return [p for p in self._tree.values() if self._alive(p)]

    def _signal_tree(self, sig: int) -> None:
        if os.name != "nt":
            try:
                os.killpg(self.proc.pid, sig)  # the group = the launcher, its Python, the worker
            except (ProcessLookupError, PermissionError):
                pass
        elif self.proc.poll() is None:
            self.proc.kill() if sig != signal.SIGTERM else self.proc.terminate()
        for p in self.tree_alive():  # anyone who left the group (setsid) or on Windows
            if os.name != "nt" and _in_group(p.pid, self.proc.pid):
                continue  # killpg reached it: a second copy of the signal would be a second request
            try:
                p.kill() if sig != signal.SIGTERM else p.terminate()
            except psutil.Error:
                pass

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
        """True once the process and every descendant have exited and their output has been read.
        Never blocks; after a stop request it also escalates to SIGKILL when the grace is over."""
        self._track_tree()
        if self._stop_sent is not None and self._killed is None \
                and time.monotonic() - self._stop_sent >= self.stop_grace_s \
                and (self.proc.poll() is None or self.tree_alive()):
            log.warning("the worker did not stop within %.1f s; killing its process tree", self.stop_grace_s)
            self._killed = time.monotonic()
            self._signal_tree(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
        if self.proc.poll() is None or self.tree_alive():
            return False
        for t in self._readers:
            t.join(timeout=0.05)
        if any(t.is_alive() for t in self._readers):
            # the pipes close as soon as the last writer is gone, unless something escaped the tree
            self._drain_started = self._drain_started or time.monotonic()
            if time.monotonic() - self._drain_started < DRAIN_S:
                return False
            log.warning("a process outside the worker's tree still holds its output pipes; not waiting for it")
        return True

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished():
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.proc.returncode

    def request_stop(self) -> None:
        """Ask the whole tree to stop (SIGTERM to the group: the engine's cooperative stop) and
        return at once; `finished()` kills the tree if it is still there after `stop_grace_s`."""
        self.cancelled = True
        if self._stop_sent is not None:
            return
        self._stop_sent = time.monotonic()
        self._track_tree()
        if self.proc.poll() is None or self.tree_alive():
            self._signal_tree(signal.SIGTERM)

    def cancel(self, timeout: float | None = None) -> None:
        """request_stop() and wait (at most `timeout` s, default the grace plus DRAIN_S) until every
        process is gone."""
        timeout = self.stop_grace_s + DRAIN_S if timeout is None else timeout
        self.request_stop()
        try:
            self.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("the worker's process tree is still there %.1f s after cancelling", timeout)
