"""Cohort inference: many cases, one model loaded once, outputs per case and a summary CSV.

- Cases (`find_cases`): each image file (NIfTI/NRRD/MHA) or DICOM series folder is one case of a
  one-input model; a multi-input model takes a folder per case holding one file (or DICOM folder)
  per input, named by the input (`t1c.nii.gz`, `flair/`, ...). Case names (file or folder names
  without suffix) must be unique.
- Shards (`shard`): cases sorted by name; part I of N takes every N-th case from the I-th, so a
  Slurm array or a Kubernetes indexed job splits a cohort with no coordinator.
- One path: each case becomes a `SegmentRequest` and an `OutputPlan` and runs through
  `Segmenter.segment(request, plan)`, with the rules of `unetrpp segment`: an output is never an
  input or the model (`--overwrite` included: such a case fails with that message, and the advice
  to pass --overwrite is never given for it), nothing is replaced without `--overwrite`.
- Resume: a case whose segmentation and report both exist is skipped (outputs appear atomically,
  so existing means complete). A failed case is recorded with its error category (`errors.classify`)
  in the summary and the log, and the batch goes on. The summary itself is an output of the plan's
  rules: never an input or the model.
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

from .errors import CANCELLED, INTERNAL, InputImageError, OutputExistsError, UnetrppError, classify
from .formats import INPUT_SUFFIXES, image_suffix
from .manifest import Manifest
from .progress import CancelToken, Event, ProgressSink

log = logging.getLogger(__name__)

#: Image files that make a case (the one format table's inputs).
IMAGE_SUFFIXES = INPUT_SUFFIXES
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
    category: str = ""  # of a failed case: errors.classify's category
    output: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    quality: str = ""  # ok | review | fail (report["quality"]["status"]; fail when --strict refused it)
    quality_reasons: str = ""  # what is doubtful, for a review worklist


def quality_columns(report: Any) -> tuple[str, str]:
    """(status, reasons) of a report's quality (issue 19): the input checks that are not ok, then
    each doubtful structure with its reasons, joined by "; "."""
    try:
        quality = report["quality"]
        reasons = [f"{c['name']}: {str(c['message']).split('. ')[0]}" for c in quality["checks"]
                   if c["status"] != "ok" and c["name"] != "structures"]
        for seg in report.get("segments", []):
            q = seg.get("quality") or {}
            if q.get("status", "ok") != "ok":
                reasons.append(f"{seg['name']}: {', '.join(map(str, q.get('reasons', []))) or q['status']}")
        return str(quality["status"]), "; ".join(reasons)
    except (KeyError, TypeError, AttributeError):
        return "", ""


# Cases -------------------------------------------------------------------------------------------
def _stem(path: Path) -> str:
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else path.name


def _is_image(path: Path) -> bool:
    return path.is_file() and image_suffix(path) in IMAGE_SUFFIXES


def _multi_input_case(folder: Path, manifest: Manifest) -> Case:
    lookup = manifest.input_lookup()
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
    from .request import check_input_path

    for given in map(Path, inputs):
        check_input_path(given, f"input {given}")  # missing, a symbolic link loop, behind a closed folder
        if len(names) == 1:
            cases += [Case(_stem(given), {names[0]: given})] if given.is_file() else _one_input_cases(given, names[0])
        elif given.is_file():
            raise UnetrppError(f"model {manifest.name!r} takes {len(names)} inputs ({', '.join(names)}): give a folder "
                               f"per case (or a folder of case folders), not the file {given}")
        else:
            lookup = manifest.input_lookup()
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
    """Segment `cases` into `outdir` with `segmenter` (a loaded `Segmenter`). `run_options` are
    the request options of every case (`SegmentRequest.build`: fast, overlap, roi, ...)."""

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
        if self.summary_path is not None:
            check_summary_path(self.summary_path, cases, self.segmenter.model.path)
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
        started = time.perf_counter()
        try:
            if case.problem:
                raise InputImageError(case.problem)
            request = self.segmenter.request(case.inputs, **self.run_options)
            plan = OutputPlan(output, report, overwrite=self.overwrite)
            try:  # the plan's rules first: an output that is an input fails the case, even when done
                plan.check([self.segmenter.model.path], request=request)
            except OutputExistsError:
                if not self.overwrite and plan.exists():
                    return CaseResult(case.name, "skipped", output=str(output), volumes_ml=_volumes(report),
                                      **_quality_of_file(report))
                raise
            if self.cancel is not None and self.cancel.is_set():
                return CaseResult(case.name, "cancelled")
            started = time.perf_counter()
            try:
                result = self.segmenter.segment(request, plan, sink=gate.sink(self.sink), cancel=self.cancel)
            finally:
                gate.release()
        except Exception as exc:  # every error, classified; the batch goes on
            c = classify(exc)
            if c.category == CANCELLED:
                return CaseResult(case.name, "cancelled", time.perf_counter() - started)
            if c.category == INTERNAL:
                log.error("case %s failed", case.name, exc_info=True)
            else:
                log.info("case %s failed (%s): %s", case.name, c.category, c.message)  # reported by the summary and on_case
            refused = {"quality": "fail", "quality_reasons": c.message} if c.category == "quality" else {}
            return CaseResult(case.name, "failed", time.perf_counter() - started, error=c.message,
                              category=c.category, **refused)
        volumes = {s["name"]: s["volume_ml"] for s in result.report["segments"]}
        status, reasons = quality_columns(result.report)
        return CaseResult(case.name, "done", time.perf_counter() - started, output=str(output), volumes_ml=volumes,
                          quality=status, quality_reasons=reasons)


def check_summary_path(path: Path, cases: Sequence[Case], model_path: Path | str) -> None:
    """The summary is a file of the run too (the plan's rules, `unetrpp.outputs`): never an input
    or the model, in a writable folder; it is rewritten after every case (resume), so an existing
    one is replaced. Checked before the model is loaded."""
    from .image import source_files
    from .outputs import _resolved, check_not_protected, check_output_file, protected_sources

    _resolved(Path(path), "summary output")  # a symbolic link loop: refused as every output is
    protected = [f for c in cases for p in protected_sources(c.inputs, model_path) for f in source_files(p)]
    check_not_protected("summary", Path(path), protected)
    check_output_file("summary", Path(path), overwrite=True)


def _volumes(report: Path) -> dict[str, float]:
    """The volumes of a finished case's report (a file on disk: read by the bounded reader)."""
    from .jsonio import read_json_file

    try:
        return {s["name"]: s["volume_ml"] for s in read_json_file(report)["segments"]}
    except (UnetrppError, KeyError, TypeError):
        return {}


def _quality_of_file(report: Path) -> dict[str, str]:
    from .jsonio import read_json_file

    try:
        status, reasons = quality_columns(read_json_file(report))
    except UnetrppError:
        return {}
    return {"quality": status, "quality_reasons": reasons}


def write_summary(path: Path, results: Sequence[CaseResult], labels: Sequence[str]) -> None:
    """case, status, seconds, output, error, category, quality, quality_reasons, then one volume column
    (mL) per label. Atomic."""
    from .atomic import write_text

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "status", "seconds", "output", "error", "category", "quality", "quality_reasons",
                     *[f"{n} (mL)" for n in labels]])
    for r in results:
        writer.writerow([r.case, r.status, f"{r.seconds:.2f}", r.output, r.error, r.category, r.quality, r.quality_reasons,
                         *[f"{r.volumes_ml[n]:.3f}" if n in r.volumes_ml else "" for n in labels]])
    write_text(path, buf.getvalue())
