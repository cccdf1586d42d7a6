"""The options a client may send with a job (form field `options`, JSON), checked on arrival."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnetrppError


@dataclass(frozen=True)
class JobOptions:
    """`unetrpp segment`'s options that make sense on a server (the server picks the device)."""

    fast: bool = False
    overlap: float | None = None
    roi: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    series_uid: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"fast": self.fast, "overlap": self.overlap, "series_uid": self.series_uid,
                "roi": None if self.roi is None else [list(self.roi[0]), list(self.roi[1])]}

    def run_options(self) -> dict[str, Any]:
        """Keyword arguments of `Segmenter.run`."""
        return {"fast": self.fast, "overlap": self.overlap, "roi": self.roi, "series_uid": self.series_uid}

    @classmethod
    def from_json(cls, data: Any) -> "JobOptions":
        """Unknown keys and wrong types are refused with a message."""
        if not isinstance(data, Mapping):
            raise UnetrppError("options must be a JSON object")
        known = {"fast", "overlap", "roi", "series_uid"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnetrppError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        fast, overlap, roi, series_uid = (data.get(k) for k in ("fast", "overlap", "roi", "series_uid"))
        if not isinstance(fast, (bool, type(None))):
            raise UnetrppError("option fast must be true or false")
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float))
                                    or not 0 <= overlap < 1):
            raise UnetrppError("option overlap must be a number in [0, 1)")
        if roi is not None:
            try:
                lo, hi = (tuple(float(v) for v in roi[0]), tuple(float(v) for v in roi[1]))
                valid = len(roi) == 2 and len(lo) == 3 and len(hi) == 3 and all(b > a for a, b in zip(lo, hi))
            except (TypeError, ValueError, IndexError, KeyError):
                valid = False
            if not valid:
                raise UnetrppError("option roi must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] (mm, LPS), "
                                   "each max above its min")
            roi = (lo, hi)
        if series_uid is not None and not isinstance(series_uid, str):
            raise UnetrppError("option series_uid must be a string")
        return cls(fast=bool(fast), overlap=None if overlap is None else float(overlap), roi=roi, series_uid=series_uid)
