"""SNOMED-CT codes (scheme SCT) used in segment terminology, helpers to build entries, and the
Slicer terminology context that holds each entry.

Slicer shows these in the segment's terminology and writes them into .seg.nrrd / DICOM SEG. Its
terminology picker finds an entry only in the context the TerminologyEntry string names, so each
entry names the first context that has it: Slicer's "3D Slicer General Anatomy list", else its
"DICOM master list" (both loaded by default; copies reduced to codes and meanings are in
data/slicer-default-*.term.json), else this project's data/UNETRPlusPlus.term.json (loaded by the
Slicer module) for what neither has (e.g. myocardium)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = ("49755003", "Morphologically Altered Structure")
RIGHT = ("24028007", "Right")
LEFT = ("7771000", "Left")

DATA_DIR = Path(__file__).resolve().parent / "data"
TERMINOLOGY_FILE = DATA_DIR / "UNETRPlusPlus.term.json"  # Slicer format: LoadTerminologyFromFile
# Slicer's default contexts, in the order an entry's context is chosen, then ours
TERMINOLOGY_FILES = (DATA_DIR / "slicer-default-GeneralAnatomy.term.json",
                     DATA_DIR / "slicer-default-DICOM-Master.term.json", TERMINOLOGY_FILE)
ANATOMIC_CONTEXT_FILE = DATA_DIR / "slicer-default-AnatomicRegion-DICOM-Master.term.json"
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
UNETRPP_CONTEXT = "Segmentation category and type - UNETR++"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def code(value: tuple[str, str]) -> dict[str, str]:
    return {"scheme": "SCT", "code": value[0], "meaning": value[1]}


def terminology(
    type_: tuple[str, str],
    category: tuple[str, str] = ANATOMICAL_STRUCTURE,
    modifier: tuple[str, str] | None = None,
    region: tuple[str, str] | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"category": code(category), "type": code(type_)}
    if modifier:
        entry["modifier"] = code(modifier)
    if region:
        entry["region"] = code(region)
    return entry


def _key(c: dict[str, str] | None) -> str:
    return f"{c['scheme']}^{c['code']}" if c else ""


def _k(d: dict[str, Any]) -> str:
    return f"{d['CodingSchemeDesignator']}^{d['CodeValue']}"


@functools.lru_cache(maxsize=1)
def contexts() -> dict[str, dict[str, dict[str, list[str]]]]:
    """{context name: {category: {type: [modifiers]}}} (SCHEME^CODE keys) of TERMINOLOGY_FILES."""
    out = {}
    for path in TERMINOLOGY_FILES:
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[doc["SegmentationCategoryTypeContextName"]] = {
            _k(c): {_k(t): [_k(m) for m in t.get("Modifier", [])] for t in c.get("Type", [])}
            for c in doc["SegmentationCodes"]["Category"]}
    return out


def in_context(term: dict[str, Any], context: str) -> bool:
    types = contexts()[context].get(_key(term["category"]), {})
    modifiers = types.get(_key(term["type"]))
    if modifiers is None:
        return False
    return not term.get("modifier") or _key(term["modifier"]) in modifiers


def context_of(term: dict[str, Any]) -> str:
    """The first terminology context that holds this entry (General Anatomy when none does: Slicer
    keeps the codes, only its picker cannot offer the entry)."""
    return next((name for name in contexts() if in_context(term, name)), GENERAL_ANATOMY)


def slicer_terminology_string(term: dict[str, Any] | None) -> str:
    """The `SegmentN_Tags` TerminologyEntry string Slicer stores in .seg.nrrd headers."""
    if not term:
        return ""

    def triple(c: dict[str, str] | None) -> str:
        return f"{c['scheme']}^{c['code']}^{c['meaning']}" if c else "^^"

    return (
        f"{context_of(term)}"
        f"~{triple(term['category'])}~{triple(term['type'])}~{triple(term.get('modifier'))}"
        f"~{ANATOMIC_CONTEXT}~{triple(term.get('region'))}~^^"
    )
