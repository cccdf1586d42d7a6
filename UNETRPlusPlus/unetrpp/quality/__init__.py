"""Know when not to trust a result (issue 19): the model card as data (`card`), input checks before
inference and plausibility/uncertainty checks per structure after it (`checks`).

Every check yields a status, ok / review / fail, and a message a clinician can read. Checks never
block a run by default; `--strict` refuses a run whose input checks fail (`QualityRefusedError`).
"""

from __future__ import annotations

STATUSES = ("ok", "review", "fail")


def worst(statuses) -> str:
    """The most severe of `statuses` (ok < review < fail); ok for none."""
    rank = max((STATUSES.index(s) for s in statuses), default=0)
    return STATUSES[rank]


__all__ = ["STATUSES", "worst"]
