"""Evaluation metrics against hand-made masks with known Dice and HD95, and `evaluate` end to end."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from support import raw_datasets as rd
from unetrpp_train.cli import main
from unetrpp_train.convert import convert
from unetrpp_train.evaluation import EvaluationError, binary_scores, evaluate, hd95

SPACING = (3.0, 1.0, 0.5)  # z, y, x mm: anisotropic


def cube(shape=(24, 24, 24), start=(5, 5, 5), side=10) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Independent reference: surface voxels by erosion, all pairwise distances, pooled 95th percentile."""
    sa = np.argwhere(a & ~ndimage.binary_erosion(a)) * np.asarray(spacing)
    sb = np.argwhere(b & ~ndimage.binary_erosion(b)) * np.asarray(spacing)
    d = cdist(sa, sb)
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


@pytest.mark.parametrize("axis, expected_mm", [(2, 1.0), (0, 6.0)])
def test_offset_cubes_known_dice_and_hd95(axis, expected_mm):
    ref = cube()
    start = [5, 5, 5]
    start[axis] += 2
    pred = cube(start=tuple(start))
    s = binary_scores(pred, ref, SPACING)
    assert s.dice == pytest.approx(0.8)  # 2 * 800 / (1000 + 1000)
    # the protruding face (100 of ~490 surface voxels per cube) lies exactly 2 voxels from the reference
    # surface and nothing lies farther: HD95 = 2 voxels = 2 * spacing along the shift axis
    assert s.hd95_voxels == pytest.approx(2.0)
    assert s.hd95_mm == pytest.approx(expected_mm)
    assert s.hd95_mm == pytest.approx(brute_force_hd95(pred, ref, SPACING))
    assert s.status == "ok" and s.reference_voxels == s.prediction_voxels == 1000


def test_single_voxels_anisotropic_distance():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2, 4, 1] = True
    b[4, 4, 4] = True  # 2 slices (3 mm) and 3 columns (0.5 mm) apart
    assert hd95(a, b, SPACING) == pytest.approx(math.sqrt(6.0 ** 2 + 1.5 ** 2))
    assert hd95(a, b, None) == pytest.approx(math.sqrt(13.0))
    assert binary_scores(a, b, SPACING).dice == 0.0


def test_irregular_masks_match_brute_force():
    rng = np.random.default_rng(3)
    ref = ndimage.gaussian_filter(rng.random((20, 24, 22)), 2.0) > 0.5  # smooth random blobs
    pred = ndimage.binary_dilation(ref, iterations=1) & (rng.random(ref.shape) > 0.05)
    assert 500 < ref.sum() < ref.size - 500
    s = binary_scores(pred, ref, SPACING)
    assert s.hd95_mm == pytest.approx(brute_force_hd95(pred, ref, SPACING))
    assert s.hd95_voxels == pytest.approx(brute_force_hd95(pred, ref, (1, 1, 1)))
    assert s.dice == pytest.approx(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))


def test_empty_masks_are_defined():
    empty = np.zeros((8, 8, 8), bool)
    both = binary_scores(empty, empty, SPACING)
    assert (both.dice, both.hd95_mm, both.hd95_voxels, both.status) == (1.0, 0.0, 0.0, "both empty")
    one = binary_scores(empty, cube((8, 8, 8), (2, 2, 2), 3), SPACING)
    # the official scripts (inference_synapse.py:16-21): one mask empty -> HD95 0, counted in the mean
    assert (one.dice, one.hd95_mm, one.hd95_voxels) == (0.0, 0.0, 0.0)
    assert one.status == "prediction empty"
    excluded = binary_scores(empty, cube((8, 8, 8), (2, 2, 2), 3), SPACING, hd95_empty="exclude")
    assert excluded.dice == 0.0 and math.isnan(excluded.hd95_mm) and math.isnan(excluded.hd95_voxels)
    assert binary_scores(cube((8, 8, 8), (2, 2, 2), 3), empty, SPACING).status == "reference empty"


