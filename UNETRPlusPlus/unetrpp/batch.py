"""Cohort inference: many cases, one model loaded once, outputs per case and a summary CSV.

- Cases (`find_cases`): each image file (NIfTI/NRRD/MHA) or DICOM series folder is one case of a
  one-input model; a multi-input model takes a folder per case holding one file (or DICOM folder)
  per input, named by the input (`t1c.nii.gz`, `flair/`, ...). Case names (file or folder names
  without suffix) must be unique.
- Shards (`shard`): cases sorted by name; part I of N takes every N-th case from the I-th, so a
  Slurm array or a Kubernetes indexed job splits a cohort with no coordinator.
- Resume: a case whose segmentation and report both exist is skipped (outputs appear atomically,
  so existing means complete). A failed case is recorded (summary and log) and the batch goes on.
- Overlap (as nnU-Net's background workers): two cases are in flight; the network runs one case at
  a time (a lock taken at the "predict" stage and released at "postprocess"), while the other
  case is read and preprocessed, or post-processed and written, so the device stays busy.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CancelledError, UnetrppError
from .image import image_suffix
from .manifest import Manifest
from .progress import CancelToken, Event, ProgressSink

log = logging.getLogger(__name__)

#: Image files that make a case (the formats `read_image` reads as one file).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
#: Cases in flight at once: one in the network, one being read/preprocessed or written.
IN_FLIGHT = 2


@dataclass(frozen=True)
class Case:
    name: str
    inputs: dict[str, Path]  # manifest input name -> file or DICOM folder
    problem: str | None = None  # why this case cannot run (recorded as failed, the batch goes on)


@dataclass
class CaseResult:
    case: str
    status: str  # done | skipped | failed | cancelled
    seconds: float = 0.0
    error: str = ""
    output: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)


# Cases -------------------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else path.name


def _is_image(path: Path) -> bool:
    return path.is_file() and image_suffix(path) in IMAGE_SUFFIXES


def _input_lookup(manifest: Manifest) -> dict[str, str]:
    return {key.lower(): spec.name for spec in manifest.inputs for key in (spec.name, *spec.aliases)}


def _multi_input_case(folder: Path, manifest: Manifest) -> Case:
    lookup = _input_lookup(manifest)
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        name = lookup.get(_stem(entry).lower())
        if name is not None and (entry.is_dir() or _is_image(entry)):
            found.setdefault(name, entry)
    missing = [s.name for s in manifest.inputs if s.name not in found]
    problem = (f"case folder {folder} lacks input(s) {', '.join(missing)}: give one file or DICOM folder per input, "
               f"named by the input ({', '.join(s.name for s in manifest.inputs)})") if missing else None
    return Case(folder.name, found, problem)


def _one_input_cases(folder: Path, name: str) -> list[Case]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    images = [p for p in entries if _is_image(p)]
    folders = [p for p in entries if p.is_dir()]
    if not images and not folders:
        return [Case(folder.name, {name: folder})]  # the folder itself is a DICOM series
    return [Case(_stem(p), {name: p}) for p in images + folders]


def find_cases(inputs: Sequence[str | Path], manifest: Manifest) -> list[Case]:
    """The cases of the INPUT arguments, sorted by name. Raises when an input does not exist or
    two cases share a name (outputs would collide)."""
    names = [s.name for s in manifest.inputs]
    cases: list[Case] = []
    for given in map(Path, inputs):
        if not given.exists():
            raise UnetrppError(f"input {given} does not exist; give image files or folders")
        if len(names) == 1:
            cases += [Case(_stem(given), {names[0]: given})] if given.is_file() else _one_input_cases(given, names[0])
        elif given.is_file():
            raise UnetrppError(f"model {manifest.name!r} takes {len(names)} inputs ({', '.join(names)}): give a folder "
                               f"per case (or a folder of case folders), not the file {given}")
        else:
            lookup = _input_lookup(manifest)
            holds_inputs = any(_stem(p).lower() in lookup for p in given.iterdir())
            cases += [_multi_input_case(given, manifest)] if holds_inputs else [
                _multi_input_case(p, manifest) for p in sorted(given.iterdir()) if p.is_dir()]
    seen: dict[str, Case] = {}
    for c in cases:
        if c.name in seen:
            raise UnetrppError(f"two cases are named {c.name!r} ({next(iter(seen[c.name].inputs.values()))} and "
                               f"{next(iter(c.inputs.values()))}): outputs are named by case, so rename one")
        seen[c.name] = c
    if not cases:
        raise UnetrppError(f"no case found in {', '.join(map(str, inputs))}")
    return sorted(cases, key=lambda c: c.name)


def shard(cases: Sequence[Case], num_parts: int, part_id: int) -> list[Case]:
    """Part `part_id` (0-based) of `num_parts`: every num_parts-th case, deterministic."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise UnetrppError(f"--part-id must be in 0..{num_parts - 1} and --num-parts at least 1 "
                           f"(got part {part_id} of {num_parts})")
    return list(cases[part_id::num_parts])


