"""Own data in the nnU-Net raw layout (issue 20 item 1): `convert nnunet`, `plan` (the configuration chosen from
the data, printable with `recipe nnunet --data`), `train nnunet`, `evaluate`, `export` — the benchmark commands,
run as real processes on a small nnU-Net-layout dataset (support/raw_datasets.nnunet_source)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support import raw_datasets as rd
from support.phantom import TINY_NETWORK

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
CLI = [sys.executable, "-m", "unetrpp_train.cli"]


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"unetrpp-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def test_choose_configuration_rules():
    from unetrpp_train.planning import PATCH_BUDGET, choose_configuration

    # Synapse-like: 3 mm slices, 0.76 mm pixels, a big median image: stem (2, 4, 4), within the budget, batch Dice
    syn = choose_configuration([130, 390, 390], [3.0, 0.76, 0.76])
    assert syn["stem_kernel"] == [2, 4, 4] and np.prod(syn["patch_size"]) <= PATCH_BUDGET and syn["batch_dice"]
    assert all(p % (8 * k) == 0 for p, k in zip(syn["patch_size"], syn["stem_kernel"]))
    # ACDC-like: 10 mm slices, 1.56 mm pixels: stem (1, 4, 4), dummy 2D
    acdc = choose_configuration([10, 230, 230], [10.0, 1.56, 1.56])
    assert acdc["stem_kernel"] == [1, 4, 4] and acdc["dummy_2d"]
    # isotropic and small: stem (4, 4, 4), the whole median image in one patch, per-sample Dice
    iso = choose_configuration([30, 45, 50], [1.0, 1.0, 1.0])
    assert iso == {**iso, "stem_kernel": [4, 4, 4], "patch_size": [32, 64, 64], "batch_dice": False, "dummy_2d": False}
    from unetrpp_train.planning import PlanningError

    with pytest.raises(PlanningError, match="multiple of"):
        choose_configuration([30, 45, 50], [1.0, 1.0, 1.0], patch_size=[16, 32, 32])


def test_decathlon_form_with_a_4d_image_converts(tmp_path):
    from unetrpp_train.convert import convert

    src = rd.nnunet_source(tmp_path / "Task09", n=5, form="decathlon", channels=("FLAIR", "T1w"))
    data = json.loads(convert("nnunet", src, tmp_path / "dst").read_text())
    assert [c["name"] for c in data["channels"]] == ["flair", "t1w"] and data["variant"] == "auto"
    assert data["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert data["splits"]["val"] == ["case_004"] and len(data["splits"]["train"]) == 4 and len(data["splits"]["all"]) == 5
    t1w = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "dst" / data["cases"]["case_001"]["images"]["t1w"])))
    from support.phantom import phantom

    assert np.allclose(t1w, phantom(1)[0] * 1.5)


def test_nnunet_layout_errors_name_the_problem(tmp_path):
    src = rd.nnunet_source(tmp_path / "src", n=2)
    meta = json.loads((src / "dataset.json").read_text())
    (src / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "tumour": [1, 2]}}))
    bad = run_cli("convert", "nnunet", str(src), "-o", str(tmp_path / "a"), check=False)
    assert bad.returncode == 2 and "region" in bad.stderr and "Traceback" not in bad.stderr
    (src / "dataset.json").write_text(json.dumps(meta))
    (src / "imagesTr" / "case_001_0000.nii.gz").unlink()
    bad = run_cli("convert", "nnunet", str(src), "-o", str(tmp_path / "b"), check=False)
    assert bad.returncode == 2 and "case_001_0000.nii.gz is missing" in bad.stderr
    # dataset.json comes from outside: read by the one bounded JSON reader (nesting, size), an input error
    (src / "dataset.json").write_text('{"labels": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bad = run_cli("convert", "nnunet", str(src), "-o", str(tmp_path / "c"), check=False)
    assert bad.returncode == 2 and "levels deep" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_own_dataset_convert_plan_recipe_train_evaluate_export(tmp_path):
    src = rd.nnunet_source(tmp_path / "raw", n=4, labels=("liver", "kidney_left"))
    dst = tmp_path / "dst"
    run_cli("convert", "nnunet", str(src), "-o", str(dst))
    data = json.loads((dst / "dataset.json").read_text())
    assert data["channels"] == [{"name": "t2", "modality": "MR"}] and data["splits"]["train"] == data["splits"]["all"]
    assert "val" not in data["splits"] and "none held out" in data["split_rule"]

    plan = json.loads(run_cli("plan", str(dst)).stdout)
    # 32x48x48 voxels at 1 mm: isotropic -> stem 4, the median image rounded up to multiples of 32
    assert plan["recipe"]["stem_kernel"] == [4, 4, 4] and plan["recipe"]["patch_size"] == [32, 64, 64]
    assert plan["inputs"][0]["normalization"]["scheme"] == "zscore"
    recipe = json.loads(run_cli("recipe", "nnunet", "--data", str(dst), "--json").stdout)
    assert recipe["variant"] == "synapse" and recipe["patch_size"] == [32, 64, 64] and recipe["stem_kernel"] == [4, 4, 4]
    assert recipe["optimizer"]["name"] == "sgd" and recipe["planning_rules"]
    assert run_cli("recipe", "nnunet", check=False).returncode == 2  # needs --data

    # a smaller patch for a test-sized run (still a multiple of 8 x the chosen stem), a tiny network
    run_cli("plan", str(dst), "--patch", "32", "32", "32")
    run = tmp_path / "run"
    net = {k: v for k, v in TINY_NETWORK.items() if k not in ("patch_size", "stem_kernel")}
    run_cli("train", "nnunet", "--data", str(dst), "-o", str(run), "--device", "cpu", "--epochs", "2",
            "--iterations", "6", "--workers", "0", "--no-augment", "--lr", "0.01",
            *[x for k, v in net.items() for x in ("--set", f"network.{k}={json.dumps(v)}")])
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["variant"] == "synapse" and info["network"]["stem_kernel"] == [4, 4, 4]
    assert info["network"]["patch_size"] == [32, 32, 32] and info["network"]["out_channels"] == 3

    pkg = tmp_path / "pkg"
    run_cli("export", str(run), "-o", str(pkg), "--name", "my-organs")
    manifest = json.loads((pkg / "model.json").read_text())
    by_name = {lab["name"]: lab for lab in manifest["labels"]}
    assert by_name["liver"]["value"] == 1 and by_name["liver"]["terminology"]["type"]["meaning"] == "Liver"
    assert by_name["kidney_left"]["value"] == 2 and by_name["kidney_left"]["terminology"]["type"]["code"]
    assert manifest["inputs"][0]["name"] == "t2" and (pkg / "MODEL_CARD.md").is_file()

    ev = run_cli("evaluate", "--data", str(dst), "--model", str(pkg), "-o", str(tmp_path / "eval"), "--device", "cpu",
                 "--fast")
    assert "evaluating on all cases" in ev.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["dice"]) >= {"liver", "kidney_left"}
