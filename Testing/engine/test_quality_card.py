"""The model card as data (issue 19 item 1): schema migration, the card from training cases, the
official card, calibration."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from unetrpp.errors import ManifestError
from unetrpp.image import Image, read_image
from unetrpp.manifest import SCHEMA_VERSION, Manifest, read_manifest_json, validate_manifest
from unetrpp.quality import card as qc, worst

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "Resources" / "models" / "demo-abdomen-ct"
DATA = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else ROOT.parent / "shared" / "data"
CT = DATA / "ct" / "example_ct_sm.nii.gz"


def _v1(doc):
    old = copy.deepcopy(doc)
    old.pop("card", None)
    old["schema_version"] = 1
    return old


def test_a_version_1_package_still_loads_and_has_no_card():
    data = validate_manifest(_v1(read_manifest_json(DEMO)))
    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert Manifest(_v1(read_manifest_json(DEMO))).card == {}


def test_version_1_may_not_carry_a_card_and_unknown_versions_are_refused():
    doc = read_manifest_json(DEMO)
    with_card = _v1(doc)
    with_card["card"] = doc["card"]
    with pytest.raises(ManifestError, match="card"):
        validate_manifest(with_card)
    for bad in (3, True, "2"):
        with pytest.raises(ManifestError, match="schema_version"):
            validate_manifest({**doc, "schema_version": bad})


def test_the_demo_card_describes_its_training_case():
    card = Manifest(read_manifest_json(DEMO)).card
    (ct,) = card["inputs"]
    assert ct["modality"] == "CT" and ct["orientation"] == "RAS"
    assert ct["spacing_mm"]["median"] == [3.0, 3.0, 3.0]
    assert ct["extent_mm"]["max"] == [90.0, 303.0, 366.0]  # 30 x 101 x 122 voxels at 3 mm, patient z, y, x
    # the foreground 0.5/99.5 percentiles are the CT normalisation's clip range
    norm = read_manifest_json(DEMO)["inputs"][0]["normalization"]
    assert ct["foreground"]["percentiles"]["0.5"] == pytest.approx(norm["clip"][0], abs=0.01)
    labels = {l["value"]: l for l in card["labels"]}
    assert labels[5]["presence"] == 0 and "volume_ml" not in labels[5]  # no esophagus in the training labels
    assert labels[6]["presence"] == 1 and labels[6]["volume_ml"]["median"] == pytest.approx(38634 * 27 / 1000, rel=0.01)
    assert 0.25 <= card["calibration"]["temperature"] <= 8


def test_card_from_a_case_bad_values_refused_by_the_schema():
    img = read_image(CT)
    label = (img.array > 100).astype(np.uint8)
    card = qc.card_from_cases([({"ct": img}, label)], [{"name": "ct", "modality": "CT"}], [1, 2])
    assert card["cases"] == 1 and [l["value"] for l in card["labels"]] == [1, 2]
    assert card["labels"][1] == {"value": 2, "presence": 0.0}
    doc = read_manifest_json(DEMO)
    doc["card"] = card
    validate_manifest(doc)
    doc["card"] = {**card, "calibration": {"temperature": 0}}
    with pytest.raises(ManifestError, match="temperature"):
        validate_manifest(doc)


def test_spacing_and_extent_follow_the_patient_axes_not_the_voxel_order():
    a = np.zeros((10, 20, 30), np.int16)  # z, y, x
    axial = Image(a, (1.0, 2.0, 3.0), (0, 0, 0))
    # the same scan stored with the image x axis running head-feet (a permuted direction)
    d = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    permuted = Image(a.transpose(2, 1, 0), (3.0, 2.0, 1.0), (0, 0, 0), d)
    assert qc.geometry(axial)["extent_mm"] == qc.geometry(permuted)["extent_mm"] == [30.0, 40.0, 30.0]
    assert qc.geometry(axial)["spacing_mm"] == qc.geometry(permuted)["spacing_mm"] == [3.0, 2.0, 1.0]


def test_official_card_states_only_what_the_plans_state():
    from unetrpp.official_models import official_manifest

    m = official_manifest("synapse")
    card = m["card"]
    assert card["source"] == "official plans" and "no reference" in card["notes"].lower()
    (ct,) = card["inputs"]
    assert ct["foreground"]["percentiles"] == {"0.5": -958.0, "99.5": 326.0}
    assert ct["spacing_mm"] == {"median": [3.0, 0.7578, 0.7578]}
    assert "labels" not in card and "calibration" not in card and "extent_mm" not in ct
    brats = official_manifest("brats")["card"]
    assert [i["name"] for i in brats["inputs"]] == ["flair", "t1", "t1gd", "t2"]
    assert "foreground" not in brats["inputs"][0]


def test_temperature_fit_recovers_a_known_temperature_and_lowers_ece():
    rng = np.random.default_rng(0)
    k, n = 4, 200_000
    logits = rng.normal(0, 2.0, (k, n))
    true = np.exp(logits - logits.max(0))
    true /= true.sum(0)
    y = np.array([rng.choice(k, p=true[:, i]) for i in range(2000)])
    # sample labels from the calibrated distribution, then make the model over-confident (T = 1/2.5)
    true, logits = true[:, :2000], logits[:, :2000]
    over = np.exp(2.5 * logits - (2.5 * logits).max(0))
    over /= over.sum(0)
    t = qc.fit_temperature(over, y)
    assert t == pytest.approx(2.5, rel=0.2)
    assert qc.expected_calibration_error(qc.apply_temperature(over, t), y) < qc.expected_calibration_error(over, y)
    assert qc.apply_temperature(over, 1.0) is not None
    assert np.allclose(qc.apply_temperature(over, t).sum(0), 1, atol=1e-5)


def test_worst():
    assert worst([]) == "ok" and worst(["ok", "review"]) == "review" and worst(["fail", "review"]) == "fail"


def test_the_export_adds_a_card_with_calibration_from_the_validation_cases(tmp_path):
    """unetrpp.quality.fit.add_card, as unetrpp_train.export calls it, on a one-case dataset in the
    training layout (the demo model's own training CT as train and validation case)."""
    import SimpleITK as sitk

    from unetrpp.package import load
    from unetrpp.quality.fit import add_card

    sys_path_demo = pytest.importorskip("unetrpp_train.demo")
    case = tmp_path / "cases" / "one"
    case.mkdir(parents=True)
    box = (slice(30, 94), slice(20, 84), slice(0, 30))  # x, y, z: one network window, keeps the test short
    img = sitk.ReadImage(str(CT))[box]
    sitk.WriteImage(img, str(case / "image_ct.nii.gz"))
    seg = sitk.ReadImage(str(DATA / "ct" / "example_seg.nii.gz"))[box]
    lab = sitk.GetImageFromArray(sys_path_demo.remap_totalseg(sitk.GetArrayFromImage(seg)))
    lab.CopyInformation(img)
    sitk.WriteImage(lab, str(case / "label.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({"cases": {"one": {
        "images": {"ct": "cases/one/image_ct.nii.gz"}, "label": "cases/one/label.nii.gz"}}}))
    model = load(DEMO)
    manifest = copy.deepcopy(model.manifest.data)
    manifest.pop("card")
    add_card(manifest, model.network, {"root": str(tmp_path), "train_cases": ["one"], "val_cases": ["one"]})
    card = manifest["card"]
    assert card["cases"] == 1 and card["inputs"][0]["orientation"] == "RAS"
    assert 0.25 <= card["calibration"]["temperature"] <= 8 and card["calibration"]["cases"] == 1
    assert card["calibration"]["ece_after"] <= card["calibration"]["ece_before"] + 1e-6
    liver = {l["value"]: l for l in card["labels"]}[6]
    assert set(liver["entropy"]) == {"inside", "border"}
    validate_manifest(manifest)
    gone = copy.deepcopy(model.manifest.data)
    gone.pop("card")
    assert "card" not in add_card(gone, model.network, {"root": str(tmp_path / "moved")})