def _write_like(arr: np.ndarray, like: sitk.Image, path):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.CopyInformation(like)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_prediction_folder_synapse_table(tmp_path, capsys):
    dst = tmp_path / "dst"
    convert("synapse", rd.small_synapse_source(tmp_path / "src"), dst)
    preds = tmp_path / "preds"
    for case in ("img0001", "img0002"):
        ref_img = sitk.ReadImage(str(dst / "cases" / case / "label.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img)
        pred = ref.copy()
        if case == "img0002":
            pred[pred == 6] = 0  # liver missed entirely
            spleen = ref == 1
            pred[spleen] = 0
            pred[np.roll(spleen, 1, axis=2)] = 1  # spleen shifted by one column
        _write_like(pred, ref_img, preds / f"{case}.nii.gz")

    assert main(["evaluate", "--data", str(dst), "--predictions", str(preds), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    rows = {(r["case"], r["class"]): r for r in _rows(out / "per_case.csv")}
    assert len(rows) == 16  # 2 val cases x 8 organs
    assert float(rows[("img0001", "liver")]["dice"]) == 1.0
    assert float(rows[("img0001", "aorta")]["dice"]) == 1.0 and rows[("img0001", "aorta")]["status"] == "both empty"
    assert float(rows[("img0002", "liver")]["dice"]) == 0.0 and float(rows[("img0002", "liver")]["hd95_mm"]) == 0.0
    # spleen box 2 x 5 x 7 voxels shifted by one column: overlap 2 x 5 x 6 -> Dice 120 / 140
    assert float(rows[("img0002", "spleen")]["dice"]) == pytest.approx(120 / 140, abs=1e-6)
    assert float(rows[("img0002", "spleen")]["hd95_voxels"]) == pytest.approx(1.0)
    assert float(rows[("img0002", "spleen")]["hd95_mm"]) == pytest.approx(0.7578, abs=1e-4)
    summary = {r["class"]: r for r in _rows(out / "summary.csv")}
    assert list(summary) == ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta",
                             "pancreas", "mean"]
    assert float(summary["liver"]["dice"]) == pytest.approx(0.5)
    assert summary["liver"]["hd95_missing"] == "0" and float(summary["liver"]["hd95_mm"]) == 0.0
    assert summary["mean"]["hd95_missing"] == "0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dice"]["spleen"] == pytest.approx((1 + 120 / 140) / 2, abs=1e-6)
    assert metrics["evaluation"]["split"] == "val" and metrics["evaluation"]["cases"] == 2
    md = (out / "summary.md").read_text()
    assert "| Dice (%) | 92.86 |" in md and "| img0002 |" in md and "n/a" not in md
    capsys.readouterr()
    # --hd95-empty exclude: the missed liver's HD95 is left out of the mean and counted as missing
    assert main(["evaluate", "--data", str(dst), "--predictions", str(preds), "-o", str(tmp_path / "ex"),
                 "--hd95-empty", "exclude"]) == 0
    rows = {(r["case"], r["class"]): r for r in _rows(tmp_path / "ex" / "per_case.csv")}
    assert rows[("img0002", "liver")]["hd95_mm"] == "nan"
    summary = {r["class"]: r for r in _rows(tmp_path / "ex" / "summary.csv")}
    assert summary["liver"]["hd95_missing"] == "1" and float(summary["liver"]["hd95_mm"]) == 0.0
    assert "n/a" in (tmp_path / "ex" / "summary.md").read_text()

    # reports are not overwritten silently; bad prediction folders name the case and file
    with pytest.raises(EvaluationError, match="already holds an evaluation"):
        evaluate(dst, out, predictions=preds)
    (preds / "img0002.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"case img0002: no prediction .*img0002\.nii\.gz"):
        evaluate(dst, tmp_path / "o2", predictions=preds)
    ref_img = sitk.ReadImage(str(dst / "cases" / "img0002" / "label.nii.gz"))
    shifted = sitk.Image(ref_img)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(preds / "img0002.nii.gz"))
    with pytest.raises(EvaluationError, match="case img0002: prediction .* not on the grid .*origin"):
        evaluate(dst, tmp_path / "o3", predictions=preds)
    assert main(["evaluate", "--data", str(dst), "--predictions", str(tmp_path / "none"), "-o", str(tmp_path / "o4")]) == 2


def test_evaluate_brats_regions(tmp_path):
    dst = tmp_path / "dst"
    convert("brats", rd.brats2021_source(tmp_path / "src"), dst)
    preds = tmp_path / "preds"
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        ref_img = sitk.ReadImage(str(dst / "cases" / case / "label.nii.gz"))
        ref = sitk.GetArrayFromImage(ref_img)
        swapped = np.where(ref == 1, 2, np.where(ref == 2, 1, ref))  # oedema <-> non-enhancing: WT and ET unchanged
        _write_like(swapped, ref_img, preds / f"{case}.nii.gz")
    metrics = evaluate(dst, tmp_path / "out", split="train", predictions=preds)
    assert metrics["dice"]["WT"] == 1.0 and metrics["dice"]["ET"] == 1.0
    _, lab = rd.brats_like_arrays(0)
    tc_ref, tc_pred = np.isin(lab, [2, 3]), np.isin(lab, [1, 3])
    assert metrics["dice"]["TC"] == pytest.approx(2 * (tc_ref & tc_pred).sum() / (tc_ref.sum() + tc_pred.sum()), abs=1e-6)


def test_evaluate_runs_the_engine_inference(tmp_path, tiny_synapse_package):
    dst = tmp_path / "dst"
    convert("synapse", rd.small_synapse_source(tmp_path / "src"), dst)
    metrics = evaluate(dst, tmp_path / "out", model=tiny_synapse_package, device="cpu", fast=True)
    assert metrics["evaluation"]["cases"] == 2 and set(metrics["dice"]) >= {"spleen", "liver"}
    for case in ("img0001", "img0002"):
        pred = sitk.ReadImage(str(tmp_path / "out" / "predictions" / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(dst / "cases" / case / "label.nii.gz"))
        assert pred.GetSize() == ref.GetSize() and pred.GetOrigin() == pytest.approx(ref.GetOrigin())
        assert pred.GetSpacing() == pytest.approx(ref.GetSpacing())
    assert len(_rows(tmp_path / "out" / "per_case.csv")) == 16
