"""Load this project's terminology context (unetrpp/data/UNETRPlusPlus.term.json: entries Slicer's
default lists lack, e.g. myocardium) into Slicer's Terminologies logic, so that the Segment
Editor's terminology picker finds every segment the models produce. unetrpp.terminology names,
for each label, the context that holds it (Slicer's General Anatomy or DICOM master list, or this
one). unetrpp.terminology is torch-free: one definition of the TerminologyEntry string for the
engine's .seg.nrrd files and the module's segments."""

from __future__ import annotations

import logging
from typing import Any

from unetrpp.terminology import TERMINOLOGY_FILE, UNETRPP_CONTEXT
from unetrpp.terminology import slicer_terminology_string as terminology_string  # noqa: F401 - for callers

log = logging.getLogger(__name__)

CONTEXT_NAME = UNETRPP_CONTEXT


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

