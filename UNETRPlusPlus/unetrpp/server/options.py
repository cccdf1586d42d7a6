"""The options a client may send with a job (form field `options`, JSON), checked on arrival."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        """Unknown keys and wrong types are refused with a message (`unetrpp.request.options_from_json`,
        the one check of request options; `data` may be the JSON text, read by the one bounded reader)."""
        from ..request import options_from_json

        o = options_from_json(data, allowed=("fast", "overlap", "roi", "series_uid"))
        return cls(fast=o["fast"], overlap=o["overlap"], roi=o["roi"], series_uid=o["series_uid"])
