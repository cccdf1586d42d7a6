"""Every segment a bundled or official model produces can be found in Slicer's terminology picker:
its TerminologyEntry names a context that really holds its category, type and modifier (and its
anatomic region), checked with Slicer's own Terminologies logic (slicer-core) on the contexts
Slicer loads by default (reduced copies, unetrpp/data/slicer-default-*.term.json) and on the
project's UNETRPlusPlus.term.json, which the module loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import slicer

from UNETRPlusPlusLib.terminologies import CONTEXT_NAME, TERMINOLOGY_FILE, load_terminology

pytestmark = pytest.mark.slicer
REPO = Path(__file__).resolve().parents[2]


def all_model_manifests() -> list[dict]:
    from unetrpp.official_models import official_manifest

    manifests = [official_manifest(v) for v in ("synapse", "acdc", "brats", "lung")]
    manifests += [json.loads(p.read_text()) for p in sorted((REPO / "Resources" / "models").glob("*/model.json"))]
    return manifests


def entries() -> list[tuple[str, str, dict]]:
    out = []
    for m in all_model_manifests():
        for item in [*m["labels"], *m.get("regions", [])]:
            out.append((m["name"], item["name"], item.get("terminology")))
    return out


@pytest.fixture(scope="module")
def terminologies():
    from unetrpp import terminology

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for path in terminology.TERMINOLOGY_FILES[:-1]:  # Slicer's defaults (loaded by Slicer itself)
        assert logic.LoadTerminologyFromFile(str(path))
    assert logic.LoadRegionContextFromFile(str(terminology.ANATOMIC_CONTEXT_FILE)) == terminology.ANATOMIC_CONTEXT
    assert load_terminology(logic) == CONTEXT_NAME  # what the module does at start-up
    assert load_terminology(logic) == CONTEXT_NAME  # once only
    return logic


def _find(items: list, entry_code) -> object | None:
    return next((i for i in items if i.GetCodingSchemeDesignator() == entry_code.GetCodingSchemeDesignator()
                 and i.GetCodeValue() == entry_code.GetCodeValue()), None)


def _listed(count: int, get_nth, cls=None) -> list:
    """Items 0..count-1 of a Terminologies-logic list, each read into a new object."""
    items = []
    for i in range(count):
        item = (cls or slicer.vtkSlicerTerminologyType)()
        get_nth(i, item)
        items.append(item)
    return items


def resolves(logic, text: str) -> str:
    """'' if Slicer finds the entry's category/type/modifier in the context it names and its
    region in the named anatomic context; else what is missing."""
    entry = slicer.vtkSlicerTerminologyEntry()
    if not logic.DeserializeTerminologyEntry(text, entry):
        return "unparsable"
    ctx = entry.GetTerminologyContextName()
    categories = _listed(logic.GetNumberOfCategoriesInTerminology(ctx),
                         lambda i, c: logic.GetNthCategoryInTerminology(ctx, i, c), slicer.vtkSlicerTerminologyCategory)
    category = _find(categories, entry.GetCategoryObject())
    if category is None:
        return f"category not in '{ctx}'"
    types = _listed(logic.GetNumberOfTypesInTerminologyCategory(ctx, category),
                    lambda i, t: logic.GetNthTypeInTerminologyCategory(ctx, category, i, t))
    type_ = _find(types, entry.GetTypeObject())
    if type_ is None:
        return f"type not in '{ctx}'"
    modifier = entry.GetTypeModifierObject()
    if modifier.GetCodeValue():
        mods = _listed(logic.GetNumberOfTypeModifiersInTerminologyType(ctx, category, type_),
                       lambda i, m: logic.GetNthTypeModifierInTerminologyType(ctx, category, type_, i, m))
        if _find(mods, modifier) is None:
            return f"modifier not in '{ctx}'"
    region = entry.GetRegionObject()
    if region.GetCodeValue():
        rctx = entry.GetRegionContextName()
        regions = _listed(logic.GetNumberOfRegionsInRegionContext(rctx),
                          lambda i, r: logic.GetNthRegionInRegionContext(rctx, i, r))
        if _find(regions, region) is None:
            return f"region not in '{rctx}'"
    return ""


@pytest.mark.parametrize("model, label, term", entries(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_label_resolves_in_the_context_it_names(terminologies, model, label, term):
    from unetrpp.terminology import slicer_terminology_string

    assert term, f"{model}: '{label}' has no terminology"
    problem = resolves(terminologies, slicer_terminology_string(term))
    assert problem == "", f"{model}: '{label}': {problem}"


def test_the_check_fails_for_entries_slicer_does_not_have(terminologies):
    from unetrpp.terminology import GENERAL_ANATOMY, slicer_terminology_string, terminology

    myocardium = slicer_terminology_string(terminology(("74281007", "Myocardium")))
    assert myocardium.startswith(CONTEXT_NAME + "~")
    assert resolves(terminologies, myocardium.replace(CONTEXT_NAME, GENERAL_ANATOMY)).startswith("type not in")
    unknown = slicer_terminology_string(terminology(("1234567", "Nothing")))
    assert resolves(terminologies, unknown).startswith("type not in")
    bad_region = slicer_terminology_string(terminology(("108369006", "Neoplasm"), ("49755003", "Morphologically Altered Structure"),
                                                       region=("1234567", "Nowhere")))
    assert resolves(terminologies, bad_region).startswith("region not in")


def test_contexts_named_where_slicer_has_them_and_shipped_file_only_adds_what_is_missing():
    """IVC, portal vein and neoplasms are in Slicer's DICOM master list (not its General Anatomy
    list): named there. Myocardium is in neither: it is in the shipped file, which holds nothing
    Slicer already has."""
    from unetrpp import terminology as T

    by_name = {(m, l): T.context_of(t) for m, l, t in entries()}
    assert by_name[("synapse-official", "liver")] == T.GENERAL_ANATOMY
    assert by_name[("synapse-official", "inferior vena cava")] == T.DICOM_MASTER
    assert by_name[("synapse-official", "portal and splenic vein")] == T.DICOM_MASTER
    assert by_name[("brats-official", "enhancing tumour")] == T.DICOM_MASTER
    assert by_name[("lung-official", "lung tumour")] == T.DICOM_MASTER
    assert by_name[("acdc-official", "left ventricle myocardium")] == T.UNETRPP_CONTEXT
    ours = T.contexts()[T.UNETRPP_CONTEXT]
    for category, types in ours.items():
        for type_ in types:
            for default in (T.GENERAL_ANATOMY, T.DICOM_MASTER):
                assert type_ not in T.contexts()[default].get(category, {}), f"{type_} is already in {default}"
    assert TERMINOLOGY_FILE == T.TERMINOLOGY_FILE and TERMINOLOGY_FILE.is_file()



def test_module_segments_use_the_same_entry_strings_as_the_engine():
    """The module names the same contexts as the engine's .seg.nrrd writer (one definition)."""
    from unetrpp.terminology import slicer_terminology_string

    from UNETRPlusPlusLib.terminologies import terminology_string

    assert terminology_string is slicer_terminology_string
    assert any(terminology_string(t).startswith(CONTEXT_NAME + "~") for _m, _l, t in entries())
