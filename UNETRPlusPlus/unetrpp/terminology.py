"""SNOMED-CT codes (scheme SCT) used in segment terminology, and helpers to build entries.

Slicer shows these in the segment's terminology and writes them into .seg.nrrd / DICOM SEG."""

from __future__ import annotations

from typing import Any

ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = ("49755003", "Morphologically Altered Structure")
RIGHT = ("24028007", "Right")
LEFT = ("7771000", "Left")


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


def slicer_terminology_string(term: dict[str, Any] | None) -> str:
    """The `SegmentN_Tags` TerminologyEntry string Slicer stores in .seg.nrrd headers."""
    if not term:
        return ""

    def triple(c: dict[str, str] | None) -> str:
        return f"{c['scheme']}^{c['code']}^{c['meaning']}" if c else "^^"

    return (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        f"~{triple(term['category'])}~{triple(term['type'])}~{triple(term.get('modifier'))}"
        f"~Anatomic codes - DICOM master list~{triple(term.get('region'))}~^^"
    )
