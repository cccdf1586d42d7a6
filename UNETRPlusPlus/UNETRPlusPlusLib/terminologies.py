"""Load this project's terminology context (unetrpp/data/UNETRPlusPlus.term.json: entries Slicer's
default lists lack, e.g. myocardium) into Slicer's Terminologies logic, so that the Segment
Editor's terminology picker finds every segment the models produce. unetrpp.terminology names,
for each label, the context that holds it (Slicer's General Anatomy or DICOM master list, or this
one). The engine package is not imported here (no torch in Slicer's process): its terminology
module (standard library only) is loaded from its file, so there is one definition of the
TerminologyEntry string for the engine's .seg.nrrd files and the module's segments."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from .modelstore import MODULE_DIR

log = logging.getLogger(__name__)

TERMINOLOGY_FILE = MODULE_DIR / "unetrpp" / "data" / "UNETRPlusPlus.term.json"
CONTEXT_NAME = "Segmentation category and type - UNETR++"


def load_terminology(terminologies_logic: Any) -> str:
    """Load the context once (Slicer keeps it for the session); returns its name, "" on failure."""
    if terminologies_logic is None:
        return ""
    if terminologies_logic.IsTerminologyContextLoaded(CONTEXT_NAME):
        return CONTEXT_NAME
    name = terminologies_logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if name != CONTEXT_NAME:
        log.error("could not load the UNETR++ terminology from %s", TERMINOLOGY_FILE)
        return ""
    return name


def _engine_terminology() -> Any:
    spec = importlib.util.spec_from_file_location("UNETRPlusPlusLib._engine_terminology",
                                                  MODULE_DIR / "unetrpp" / "terminology.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TERMINOLOGY = _engine_terminology()


def terminology_string(term: dict[str, Any] | None) -> str:
    """A manifest terminology entry as Slicer's TerminologyEntry string, naming the context that
    holds it (unetrpp.terminology.slicer_terminology_string)."""
    return _TERMINOLOGY.slicer_terminology_string(term)
