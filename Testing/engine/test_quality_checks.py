"""Input checks and per-structure result checks (issue 19 items 2-3) on the shared volumes and
small synthetic arrays; pure functions, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unetrpp.image import Image, read_image
from unetrpp.manifest import Manifest, read_manifest_json
from unetrpp.quality.assess import add_to_report, assess_inputs, assess_result
from unetrpp.quality.checks import check_sequences, looks_like
from unetrpp.quality.structures import touching_edges, uncertainty

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "Resources" / "models" / "demo-abdomen-ct"
DATA = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo() -> Manifest:
    return Manifest(read_manifest_json(DEMO))


@pytest.fixture(scope="module")
def ct() -> Image:
    return read_image(DATA / "ct" / "example_ct_sm.nii.gz")


def _status(checks, name):
    return {c.name: c for c in checks}[name]


def without_rescale(ct: Image) -> Image:
    """The shared CT as a scanner stores it before the rescale intercept (-1024) is applied."""
    return ct.with_array(np.clip(ct.array.astype(np.int32) + 1024, 0, None).astype(np.uint16))


def test_the_training_ct_passes_every_input_check(demo, ct):
    checks = assess_inputs({"ct": ct}, demo)
    assert {c.name: c.status for c in checks} == {"modality": "ok", "intensity": "ok", "spacing": "ok", "extent": "ok",
                                                  "orientation": "ok"}
    assert all(c.message.startswith("ct:") for c in checks)


def test_mri_into_a_ct_model_fails_at_the_modality_check(demo):
    for path in (DATA / "mr_brain" / "pyradiomics" / "brain1_image.nrrd",
                 DATA / "mr_brain" / "raw_unregistered" / "TCGA-FG-6692-t2.nii.gz"):
        checks = assess_inputs({"ct": read_image(path)}, demo)
        modality = _status(checks, "modality")
        assert modality.status == "fail" and "MRI" in modality.message and modality.details["looks_like"] == "MR"


def test_a_ct_without_rescale_is_flagged(demo, ct):
    modality = _status(assess_inputs({"ct": without_rescale(ct)}, demo), "modality")
    assert modality.status == "fail" and "rescale" in modality.message


def test_chest_ct_is_a_ct_but_coarser_longer_and_in_another_voxel_order(demo):
    checks = assess_inputs({"ct": read_image(DATA / "ct_lung" / "lung1_image.nrrd")}, demo)
    status = {c.name: c.status for c in checks}
    assert status["modality"] == "ok" and status["spacing"] == "review" and status["extent"] == "review"
    orientation = _status(checks, "orientation")
    assert orientation.status == "review" and orientation.details["suggest_orientation"] == "RAS"
    assert "LPS" in orientation.message and "RAS" in orientation.message


def test_the_dicom_slab_is_short(demo):
    extent = _status(assess_inputs({"ct": read_image(DATA / "ct_dicom" / "example_ct_dicom")}, demo), "extent")
    assert extent.status == "review" and "lower bounds" in extent.message


def test_an_mr_model_refuses_a_ct(ct):
    from unetrpp.official_models import official_manifest

    acdc = official_manifest("acdc")
    acdc["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    checks = assess_inputs({"mri": ct}, Manifest(acdc))
    assert _status(checks, "modality").status == "fail"
    # the official card states no extent or voxel order: those checks say so instead of guessing
    assert _status(checks, "extent").details["reference"] is None
    assert _status(checks, "orientation").status == "ok"


def test_modality_signatures():
    rng = np.random.default_rng(0)
    ct_like = np.concatenate([np.full(3000, -1000.0), rng.normal(40, 30, 7000)])
    assert looks_like(ct_like) == "CT"
    assert looks_like(ct_like + 1024) == "CT without rescale"
    assert looks_like(rng.uniform(0, 2000, 10000)) == "MR"


def test_multi_input_sequences_duplicates_and_swaps():
    from unetrpp.official_models import official_manifest
    from unetrpp.quality.card import card_from_cases

    names = ["flair", "t1", "t1gd", "t2"]
    files = {"flair": "t2f", "t1": "t1n", "t1gd": "t1c", "t2": "t2w"}
    images = {n: read_image(DATA / "mr_brain" / "brats_case" / f"{files[n]}.nii.gz") for n in names}
    doc = official_manifest("brats")
    doc["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    doc["card"] = card_from_cases([(images, None)], doc["inputs"], [1, 2, 3])
    brats = Manifest(doc)
    ok = _status(assess_inputs(images, brats), "sequences")
    assert ok.status == "ok"
    swapped = dict(images, t1=images["t2"], t2=images["t1"])
    swap = _status(assess_inputs(swapped, brats), "sequences")
    assert swap.status == "review" and swap.details["suggested"]["t1"] == "t2"
    twice = dict(images, t1gd=images["t1"])
    assert _status(assess_inputs(twice, brats), "sequences").status == "fail"
    assert check_sequences({"a": np.zeros(3)}, brats) is None


def test_uncertainty_is_zero_for_certain_and_one_for_uniform_probabilities():
    p = np.zeros((4, 2, 3, 3), np.float32)
    p[1, 0] = 1
    p[:, 1] = 0.25
    labels, entropy = uncertainty(p)
    assert np.allclose(entropy[0], 0, atol=1e-5) and np.allclose(entropy[1], 1, atol=1e-5)
    assert (labels[0] == 1).all()
    # a temperature above 1 flattens, below 1 sharpens
    q = np.full((3, 1, 2, 2), 0.1, np.float32)
    q[0] = 0.8
    assert uncertainty(q, 2.0)[1].mean() > uncertainty(q)[1].mean() > uncertainty(q, 0.5)[1].mean()


def test_partial_means_touching_the_scan_edge():
    a = np.zeros((5, 6, 7), np.uint8)
    a[0, 2:4, 2:4] = 1  # first slice
    a[2, 2:4, 2:4] = 2  # inside
    a[2, 2, 6] = 3  # right edge
    assert touching_edges(a) == {1, 3}
    assert touching_edges(a, (slice(2, 4), slice(0, 6), slice(0, 6))) == {2}  # a region of interest


def _result(demo: Manifest, labels: np.ndarray, sharp: float, segments_ml: dict[int, float]):
    """Probabilities on a grid equal to the labelmap's, peaked at `labels` with `sharp` on the winner."""
    k = 14
    p = np.full((k, *labels.shape), (1 - sharp) / (k - 1), np.float32)
    for v in range(k):
        p[v][labels == v] = sharp
    image = Image(labels, (3.0, 3.0, 3.0), (0, 0, 0))
    segments = [{"value": l.value, "name": l.name, "volume_ml": segments_ml.get(l.value, 0.0)} for l in demo.labels]

    class State:
        roi_box = tuple(slice(0, n) for n in labels.shape)

    return segments, assess_result(image, p, State(), demo, segments)


