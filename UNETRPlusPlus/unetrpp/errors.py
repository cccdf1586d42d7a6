"""One exception type per kind of user mistake; every message says what to do next."""

from __future__ import annotations


class UnetrppError(Exception):
    """Base of all errors the engine reports to users (CLI exit code 2, Slicer message box)."""


class ManifestError(UnetrppError):
    """model.json is missing, is not JSON, or breaks the manifest schema (the message names the field)."""


class PackageError(UnetrppError):
    """A model package is missing, unreadable, or incomplete."""


class IntegrityError(UnetrppError):
    """A file's SHA256 does not match the recorded one (corrupt or tampered download/package)."""


class CheckpointError(UnetrppError):
    """An official checkpoint cannot be imported (unsafe pickle, wrong variant, missing keys)."""


class InputImageError(UnetrppError):
    """An input volume is unreadable, has the wrong dimensionality, or does not fit the model."""


class OutputExistsError(UnetrppError):
    """The output path already exists and overwriting was not requested."""


class CancelledError(UnetrppError):
    """The user cancelled the run."""


class ResourceLimitError(UnetrppError):
    """The work an input asks for exceeds a stated limit (the message names it), refused before allocating."""
