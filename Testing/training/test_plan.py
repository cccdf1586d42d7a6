"""Planning against numbers computed by hand on tiny datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import raw_datasets as rd
from unetrpp.manifest import validate_manifest
from unetrpp.official_models import official_manifest
from unetrpp_train.cli import main
from unetrpp_train.convert import convert
from unetrpp_train.planning import PlanningError, ct_statistics, plan_dataset, target_spacing


def test_target_spacing_median_and_anisotropic_rule():
    # isotropic-ish: plain per-axis median
    assert target_spacing([[1.0, 0.5, 0.5], [2.0, 0.7, 0.7], [1.5, 0.9, 0.9]], [[50, 100, 100]] * 3) == (
        [1.5, 0.7, 0.7], "median")
    # z 5 mm median vs 0.8 mm in-plane (> 3x) and 4 slices * 3 < 16 voxels: z gets the 10th percentile
    # of [2.5, 3, 5, 5, 5] = 2.5 + 0.4 * (3 - 2.5) = 2.7
    spacing, rule = target_spacing([[2.5, .8, .8], [3, .8, .8], [5, .8, .8], [5, .8, .8], [5, .8, .8]], [[4, 16, 16]] * 5)
    assert spacing == pytest.approx([2.7, 0.8, 0.8]) and "10th percentile" in rule
    # anisotropic spacing but many slices (not anisotropic in voxels): median kept
    assert target_spacing([[5, .8, .8]] * 3, [[40, 16, 16]] * 3)[0] == [5.0, 0.8, 0.8]


def test_ct_statistics_by_hand():
    values = np.arange(200, dtype=float)  # 0..199
    # linear percentiles: 0.5 % -> 0.005 * 199 = 0.995; 99.5 % -> 198.005
    stats = ct_statistics(values, "clipped")
    assert stats["clip"] == pytest.approx([0.995, 198.005])
    clipped = np.concatenate([[0.995], np.arange(1, 199), [198.005]])
    assert stats["mean"] == pytest.approx(99.5)  # symmetric clipping keeps the mean
    assert stats["std"] == pytest.approx(np.sqrt(np.mean((clipped - 99.5) ** 2)))
    unclipped = ct_statistics(values, "unclipped")
    assert unclipped["std"] == pytest.approx(np.sqrt((200 ** 2 - 1) / 12))  # sd of 0..n-1
    with pytest.raises(PlanningError, match="no foreground"):
        ct_statistics(np.zeros(0))


def test_plan_lung_dataset_hand_computed(tmp_path):
    # 5 cases (4 train, lung_005 val); spacing x, y, z: case i has z spacing from the list
    z = [2.5, 3.0, 5.0, 5.0, 1.0]
    spacings = [(0.8, 0.8, zi) for zi in z]
    # foreground (50 voxels per case) holds one value per case: 10, 20, 30, 40 (train) and 1000 (val)
    values = [10.0, 20.0, 30.0, 40.0, 1000.0]
    src = rd.lung_source(tmp_path / "src", n=5, spacings=spacings, shape=(4, 16, 16), values=values)
    dst = tmp_path / "dst"
    convert("lung", src, dst, custom_split=True)  # every fifth case val: lung_005 (the 1000 HU case)
    result = plan_dataset(dst, sample_stride=1)
    # training cases only: z spacings [2.5, 3, 5, 5] -> median 4.0 > 3 * 0.8 and 4 slices * 3 < 16:
    # 10th percentile of [2.5, 3, 5, 5] = 2.5 + 0.3 * 0.5 = 2.65
    assert result["plan"]["target_spacing"] == pytest.approx([2.65, 0.8, 0.8])
    norm = result["inputs"][0]["normalization"]
    pooled = np.repeat([10.0, 20.0, 30.0, 40.0], 50)
    lo, hi = 10.0, 40.0  # 0.5/99.5 percentiles of 200 values in 4 equal blocks fall inside the end blocks
    assert norm["scheme"] == "ct" and norm["clip"] == pytest.approx([lo, hi])
    assert norm["mean"] == pytest.approx(25.0) and norm["std"] == pytest.approx(np.sqrt(125.0))
    assert np.std(pooled) == pytest.approx(np.sqrt(125.0))
    assert result["patch_size"] == [32, 192, 192] and result["variant"] == "lung"
    # stride 10 (the default) samples every 10th foreground voxel: 5 per case, same values here
    assert plan_dataset(dst, write=False)["planner"]["intensity"]["ct"]["samples"] == 20

    # plan.json: the manifest's plan/inputs, accepted by the trainer's reader and by the schema
    saved = json.loads((dst / "plan.json").read_text())
    assert saved["plan"] == result["plan"] and saved["inputs"] == result["inputs"]
    from unetrpp_train.data import read_plan

    assert read_plan(dst)["plan"]["target_spacing"] == saved["plan"]["target_spacing"]
    manifest = official_manifest("lung")
    manifest.update(plan=saved["plan"], inputs=saved["inputs"])
    manifest["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    validated = validate_manifest(manifest)  # raises on any schema violation
    assert validated["inputs"][0]["normalization"] == norm


def test_plan_mri_variants_and_patch_override(tmp_path, data_dir):
    convert("brats", rd.brats2021_source(tmp_path / "s"), tmp_path / "d")
    result = plan_dataset(tmp_path / "d", patch_size=[16, 32, 32])
    assert [i["name"] for i in result["inputs"]] == ["flair", "t1", "t1gd", "t2"]
    assert all(i["normalization"] == {"scheme": "zscore", "nonzero_mask": True} for i in result["inputs"])
    assert result["inputs"][2]["aliases"] == official_manifest("brats")["inputs"][2]["aliases"]
    assert result["patch_size"] == [16, 32, 32] and result["plan"]["target_spacing"] == [1.0, 1.0, 1.0]

    convert("acdc", rd.acdc_source(tmp_path / "a", data_dir), tmp_path / "da")
    acdc = plan_dataset(tmp_path / "da")
    assert acdc["inputs"][0]["normalization"] == {"scheme": "zscore", "nonzero_mask": False}
    assert acdc["patch_size"] == [16, 160, 160]
    assert acdc["plan"]["target_spacing"] == pytest.approx([10.0, 1.5625, 1.5625])  # 10 slices: not anisotropic in voxels


def test_plan_cli_and_errors(tmp_path, capsys):
    convert("synapse", rd.small_synapse_source(tmp_path / "s"), tmp_path / "d")
    assert main(["plan", str(tmp_path / "d"), "--patch", "8", "16", "16"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patch_size"] == [8, 16, 16] and out["plan"]["target_spacing"] == pytest.approx([3.0, 0.7578, 0.7578])
    assert main(["plan", str(tmp_path / "nowhere")]) == 2
    assert "is not a converted dataset" in capsys.readouterr().err