def test_structures_plausible_uncertain_missing_and_partial(demo):
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:12, 2:12, 2:12] = 6  # "liver" inside the scan
    labels[0:4, 14:18, 14:18] = 1  # "spleen" cut by the first slice
    card = {l["value"]: l for l in demo.card["labels"]}
    vols = {6: card[6]["volume_ml"]["median"], 1: card[1]["volume_ml"]["median"] * 0.4}
    segments, sure = _result(demo, labels, 0.9999, vols)
    q = sure.segments
    assert q[6]["status"] == "ok" and q[6]["partial"] is False and q[6]["uncertainty"]["inside"] < 0.2
    assert q[1]["status"] == "ok" and q[1]["partial"] is True  # small, but a lower bound: not a reason
    assert q[5] == {"status": "ok", "reasons": [], "uncertainty": None, "partial": False}  # never trained, absent
    assert q[2]["status"] == "review" and "not found" in q[2]["reasons"][0]  # expected kidney missing
    assert sure.check.status == "review" and "right kidney" in sure.check.details["doubtful"]
    assert "spleen" in sure.check.details["partial"]
    segments, unsure = _result(demo, labels, 0.3, vols)
    assert unsure.segments[6]["status"] == "fail" and "uncertain" in unsure.segments[6]["reasons"][0]
    report = add_to_report({"segments": segments}, [], unsure)
    assert report["quality"]["status"] == "fail"
    assert set(report["segments"][0]["quality"]) == {"status", "reasons", "uncertainty", "partial"}
    assert set(report["quality"]["checks"][0]) >= {"name", "status", "message"}


def test_fragmented_and_too_large_structures_need_review(demo):
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10] = 6
    labels[12:18, 12:18, 12:18] = 6  # a second, large piece
    _, r = _result(demo, labels, 0.9999, {6: 50_000.0})
    reasons = " ".join(r.segments[6]["reasons"])
    assert r.segments[6]["status"] == "review" and "fragmented" in reasons and "larger than" in reasons


def test_large_grids_sample_the_entropy_but_measure_like_the_full_grid(monkeypatch):
    from unetrpp.quality import structures
    from unetrpp.quality.structures import entropy_step, per_structure_measures

    rng = np.random.default_rng(1)
    labels = np.zeros((24, 30, 36), np.uint8)
    labels[4:20, 5:25, 6:30] = 2
    labels[10:12, 10:12, 10:12] = 3  # smaller than the sampling
    p = rng.uniform(0.0, 1.0, (4, *labels.shape)).astype(np.float32)
    for v in range(4):
        p[v][labels == v] += 3.0
    p /= p.sum(0)
    full_labels, full = uncertainty(p)
    sub_labels, sub = uncertainty(p, step=2)
    assert sub.shape == (12, 15, 18) and np.array_equal(full_labels, sub_labels)
    assert np.allclose(sub, full[::2, ::2, ::2], atol=1e-6)
    a = per_structure_measures(full_labels, full, [2, 3])
    b = per_structure_measures(sub_labels, sub, [2, 3], step=2)
    assert b[2]["inside"] == pytest.approx(a[2]["inside"], abs=0.02) and b[2]["fragments"] == a[2]["fragments"]
    assert b[3]["inside"] == pytest.approx(a[3]["inside"], abs=0.1)
    monkeypatch.setattr(structures, "ENTROPY_FULL_VOXELS", 1000)
    assert entropy_step((24, 30, 36)) == 3 and entropy_step((5, 5, 5)) == 1


def test_the_uncertainty_map_covers_the_input_grid_also_when_sampled(monkeypatch, demo, ct):
    from unetrpp.preprocess import labels_to_input_grid, preprocess
    from unetrpp.quality import structures
    from unetrpp.quality.assess import uncertainty_map
    from unetrpp.segmenter import statistics

    _, state = preprocess({"ct": ct}, demo)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(14), size=state.network_shape).astype(np.float32).transpose(3, 0, 1, 2)
    lab = labels_to_input_grid(p, state)
    segments, _ = statistics(lab, demo)
    maps = []
    for limit in (structures.ENTROPY_FULL_VOXELS, 1000):
        monkeypatch.setattr(structures, "ENTROPY_FULL_VOXELS", limit)
        r = assess_result(lab, p, state, demo, segments)
        assert r.step == (1 if limit > 1000 else structures.entropy_step(state.network_shape))
        m = uncertainty_map(r, state)
        assert m.array.shape == ct.array.shape and m.same_grid(ct)
        maps.append(m.array)
    assert abs(float(maps[0].mean()) - float(maps[1].mean())) < 0.02
