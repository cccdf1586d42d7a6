"""The files one segmentation writes: which paths, checked before any work, and how they are written.

`OutputPlan.create(output, report=None, probabilities=None, overwrite=False)` checks the paths
(known format by suffix, distinct paths, folder exists, nothing overwritten unless asked) and
raises a `UnetrppError` naming the problem *before* a model is loaded. `write_outputs` writes the
segmentation (`.seg.nrrd`: segments with names, colours, terminology, regions; or a labelmap),
the optional probability map and the JSON report through `atomic.StagedOutputs`: all appear
together, or none does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputExistsError, UnetrppError
from .image import Image, image_suffix, write_image
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
               probabilities: str | os.PathLike[str] | None = None, overwrite: bool = False) -> "OutputPlan":
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
        plan.check()
        return plan

    def paths(self) -> dict[str, Path]:
        """kind -> path, as the report's and the worker's "outputs" name them."""
        out = {"segmentation": self.segmentation, "report": self.report}
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
        return out

    def check(self) -> None:
        """Refuse paths that would collide, overwrite without permission, or have no folder."""
        paths = self.paths()
        if len({p.resolve() for p in paths.values()}) != len(paths):
            raise UnetrppError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
        for kind, path in paths.items():
            if path.exists() and not self.overwrite:
                raise OutputExistsError(f"{kind} output {path} already exists; choose another path or pass --overwrite")
            if path.exists() and path.is_dir():
                raise OutputExistsError(f"{kind} output {path} is a folder; give a file name")
            if not path.parent.exists():
                raise UnetrppError(f"the folder of {kind} output {path} does not exist; create it first")


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
