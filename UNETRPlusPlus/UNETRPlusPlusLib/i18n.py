"""Translatable strings, as Slicer's own modules do: `from .i18n import _` then `_("text")`.
In Slicer this is `slicer.i18n.tr` (the translation context is the calling file, e.g.
"UNETRPlusPlusLib.state"); slicer-core (the headless tests) has no slicer.i18n, so the English
text is used as it is."""

from __future__ import annotations

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # slicer-core

    def _(text: str) -> str:
        return text

    def translate(context: str, text: str) -> str:  # noqa: ARG001 - same signature as slicer.i18n
        return text


__all__ = ["_", "translate"]
