"""Errors the module shows to the user. Each carries a `kind` so the GUI and tests can tell them
apart, and a message that says what to do."""

from __future__ import annotations


class ModuleError(Exception):
    kind = "error"

    def __init__(self, message: str, kind: str | None = None, details: str = "") -> None:
        super().__init__(message)
        if kind:
            self.kind = kind
        self.details = details


class InputError(ModuleError):
    """The chosen volumes cannot be segmented with the chosen model (checked before anything runs)."""

    kind = "input"


class ModelError(ModuleError):
    """The model is not installed, is corrupt, or failed its SHA256 check."""

    kind = "model"


class WorkerError(ModuleError):
    """The engine process failed (crash, out of memory, engine error)."""

    kind = "worker"


class CancelledByUser(ModuleError):
    kind = "cancelled"
