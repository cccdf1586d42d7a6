"""Errors the module shows to the user.

Each error has a `category` from the engine's one taxonomy (`unetrpp.errors`: input, model, output,
environment, resource, quality, cancelled, internal), which the GUI switches on, a finer `kind` for
the module's own checks ("no-volume", "not-3d", ...) and for the ways a process can end ("crash",
"out-of-memory", "timeout"), and a message that says what to do.

A failure the engine reports arrives as its JSON error event (`{"event": "error", "category": ...,
"message": ...}`); `from_engine` turns it into the matching error with the advice of its category.
No Qt, no torch: unetrpp.errors is standard library only.
"""

from __future__ import annotations

from typing import Any

from unetrpp import errors as engine

from .i18n import _

CATEGORIES = engine.CATEGORIES


class ModuleError(Exception):
    kind = "error"
    category = engine.INTERNAL

    def __init__(self, message: str, kind: str | None = None, details: str = "", category: str | None = None) -> None:
        super().__init__(message)
        if kind:
            self.kind = kind
        if category in CATEGORIES:
            self.category = category
        self.details = details


class InputError(ModuleError):
    """The chosen volumes cannot be segmented with the chosen model (checked before anything runs),
    or the engine refused an input."""

    kind = "input"
    category = engine.INPUT


class ModelError(ModuleError):
    """The model is not installed, is corrupt, or failed its SHA256 check."""

    kind = "model"
    category = engine.MODEL


class WorkerError(ModuleError):
    """The engine process failed (crash, out of memory, engine error)."""

    kind = "worker"
    category = engine.INTERNAL


class CancelledByUser(ModuleError):
    kind = "cancelled"
    category = engine.CANCELLED


def event_category(event: dict[str, Any]) -> str:
    """The category of an engine error event. Events carry `"category"` (unetrpp.errors.classify);
    an event of an older engine (a remote server not yet updated) has only the exception's class
    name in `"kind"`: the engine's own class of that name gives the category, else it is internal."""
    category = event.get("category")
    if category in CATEGORIES:
        return str(category)
    cls = getattr(engine, str(event.get("kind") or ""), None)
    if isinstance(cls, type) and issubclass(cls, engine.UnetrppError):
        return cls.category
    if str(event.get("kind")) in ("MemoryError", "OutOfMemoryError"):
        return engine.RESOURCE
    return engine.INTERNAL


# What the user can do about a failure of each category (appended to the engine's message).
ADVICE = {
    engine.INPUT: _("Check the input volume(s) and the chosen model."),
    engine.MODEL: _("Remove the model and install it again."),
    engine.OUTPUT: _("Check free disk space and the temporary folder."),
    engine.ENVIRONMENT: _("Check the Python packages (Install dependencies), the chosen device and free disk space."),
    engine.RESOURCE: _("Try Fast mode, the CPU device, a smaller region, or close other programs; then run it again."),
    engine.QUALITY: _("The input failed the model's quality checks; see the log."),
    engine.CANCELLED: "",
    engine.INTERNAL: _("This is a bug; please report it with the log (details below)."),
}
ERROR_CLASSES = {engine.INPUT: InputError, engine.MODEL: ModelError, engine.CANCELLED: CancelledByUser}


def from_engine(what: str, event: dict[str, Any], details: str = "",
                advice: dict[str, str] | None = None) -> ModuleError:
    """The error for an engine error event: its category decides the class and the advice, the
    engine's message says what happened. `what` names the task ("The segmentation", "Installing
    x.zip"); `advice` overrides the advice of some categories for this kind of task."""
    category = event_category(event)
    message = str(event.get("message") or "").strip() or _("no message")
    tip = {**ADVICE, **(advice or {})}.get(category, "")
    text = _("{what} failed: {message}").format(what=what, message=message)
    if category == engine.CANCELLED:
        text = _("{what} was cancelled.").format(what=what)
    elif tip:
        text = f"{text.rstrip()} {tip}" if text.rstrip().endswith((".", "!", "?")) else f"{text}. {tip}"
    cls = ERROR_CLASSES.get(category, WorkerError)
    return cls(text, kind=category, details=details, category=category)
