"""The files one segmentation writes: which paths, checked before any work, and how they are written.

`OutputPlan.create(output, report=None, probabilities=None, overwrite=False, protected=())` checks
the paths (known format by suffix, distinct paths, nothing overwritten unless asked, none of them
an input or model file, even through a symlink or hard link, and every folder writable) and
raises a `UnetrppError` naming the problem *before* a model is loaded. A folder that does not
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import TEMP_PREFIX
from .errors import OutputExistsError, UnetrppError
from .image import Image, image_suffix, source_files, write_image
from .manifest import Manifest
from .segmentation import LABELMAP_SUFFIXES, write_labelmap, write_seg_nrrd

#: Output formats by suffix: a Slicer segmentation, or a plain labelmap (segmentation.py's list).
SEGMENTATION_SUFFIXES = (".seg.nrrd",)
#: DICOM Segmentation, for DICOM series inputs (unetrpp.dicom_seg, extra [dicom]).
DICOM_SEG_SUFFIXES = (".dcm",)
PROBABILITY_SUFFIXES = LABELMAP_SUFFIXES


def default_report_path(output: Path) -> Path:
    """<output without its image suffix>.report.json"""
    suffix = image_suffix(output)
    stem = output.name[: -len(suffix)] if suffix and output.name.lower().endswith(suffix) else output.stem
    return output.with_name(stem + ".report.json")


@dataclass(frozen=True)
class OutputPlan:
    """Checked output paths of one segmentation (build it with `OutputPlan.create`)."""

    segmentation: Path
    report: Path
    probabilities: Path | None = None
    overwrite: bool = False

    @classmethod
    def create(cls, output: str | os.PathLike[str], report: str | os.PathLike[str] | None = None,
               probabilities: str | os.PathLike[str] | None = None, overwrite: bool = False,
               protected: Iterable[str | os.PathLike[str]] = ()) -> "OutputPlan":
        out = Path(output)
        suffix = image_suffix(out)
        if suffix not in SEGMENTATION_SUFFIXES + LABELMAP_SUFFIXES + DICOM_SEG_SUFFIXES:
            raise UnetrppError(
                f"output {out}: unknown format {suffix or '(no suffix)'!r}; use .seg.nrrd (Slicer segmentation "
                f"with names, colours and terminology), a labelmap: {', '.join(LABELMAP_SUFFIXES)}, "
                "or .dcm (DICOM SEG, for DICOM series inputs)"
            )
        prob = Path(probabilities) if probabilities else None
        if prob is not None and image_suffix(prob) not in PROBABILITY_SUFFIXES:
            raise UnetrppError(f"probability map {prob}: use a {', '.join(PROBABILITY_SUFFIXES)} file name")
        plan = cls(out, Path(report) if report else default_report_path(out), prob, overwrite)
        plan.check(protected)
        return plan

    def paths(self) -> dict[str, Path]:
        """kind -> path, as the report's and the worker's "outputs" name them."""
        out = {"segmentation": self.segmentation, "report": self.report}
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out

    def check(self, protected: Iterable[str | os.PathLike[str]] = ()) -> None:
        """Refuse paths that would collide, overwrite without permission, replace one of the
        `protected` files (the inputs, the model package) or a file inside a protected folder, or
        lie in a folder this process cannot write. A protected header's detached data file
        (.nhdr/.mhd) is protected with it."""
        paths = self.paths()
        if len({p.resolve() for p in paths.values()}) != len(paths):
            raise UnetrppError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
        keep = [f for p in protected for f in source_files(p)]
        for kind, path in paths.items():
            for source in keep:
                if _same_file(path, source) or (source.is_dir() and _inside(path, source)):
                    raise UnetrppError(
                        f"{kind} output {path} would replace {'a file in ' if source.is_dir() else ''}{source}, "
                        "an input of this run; choose an output path outside the inputs and the model "
                        "(--overwrite never replaces an input)"
                    )
            if path.is_dir():
                raise OutputExistsError(f"{kind} output {path} is a folder; give a file name")
            if path.exists() and not self.overwrite:
                raise OutputExistsError(f"{kind} output {path} already exists; choose another path or pass --overwrite")
            check_writable_folder(path.parent, f"{kind} output {path}")


def protected_sources(inputs: Any, model_path: str | os.PathLike[str] | None = None) -> list[Path]:
    """Everything one run reads and no output may replace: the files of every input given as a path
    (a {name: path} mapping or one path; in-memory images have none) and the model package."""
    values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    out = [Path(model_path)] if model_path is not None else []
    return out + [Path(v) for v in values if isinstance(v, (str, os.PathLike))]


def _same_file(a: Path, b: Path) -> bool:
    """The same file by path (symlinks resolved) or by identity (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot take the output: the nearest existing folder
    on the way must be a folder and accept a new file (tried for real: permissions, read-only
    mounts and ACLs all count). Missing folders are created when the output is written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnetrppError(f"cannot write {what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=existing)
    except OSError as exc:
        raise UnetrppError(
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
                  confidence: Image | None = None, before_commit: Any = None) -> dict[str, str]:
    """Write everything in `plan` atomically and together. `before_commit()` (e.g. a cancellation
    check, or completing the report's timing) runs after all files are staged and before any is
    moved into place. Returns kind -> path of what was written."""
    from .atomic import StagedOutputs

    with StagedOutputs(overwrite=plan.overwrite) as staging:
        write_segmentation(labelmap, manifest, staging.path_for(plan.segmentation))
        if plan.probabilities is not None and confidence is not None:
            write_image(confidence, staging.path_for(plan.probabilities))
        if before_commit is not None:
            before_commit()
        staging.path_for(plan.report).write_text(json.dumps(report, indent=2) + "\n")
    return {k: str(v) for k, v in plan.paths().items()}
