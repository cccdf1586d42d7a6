"""What the results table shows for one run, from the engine's report (no Qt, no MRML): a row per
segment and region with its volume, the quality status of the structure (coloured), the reasons as
the hover text, and a volume cut by the scan's field of view marked as a lower bound.

Report keys (issue 19, unetrpp.quality):
    report["quality"] = {"status": "ok" | "review" | "fail", "checks": [{"name", "status", "message"}]}
    report["segments"][i]["quality"] = {"status", "reasons": [...], "uncertainty": {"inside", "border",
                                        "mirror_disagreement"} | None, "partial": bool}
A report without them (an older engine or server) gives rows without a status.
The Widget copies these rows into its table; the table node in the scene gets the same columns
(scene.volume_table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .i18n import _

STATUS_TEXT = {"ok": _("OK"), "review": _("Review"), "fail": _("Fail")}
# Background colours of the status cell (green / amber / red), readable with black text.
STATUS_COLOURS = {"ok": "#b9e4c0", "review": "#ffe08a", "fail": "#f4a6a6"}
PARTIAL_NOTE = _("Cut by the scan's field of view: the volume is a lower bound.")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _status(entry: Any) -> str:
    status = entry.get("status") if isinstance(entry, dict) else None
    return status if status in STATUS_TEXT else ""


@dataclass(frozen=True)
class ResultRow:
    name: str
    label: str
    voxels: int
    volume_ml: float
    status: str  # "ok" | "review" | "fail" | "" (no quality in the report)
    reasons: tuple[str, ...] = ()
    partial: bool = False
    uncertainty: float | None = None  # mean predictive entropy inside the structure

    @property
    def volume_text(self) -> str:
        text = f"{self.volume_ml:.1f}"
        return f"\u2265 {text}" if self.partial else text  # >= : a lower bound

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, "")

    @property
    def colour(self) -> str:
        return STATUS_COLOURS.get(self.status, "")

    @property
    def tooltip(self) -> str:
        """The hover text of the row: the reasons, the partial note, the uncertainty."""
        lines = list(self.reasons)
        if self.partial:
            lines.append(PARTIAL_NOTE)
        if self.uncertainty is not None:
            lines.append(_("Uncertainty (mean entropy inside): {value}").format(value=f"{self.uncertainty:.2f}"))
        if not lines and self.status == "ok":
            lines.append(_("No doubt found by the quality checks."))
        return "\n".join(lines)


def result_rows(report: dict[str, Any]) -> list[ResultRow]:
    rows = []
    for s in report.get("segments") or []:
        if not isinstance(s, dict):
            continue
        quality = s.get("quality") if isinstance(s.get("quality"), dict) else {}
        reasons = quality.get("reasons") if isinstance(quality.get("reasons"), list) else []
        uncertainty = quality.get("uncertainty")
        rows.append(ResultRow(
            name=str(s.get("name", s.get("value"))), label=str(s.get("value", "")), voxels=int(s.get("voxels", 0) or 0),
            volume_ml=_number(s.get("volume_ml")) or 0.0, status=_status(quality),
            reasons=tuple(str(r) for r in reasons), partial=quality.get("partial") is True,
            uncertainty=_number(uncertainty.get("inside")) if isinstance(uncertainty, dict) else None))
    for r in report.get("regions") or []:
        if not isinstance(r, dict):
            continue
        quality = r.get("quality") if isinstance(r.get("quality"), dict) else {}
        reasons = quality.get("reasons") if isinstance(quality.get("reasons"), list) else []
        rows.append(ResultRow(
            name=str(r.get("name")), label="+".join(map(str, r.get("labels", []))), voxels=int(r.get("voxels", 0) or 0),
            volume_ml=_number(r.get("volume_ml")) or 0.0, status=_status(quality),
            reasons=tuple(str(x) for x in reasons), partial=quality.get("partial") is True))
    return rows


def overall_quality(report: dict[str, Any]) -> tuple[str, str]:
    """(status, text) of the run-level checks, for the line above the table: '' when the report has
    none. The text names each check that is not ok."""
    quality = report.get("quality") if isinstance(report.get("quality"), dict) else None
    status = _status(quality)
    if not status:
        return "", ""
    problems = [f"{c.get('name', '')}: {c.get('message', '')}" for c in quality.get("checks") or []
                if isinstance(c, dict) and c.get("status") in ("review", "fail")]
    if status == "ok":
        return status, _("Quality: OK (the input and the result look like the model's training data).")
    head = (_("Quality: review the result.") if status == "review"
            else _("Quality: FAIL - do not trust this result without checking it."))
    return status, "\n".join([head, *problems])
