"""The files the quality checks add to a run, registered with the output plan
(`unetrpp.outputs.register_output_kind`), so the plan's rules apply to them (never an input or the
model, no clobber, atomic, writable before work):

- `uncertainty`: the calibrated predictive entropy on the input grid (NIfTI/NRRD/MHA), stored as a
  percentage 0-100 (uint8: 0 = certain, 100 = uniform over the classes);
- `report_html`: the one-page HTML report (`unetrpp.quality.html`).

Both read `result.quality` (a `RunQuality`, set by the Segmenter when the checks ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .assess import ResultQuality, uncertainty_map
from .checks import Check

UNCERTAINTY_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
HTML_SUFFIXES = (".html", ".htm")


@dataclass
class RunQuality:
    """What one run's checks produced, for the report and the extra outputs."""

    checks: list[Check]
    result: ResultQuality | None = None
    image: Any = field(default=None, repr=False)  # the first input (for the HTML key images)


def _quality_of(result: Any) -> RunQuality:
    q = getattr(result, "quality", None)
    if not isinstance(q, RunQuality) or q.result is None:
        raise OutputError("the quality checks did not run for this segmentation; no uncertainty map or HTML report")
    return q


def write_uncertainty(result: Any, manifest: Any, path: Path) -> None:
    from ..segmentation import write_probabilities

    q = _quality_of(result)
    write_probabilities(uncertainty_map(q.result, result.state), path, percent=True)


def write_report_html(result: Any, manifest: Any, path: Path) -> None:
    from .html import render

    q = _quality_of(result)
    if q.image is None:
        raise OutputError("the HTML report needs the input scan, which this run did not keep")
    Path(path).write_text(render(result.report, q.image, result.labelmap, manifest), encoding="utf-8")


def register() -> None:
    """Make `uncertainty` and `report_html` known to `OutputPlan.create(..., extra=...)`."""
    from ..outputs import register_output_kind

    register_output_kind("uncertainty", UNCERTAINTY_SUFFIXES, write_uncertainty)
    register_output_kind("report_html", HTML_SUFFIXES, write_report_html)


register()  # importing this module (the Segmenter does) makes both kinds known to output plans

__all__ = ["HTML_SUFFIXES", "RunQuality", "UNCERTAINTY_SUFFIXES", "register", "write_report_html", "write_uncertainty"]
