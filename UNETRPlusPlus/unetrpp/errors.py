"""One error taxonomy for every entry point (`unetrpp`, `unetrpp-train`, the worker, batch, the server,
the remote client and the Slicer module).

Every error the engine raises on purpose is a `UnetrppError` whose class names its *category*:

    input        the scan(s) or the request: unreadable, 2D, wrong inputs, bad ROI, ...        exit 2
    model        the model package or checkpoint: missing, corrupt, unsafe, wrong variant      exit 2
    output       where results go: exists, is an input, not writable, unsupported format       exit 2
    environment  the machine: missing device or optional package, disk full, closed stdout     exit 2
    resource     a stated limit would be exceeded (the message names it); out of memory        exit 2
    quality      `--strict` refused a run whose input checks failed (issue 19)                   exit 3
    cancelled    the user stopped the run                                                     exit 130
    internal     anything else: a bug (traceback with -vv)                                       exit 1

`classify(exc)` is the only place that turns an exception into (category, message, exit code); the
category travels in JSON progress events (`{"event": "error", "category": ...}`), server job errors
and worker output, and the Slicer module switches on it instead of on class names or message words.
This module imports nothing beyond the standard library (the Slicer module imports it).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass

INPUT = "input"
MODEL = "model"
OUTPUT = "output"
ENVIRONMENT = "environment"
RESOURCE = "resource"
QUALITY = "quality"
CANCELLED = "cancelled"
INTERNAL = "internal"

#: every category, in the order above
CATEGORIES = (INPUT, MODEL, OUTPUT, ENVIRONMENT, RESOURCE, QUALITY, CANCELLED, INTERNAL)

#: exit code of a process that stops with an error of this category
EXIT_CODES = {INPUT: 2, MODEL: 2, OUTPUT: 2, ENVIRONMENT: 2, RESOURCE: 2, QUALITY: 3, CANCELLED: 130, INTERNAL: 1}


class UnetrppError(Exception):
    """Base of all errors the engine reports to users. Subclasses set `category`; a plain
    UnetrppError is an input error (the most common kind: what the user gave us)."""

    category = INPUT


# input --------------------------------------------------------------------------------------------
class InputImageError(UnetrppError):
    """An input volume is unreadable, has the wrong dimensionality, or does not fit the model."""

    category = INPUT


class RequestError(InputImageError):
    """The options of a request are invalid (ROI, overlap, input names, unknown option). A kind of
    InputImageError, so callers that caught that for a bad ROI or input name still do."""

    category = INPUT


# model --------------------------------------------------------------------------------------------
class PackageError(UnetrppError):
    """A model package is missing, unreadable, or incomplete."""

    category = MODEL


class ManifestError(PackageError):
    """model.json is missing, is not JSON, or breaks the manifest schema (the message names the field)."""


class IntegrityError(PackageError):
    """A file's SHA256 does not match the recorded one (corrupt or tampered download/package)."""


class CheckpointError(PackageError):
    """An official checkpoint cannot be imported (unsafe pickle, wrong variant, missing keys)."""


# output -------------------------------------------------------------------------------------------
class OutputError(UnetrppError):
    """An output cannot be written where asked (format, folder, an input or model under another name)."""

    category = OUTPUT


class OutputExistsError(OutputError):
    """The output path already exists and overwriting was not requested."""


# environment --------------------------------------------------------------------------------------
class EnvironmentProblem(UnetrppError):
    """The machine lacks something the run needs: a device, an optional package, disk space."""

    category = ENVIRONMENT


# resource -----------------------------------------------------------------------------------------
class ResourceLimitError(UnetrppError):
    """The work an input asks for exceeds a stated limit (the message names it), refused before allocating."""

    category = RESOURCE


# quality ------------------------------------------------------------------------------------------
class QualityRefusedError(UnetrppError):
    """`--strict`: an input check failed, so the run was refused before inference (exit 3)."""

    category = QUALITY


# cancelled ----------------------------------------------------------------------------------------
class CancelledError(UnetrppError):
    """The user cancelled the run."""

    category = CANCELLED


# classification -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Classified:
    """What an entry point needs to report an exception: category, one-line message, exit code."""

    category: str
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.category]

    @property
    def is_bug(self) -> bool:
        return self.category == INTERNAL

    def as_json(self) -> dict[str, str]:
        """The form that travels in progress events and job errors."""
        return {"category": self.category, "message": self.message}


def _os_message(exc: OSError) -> str:
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or exc}{where}"


def classify(exc: BaseException) -> Classified:
    """The category and user-facing message of any exception (see the module docstring)."""
    import errno

    if isinstance(exc, UnetrppError):
        category = exc.category if exc.category in EXIT_CODES else INPUT
        return Classified(category, str(exc) or type(exc).__name__)
    if isinstance(exc, KeyboardInterrupt):
        return Classified(CANCELLED, "cancelled")
    if isinstance(exc, BrokenPipeError):
        return Classified(ENVIRONMENT, "standard output was closed (broken pipe); stopped")
    if isinstance(exc, MemoryError):
        return Classified(RESOURCE, "out of memory; close other programs, use a smaller --roi, or a machine with "
                                    "more memory")
    if isinstance(exc, RecursionError):
        return Classified(INPUT, "the input is nested too deeply to process")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Classified(ENVIRONMENT, _os_message(exc))
        if exc.errno == errno.ELOOP:
            return Classified(INPUT, f"symbolic link loop: {exc.filename or exc}")
        return Classified(INPUT, _os_message(exc))
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop"):  # Path.resolve() before 3.13
        return Classified(INPUT, f"symbolic link loop: {str(exc).removeprefix('Symlink loop from ').strip(chr(39))}")
    if isinstance(exc, (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, UnicodeError)):
        return Classified(INPUT, f"{type(exc).__name__}: {exc}")
    # A bug, not the user's input. (ValueError too: our own code raises UnetrppError for bad input.)
    return Classified(INTERNAL, f"internal error ({type(exc).__name__}: {exc}); please report it (run with -vv "
                                "for the traceback)")
