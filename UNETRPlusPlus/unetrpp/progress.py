"""Progress events shared by the pipeline, the CLI and the Slicer module.

The pipeline calls a `ProgressSink` with `Event`s. Sinks: a terminal progress bar (tqdm), JSON
lines on stdout (read by the Slicer module's worker process: one JSON object per line), logging,
or nothing. Cancellation is a `threading.Event`-like object checked between sliding windows.

JSON-lines protocol (one object per line, key "event"):
  {"event": "stage", "stage": "read|preprocess|predict|postprocess|write", "message": str}
  {"event": "progress", "stage": str, "done": int, "total": int, "fraction": float, "eta_s": float|null}
  {"event": "log", "level": "info|warning|error", "message": str}
  {"event": "done", "outputs": {kind: path}, "report": {...}}
  {"event": "error", "category": "input|model|output|environment|resource|quality|cancelled|internal",
   "kind": ExceptionClassName, "message": str}        (category and message from `errors.classify`)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TextIO

log = logging.getLogger(__name__)

STAGES = ("read", "preprocess", "predict", "postprocess", "write")


@dataclass
class Event:
    event: str
    stage: str | None = None
    message: str | None = None
    done: int | None = None
    total: int | None = None
    fraction: float | None = None
    eta_s: float | None = None
    level: str | None = None
    kind: str | None = None
    category: str | None = None
    outputs: dict[str, str] | None = None
    report: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})


class ProgressSink(Protocol):
    def __call__(self, event: Event) -> None: ...


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class StepTimer:
    """Counts steps of one stage and estimates the remaining time from the mean step so far."""

    stage: str
    total: int
    sink: ProgressSink
    done: int = 0
    started: float = field(default_factory=time.perf_counter)

    def step(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else None
        self.sink(
            Event("progress", stage=self.stage, done=self.done, total=self.total,
                  fraction=self.done / self.total if self.total else 1.0, eta_s=eta)
        )


def null_sink(event: Event) -> None:
    return None


def logging_sink(event: Event) -> None:
    if event.event == "progress":
        log.debug("%s %s/%s (eta %.1fs)", event.stage, event.done, event.total, event.eta_s or 0.0)
    elif event.event == "stage":
        log.info("%s: %s", event.stage, event.message or "")
    elif event.event in ("log", "error"):
        log.log(logging.WARNING if event.level == "warning" or event.event == "error" else logging.INFO, "%s", event.message)


class JsonLinesSink:
    """Writes one JSON object per line and flushes, so a parent process sees events at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, event: Event) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()


class TqdmSink:
    """A terminal progress bar per stage with counted steps (tqdm shows rate and ETA)."""

    def __init__(self) -> None:
        self._bar = None
        self._stage: str | None = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if event.event == "progress":
            if self._bar is None or self._stage != event.stage:
                self.close()
                self._bar = tqdm(total=event.total, desc=event.stage, unit="win", leave=False)
                self._stage = event.stage
            self._bar.n = event.done or 0
            self._bar.refresh()
        elif event.event == "stage":
            self.close()
            tqdm.write(f"[{event.stage}] {event.message or ''}", file=sys.stderr)
        elif event.event in ("log", "error"):
            tqdm.write(f"{(event.level or event.event).upper()}: {event.message}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

