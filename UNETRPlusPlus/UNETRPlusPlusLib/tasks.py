"""One base class for every engine command the module runs in the background: a segmentation, a
model download or install, a fine-tune.

A `BackgroundTask` owns one `WorkerProcess` (process.py: the command's JSON-lines events, its
process tree, Cancel) and, optionally, a private temporary folder. The GUI's timer calls `poll()`,
which relays new events to `on_event` and, once every process of the tree is gone:
- success (exit 0 and a `done` event): `finish(done_event)` of the subclass makes the result
  (`result`); an error it raises becomes `error`;
- cancelled: a `CancelledByUser` with the task's `cancelled_message`;
- failure: keyed on the category of the engine's error event (errors.from_engine); without one,
  on how the process ended (killed by the system = out of memory, a signal, an exit code).
Then the temporary folder is removed (only now: the worker may write into it until it has ended).
Scripts and tests call `wait()`; the GUI's Cancel calls `request_cancel()`, which never waits.
"""

from __future__ import annotations

import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable

from unetrpp import errors as engine

from .errors import CancelledByUser, ModuleError, WorkerError, from_engine
from .i18n import _
from .process import WorkerProcess, signal_status

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
SIGKILL = getattr(signal, "SIGKILL", 9)


def process_failure(proc: WorkerProcess, what: str, advice: dict[str, str] | None = None) -> ModuleError:
    """Why a process that did not succeed failed: the engine's error event when it sent one, else
    how the process ended."""
    details = "\n".join(proc.stderr_tail)[-2000:]
    if proc.last_error is not None:
        return from_engine(what, proc.last_error, details=details, advice=advice)
    rc = proc.returncode
    sig = signal_status(rc)  # also through the supervisor and a launcher (128 + N)
    last = "\n".join(list(proc.stderr_tail)[-5:]) or _("(no output)")
    if sig == SIGKILL:  # what the system's out-of-memory killer sends
        return WorkerError(
            _("{what} ran out of memory (the process was killed by the system).").format(what=what) + " "
            + (advice or {}).get(engine.RESOURCE, _("Try Fast mode, the CPU device, a smaller region, or close "
                                                    "other programs; then run it again.")),
            kind="out-of-memory", details=details, category=engine.RESOURCE)
    if sig is not None:
        return WorkerError(_("{what} crashed (stopped by signal {signal}). Last messages:\n{last}").format(
            what=what, signal=sig, last=last), kind="crash", details=details)
    if rc == 0:
        return WorkerError(_("{what} ended without a result. Last messages:\n{last}").format(what=what, last=last),
                           kind="crash", details=details)
    return WorkerError(_("{what} crashed (exit code {code}). Last messages:\n{last}").format(
        what=what, code=rc, last=last), kind="crash", details=details)


class BackgroundTask:
    """An engine command running in a separate process (see the module docstring)."""

    #: how the task is named in messages ("The segmentation", "Installing x.zip")
    what = "The task"
    #: the message of a cancelled task
    cancelled_message = "Cancelled."
    #: advice per category that replaces errors.ADVICE for this kind of task
    advice: dict[str, str] = {}

    def __init__(self, proc: WorkerProcess, on_event: EventCallback | None = None,
                 workdir: Path | None = None) -> None:
        self.proc, self.on_event, self.workdir = proc, on_event, workdir
        self.started = time.perf_counter()
        self.events: list[dict[str, Any]] = []
        self.result: Any = None
        self.error: ModuleError | None = None
        self.done = False

    # For subclasses -----------------------------------------------------------------------------
    def finish(self, done_event: dict[str, Any]) -> Any:
        """Make the result of a successful run (may raise ModuleError). Default: the done event."""
        return done_event

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a GUI callback must not break the task
                log.exception("progress callback failed")

    # Driving it ------------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Relay new events; once the process tree has ended, make the result or the error.
        Returns True once the task is over."""
        if self.done:
            return True
        for event in self.proc.poll_events():
            self.emit(event)
        if not self.proc.finished():
            return False
        for event in self.proc.poll_events():
            self.emit(event)
        try:
            if self.proc.cancelled:
                raise CancelledByUser(self.cancelled_message)
            if self.proc.returncode != 0 or self.proc.done_event is None:
                raise process_failure(self.proc, self.what, self.advice)
            self.result = self.finish(self.proc.done_event)
        except ModuleError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported to the user; finish() rolled back what it added
            log.exception("%s: handling the result failed", self.what)
            self.error = WorkerError(_("{what} failed while loading its result: {error}").format(
                what=self.what, error=exc), kind="import")
        finally:
            self.cleanup()
            self.done = True
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> Any:
        """Poll until the task is over; return its result or raise its error. After `timeout`
        seconds the task is cancelled and a WorkerError (kind "timeout") raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise WorkerError(_("{what} did not finish within {seconds} s").format(
                    what=self.what, seconds=f"{timeout:.0f}"), kind="timeout", category=engine.RESOURCE)
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self.result

    def request_cancel(self) -> None:
        """Ask the whole process tree to stop and return at once (the GUI's Cancel); `poll()`
        finishes the task once every process is gone."""
        if not self.done:
            self.proc.request_stop()

    def cancel(self) -> None:
        """Stop the task and wait until its processes are gone (a few seconds at most)."""
        if self.done:
            return
        self.proc.cancel()
        self.poll()

    def cleanup(self) -> None:
        """Remove the temporary folder: called only once the process tree has ended (poll)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