# The run -----------------------------------------------------------------------------------------
class _DeviceGate:
    """One case in the network at a time: taken at the "predict" stage, released at the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = threading.local()

    def sink(self, inner: ProgressSink) -> ProgressSink:
        def sink(event: Event) -> None:
            if event.event == "stage":
                if event.stage == "predict":
                    self._lock.acquire()
                    self._held.value = True
                else:
                    self.release()
            inner(event)

        return sink

    def release(self) -> None:
        if getattr(self._held, "value", False):
            self._held.value = False
            self._lock.release()


@dataclass
class BatchRun:
    """Segment `cases` into `outdir` with `segmenter` (a loaded `Segmenter`)."""

    segmenter: Any
    outdir: Path
    output_suffix: str = ".seg.nrrd"
    overwrite: bool = False
    run_options: dict[str, Any] = field(default_factory=dict)
    summary_path: Path | None = None
    cancel: CancelToken | None = None
    in_flight: int = IN_FLIGHT  # 1: no overlap (benchmarks/batch.py compares)
    on_case: Callable[[CaseResult], None] = lambda r: None
    sink: ProgressSink = lambda e: None

    def outputs(self, case: Case) -> tuple[Path, Path]:
        return self.outdir / f"{case.name}{self.output_suffix}", self.outdir / f"{case.name}.report.json"

    def run(self, cases: Sequence[Case]) -> list[CaseResult]:
        labels = [l.name for l in self.segmenter.manifest.labels if l.value != 0]
        results: dict[str, CaseResult] = {}
        order = [c.name for c in cases]
        lock = threading.Lock()
        gate = _DeviceGate()

        def record(result: CaseResult) -> None:
            with lock:
                results[result.case] = result
                if self.summary_path is not None:
                    write_summary(self.summary_path, [results[n] for n in order if n in results], labels)
            self.on_case(result)

        with ThreadPoolExecutor(self.in_flight, thread_name_prefix="unetrpp-batch") as pool:
            for future in [pool.submit(self._one, case, gate) for case in cases]:
                record(future.result())
        return [results[n] for n in order]

    def _one(self, case: Case, gate: _DeviceGate) -> CaseResult:
        from .outputs import OutputPlan

        output, report = self.outputs(case)
        if not self.overwrite and output.exists() and report.exists():
            return CaseResult(case.name, "skipped", output=str(output), volumes_ml=_volumes(report))
        if self.cancel is not None and self.cancel.is_set():
            return CaseResult(case.name, "cancelled")
        started = time.perf_counter()
        try:
            if case.problem:
                raise UnetrppError(case.problem)
            if self.output_suffix == ".dcm":
                from .dicom_seg import check_output_for_inputs

                check_output_for_inputs(output, case.inputs)
            plan = OutputPlan.create(output, report, overwrite=self.overwrite)
            try:
                result = self.segmenter.run(case.inputs, sink=gate.sink(self.sink), cancel=self.cancel,
                                            **self.run_options)
            finally:
                gate.release()
            self.segmenter.write(result, plan, cancel=self.cancel)
        except CancelledError:
            return CaseResult(case.name, "cancelled", time.perf_counter() - started)
        except (UnetrppError, MemoryError) as exc:
            message = str(exc) or type(exc).__name__
            log.error("case %s failed: %s", case.name, message)
            return CaseResult(case.name, "failed", time.perf_counter() - started, error=message)
        except Exception as exc:  # a bug or a broken file a reader did not anticipate: record, go on
            log.exception("case %s failed", case.name)
            return CaseResult(case.name, "failed", time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        volumes = {s["name"]: s["volume_ml"] for s in result.report["segments"]}
        return CaseResult(case.name, "done", time.perf_counter() - started, output=str(output), volumes_ml=volumes)


def _volumes(report: Path) -> dict[str, float]:
    import json

    try:
        return {s["name"]: s["volume_ml"] for s in json.loads(report.read_text())["segments"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_summary(path: Path, results: Sequence[CaseResult], labels: Sequence[str]) -> None:
    """case, status, seconds, output, error, then one volume column (mL) per label. Atomic."""
    from .atomic import write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "status", "seconds", "output", "error", *[f"{n} (mL)" for n in labels]])
    for r in results:
        writer.writerow([r.case, r.status, f"{r.seconds:.2f}", r.output, r.error,
                         *[f"{r.volumes_ml[n]:.3f}" if n in r.volumes_ml else "" for n in labels]])
    write_text(path, buf.getvalue())
