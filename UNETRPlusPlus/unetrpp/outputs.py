"""The files one segmentation writes: which paths, checked before any work, and how they are written.

`OutputPlan.create(output, report=None, probabilities=None, overwrite=False, protected=())` checks
the paths (known format by suffix, distinct paths, nothing overwritten unless asked, none of them
an input or model file, even through a symlink or hard link, and every folder writable) and
raises an `OutputError` naming the problem *before* a model is loaded. A folder that does not
exist yet is created when the outputs are written (as nnU-Net and TotalSegmentator do), and
removed again if the run fails; its nearest existing parent must be a writable folder. `write_outputs` writes the
segmentation (`.seg.nrrd`: segments with names, colours, terminology, regions; or a labelmap),
the optional probability map and the JSON report through `atomic.StagedOutputs`: all appear
together, or none does.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import TEMP_PREFIX
from .errors import OutputError, OutputExistsError
from .image import Image, image_suffix, source_files, write_image
from .manifest import Manifest
from .formats import (DICOM_SEG_SUFFIXES, LABELMAP_SUFFIXES, OUTPUT_SUFFIXES, PROBABILITY_SUFFIXES,  # noqa: F401
                      SEGMENTATION_SUFFIXES)
from .segmentation import write_labelmap, write_seg_nrrd


def default_report_path(output: Path) -> Path:
    """<output without its image suffix>.report.json"""
    suffix = image_suffix(output)
    stem = output.name[: -len(suffix)] if suffix and output.name.lower().endswith(suffix) else output.stem
    return output.with_name(stem + ".report.json")


#: Further files a run can write, registered by the module that makes them (the quality checks'
#: uncertainty map and HTML report): kind -> (accepted suffixes, writer(result, manifest, path)).
#: A writer only turns data into bytes at `path` (a staging name); the plan places it atomically.
EXTRA_KINDS: dict[str, tuple[tuple[str, ...], Callable[[Any, Manifest, Path], None]]] = {}


def register_output_kind(kind: str, suffixes: Sequence[str], writer: Callable[[Any, Manifest, Path], None]) -> None:
    """Let `OutputPlan.create(..., extra={kind: path})` plan and write one more file per run:
    `writer(result, manifest, path)` gets the `SegmentationResult` (and may skip writing only by
    raising). The plan's rules (never an input or model, no clobber, atomic, writable before work)
    apply to it as to every other output."""
    if kind in ("segmentation", "report", "probabilities"):
        raise ValueError(f"output kind {kind!r} is built in")
    EXTRA_KINDS[kind] = (tuple(s.lower() for s in suffixes), writer)


@dataclass(frozen=True)
class OutputPlan:
    """Checked output paths of one segmentation (build it with `OutputPlan.create`). It owns every
    rule about the files a run writes: known formats, distinct paths, never an input or a model
    file under any name (symlink, hard link, a file inside an input folder, a header's data file),
    nothing replaced without `overwrite`, writable folders before any work, the DICOM SEG
    pre-check, and atomic placement of all files together (`write_outputs`)."""

    segmentation: Path
    report: Path
    probabilities: Path | None = None
    overwrite: bool = False
    extra: tuple[tuple[str, Path], ...] = ()  # (kind, path) of registered extra kinds

    @classmethod
    def create(cls, output: str | os.PathLike[str], report: str | os.PathLike[str] | None = None,
               probabilities: str | os.PathLike[str] | None = None, overwrite: bool = False,
               protected: Iterable[str | os.PathLike[str]] = (), *, request: Any = None,
               extra: Mapping[str, str | os.PathLike[str]] | None = None) -> "OutputPlan":
        """Check the paths now (before a model is loaded). `request` (a `SegmentRequest`) adds
        its input files to `protected` and lets the DICOM SEG pre-check see the inputs."""
        out = Path(output)
        suffix = image_suffix(out)
        if suffix not in OUTPUT_SUFFIXES:
            raise OutputError(
                f"output {out}: unknown format {suffix or '(no suffix)'!r}; use .seg.nrrd (Slicer segmentation "
                f"with names, colours and terminology), a labelmap: {', '.join(LABELMAP_SUFFIXES)}, "
                "or .dcm (DICOM SEG, for DICOM series inputs)"
            )
        prob = Path(probabilities) if probabilities else None
        if prob is not None and image_suffix(prob) not in PROBABILITY_SUFFIXES:
            raise OutputError(f"probability map {prob}: use a {', '.join(PROBABILITY_SUFFIXES)} file name")
        extras: list[tuple[str, Path]] = []
        for kind, path in (extra or {}).items():
            if kind not in EXTRA_KINDS:
                raise OutputError(f"unknown output kind {kind!r}; known: {', '.join(sorted(EXTRA_KINDS)) or 'none'}")
            suffixes = EXTRA_KINDS[kind][0]
            if suffixes and not str(path).lower().endswith(suffixes):
                raise OutputError(f"{kind} output {path}: use a {', '.join(suffixes)} file name")
            extras.append((kind, Path(path)))
        plan = cls(out, Path(report) if report else default_report_path(out), prob, overwrite, tuple(extras))
        plan.check(protected, request=request)
        return plan

    def paths(self) -> dict[str, Path]:
        """kind -> path, as the report's and the worker's "outputs" name them."""
        out = {"segmentation": self.segmentation, "report": self.report}
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        out.update(self.extra)
        return out

    @property
    def wants_confidence(self) -> bool:
        """The run must compute the confidence map (a file of this plan holds it)."""
        return self.probabilities is not None

    def exists(self) -> bool:
        """Every file of the plan is there (outputs appear together, so: a finished run)."""
        return all(_exists(p) for p in self.paths().values())

    def check(self, protected: Iterable[str | os.PathLike[str]] = (), *, request: Any = None) -> None:
        """Refuse paths that would collide, replace one of the `protected` files (the inputs, the
        model package; with `request`, its input files too) or a file inside a protected folder,
        overwrite without permission, or lie in a folder this process cannot write; and a DICOM
        SEG whose source is not a DICOM series. The input rule comes first: `--overwrite` never
        makes an input replaceable, and the advice to pass it is never given for one."""
        paths = self.paths()
        resolved = {_resolved(p, f"{kind} output") for kind, p in paths.items()}
        if len(resolved) != len(paths):
            raise OutputError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
        protected = list(protected)
        if request is not None:
            protected += request.sources()
        keep = [f for p in protected for f in source_files(p)]
        for kind, path in paths.items():
            check_not_protected(kind, path, keep)
        if request is not None and self.segmentation.name.lower().endswith(DICOM_SEG_SUFFIXES):
            from .dicom_seg import check_output_for_inputs

            check_output_for_inputs(self.segmentation, {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in request.inputs.items()})
        for kind, path in paths.items():
            check_output_file(kind, path, overwrite=self.overwrite)


def _resolved(path: Path, what: str) -> Path:
    """`path` with symlinks resolved; a symbolic link loop is an output error naming it."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: "Symlink loop" (Python < 3.13)
        raise OutputError(f"{what} {path}: cannot be used ({exc}); choose another path") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def check_not_protected(kind: str, path: Path, protected_files: Sequence[Path]) -> None:
    """Refuse an output `path` that is one of `protected_files` (by path, symlink or hard link) or
    lies inside a protected folder (OutputError: never overridable)."""
    for source in protected_files:
        if _same_file(path, source) or (source.is_dir() and _inside(path, source)):
            raise OutputError(
                f"{kind} output {path} would replace {'a file in ' if source.is_dir() else ''}{source}, "
                "an input of this run; choose an output path outside the inputs and the model "
                "(--overwrite never replaces an input)"
            )


def check_output_file(kind: str, path: Path, *, overwrite: bool) -> None:
    """One output file: not a folder, not existing unless `overwrite`, in a writable folder."""
    if path.is_dir():
        raise OutputExistsError(f"{kind} output {path} is a folder; give a file name")
    if (_exists(path) or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{kind} output {path} already exists; choose another path or pass --overwrite")
    check_writable_folder(path.parent, f"{kind} output {path}")


def protected_sources(inputs: Any, model_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Everything one run reads and no output may replace: the files of every input given as a path
    (a {name: path} mapping, one path or a `SegmentRequest`; in-memory images have none) and the
    model package."""
    out = [Path(model_path)] if model_path is not None else []
    if hasattr(inputs, "sources"):
        return out + list(inputs.sources())
    values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    return out + [Path(v) for v in values if isinstance(v, (str, os.PathLike))]


def _same_file(a: Path, b: Path) -> bool:
    """The same file by path (symlinks resolved) or by identity (hard links)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (RuntimeError, OSError):  # a symlink loop is no input file
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.resolve() in path.resolve().parents
    except (RuntimeError, OSError):
        return False


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot take the output: the nearest existing folder
    on the way must be a folder and accept a new file (tried for real: permissions, read-only
    mounts and ACLs all count). Missing folders are created when the output is written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=existing)
    except OSError as exc:
        raise OutputError(
            f"cannot write {what}: the folder {existing} is not writable ({exc.strerror or exc}); choose "
            "another output folder"
        ) from None
    os.close(fd)
    os.unlink(probe)


def write_segmentation(labelmap: Image, manifest: Manifest, path: Path) -> None:
    """A `.seg.nrrd` (segments with names, colours, terminology and regions) or a plain labelmap."""
    if path.name.lower().endswith(SEGMENTATION_SUFFIXES):
        write_seg_nrrd(labelmap, manifest, path, include_regions=True)
    elif path.name.lower().endswith(DICOM_SEG_SUFFIXES):
        from .dicom_seg import write_dicom_seg

        write_dicom_seg(labelmap, manifest, path)
    else:
        write_labelmap(labelmap, path)


def write_outputs(plan: OutputPlan, labelmap: Image, manifest: Manifest, report: dict[str, Any],
                  confidence: Image | None = None, before_commit: Any = None, result: Any = None) -> dict[str, str]:
    """Write everything in `plan` atomically and together. `before_commit()` (e.g. a cancellation
    check, or completing the report's timing) runs after all files are staged and before any is
    moved into place. `result` (the `SegmentationResult`) feeds the registered extra kinds.
    Returns kind -> path of what was written."""
    from .atomic import StagedOutputs

    if plan.probabilities is not None and confidence is None:
        raise ValueError("the plan has a probability map but the run computed no confidence map")
    with StagedOutputs(overwrite=plan.overwrite) as staging:
        write_segmentation(labelmap, manifest, staging.path_for(plan.segmentation))
        if plan.probabilities is not None and confidence is not None:
            write_image(confidence, staging.path_for(plan.probabilities))
        for kind, path in plan.extra:
            EXTRA_KINDS[kind][1](result, manifest, staging.path_for(path))
        if before_commit is not None:
            before_commit()
        staging.path_for(plan.report).write_text(json.dumps(report, indent=2) + "\n")
    return {k: str(v) for k, v in plan.paths().items()}
