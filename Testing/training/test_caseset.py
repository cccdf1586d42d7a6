"""Case sets in the nnU-Net raw layout (`unetrpp-train add-case`, `unetrpp_train.caseset`): real processes, the
real abdominal CT (support/raw_datasets.py), label matching by name, geometry checks, provenance; no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from support import raw_datasets as rd

ENV = dict(os.environ, PYTHONUNBUFFERED="1")
CLI = [sys.executable, "-m", "unetrpp_train.cli"]


def add_case(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "add-case", *args], env=ENV, capture_output=True, text=True, timeout=300)


def test_caseset_module_imports_no_torch():
    code = "import sys, unetrpp_train.caseset, unetrpp_train.commands.add_case; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_add_cases_by_name_geometry_and_provenance(tmp_path, data_dir):
    ct = data_dir / "ct" / "example_ct_sm.nii.gz"
    labels = rd.btcv_labels_of_example(data_dir)
    arr = sitk.GetArrayFromImage(labels)
    # a "corrected" segmentation as Slicer exports it: liver and spleen only, numbered 1 and 2
    corrected = np.zeros_like(arr)
    corrected[arr == 6] = 1
    corrected[arr == 1] = 2
    seg = sitk.GetImageFromArray(corrected)
    seg.CopyInformation(labels)
    seg_path = rd.write(seg, tmp_path / "seg.nrrd")
    case_set = tmp_path / "models" / "cases" / "abdomen"

    first = add_case("--set", str(case_set), "--case", "scan-1", "--image", f"ct={ct}", "--label", str(seg_path),
                     "--labels", json.dumps({"liver": 6, "spleen": 1, "background": 0}))
    assert first.returncode != 0 and "values [2]" in first.stderr  # 2 is not what --labels names
    first = add_case("--set", str(case_set), "--case", "scan-1", "--image", f"ct={ct}", "--label", str(seg_path),
                     "--labels", json.dumps({"liver": 1, "spleen": 2}), "--source", json.dumps({"model": "demo-abdomen-ct"}))
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["labels_present"] == ["liver", "spleen"] and record["source"] == {"model": "demo-abdomen-ct"}
    data = json.loads((case_set / "dataset.json").read_text())
    assert data["channel_names"] == {"0": "ct"} and data["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert data["numTraining"] == 1 and data["file_ending"] == ".nii.gz"
    image = sitk.ReadImage(str(case_set / "imagesTr" / "scan-1_0000.nii.gz"))
    original = sitk.ReadImage(str(ct))
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(original))
    assert image.GetDirection() == original.GetDirection() and image.GetSpacing() == original.GetSpacing()
    prov = json.loads((case_set / "provenance" / "scan-1.json").read_text())
    assert prov["label_mapping"] == {"1": 1, "2": 2} and len(prov["label"]["sha256"]) == 64

    # the second case names its labels differently and adds a new one: matched by name, stored in the set's numbers
    arr2 = np.zeros_like(arr)
    arr2[arr == 1] = 1   # spleen as 1 (the set has spleen = 2)
    arr2[arr == 6] = 6   # liver as 6 (the set has liver = 1)
    arr2[arr == 7] = 2   # a new name whose value (2) is taken: it gets the next free value, 3
    seg2 = sitk.GetImageFromArray(arr2)
    seg2.CopyInformation(labels)
    seg2_path = rd.write(seg2, tmp_path / "seg2.nii.gz")
    second = add_case("--set", str(case_set), "--case", "scan-2", "--image", f"CT={ct}", "--label", str(seg2_path),
                      "--labels", json.dumps({"Spleen": 1, "liver": 6, "stomach": 2}))
    assert second.returncode == 0, second.stderr
    data = json.loads((case_set / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, "liver": 1, "spleen": 2, "stomach": 3} and data["numTraining"] == 2
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(case_set / "labelsTr" / "scan-2.nii.gz")))
    assert np.array_equal(stored == 1, arr == 6) and np.array_equal(stored == 2, arr == 1)
    assert np.array_equal(stored == 3, arr == 7)

    # refused: the same case again without --overwrite (exit 2, output category), a label on another grid, bad names
    again = add_case("--set", str(case_set), "--case", "scan-1", "--image", f"ct={ct}", "--label", str(seg_path),
                     "--labels", '{"liver": 1, "spleen": 2}')
    assert again.returncode == 2 and "already in" in again.stderr and "Traceback" not in again.stderr
    shifted = sitk.GetImageFromArray(corrected)
    shifted.CopyInformation(labels)
    shifted.SetOrigin(tuple(v + 5 for v in labels.GetOrigin()))
    bad = add_case("--set", str(case_set), "--case", "scan-3", "--image", f"ct={ct}",
                   "--label", str(rd.write(shifted, tmp_path / "shifted.nii.gz")), "--labels", '{"liver": 1, "spleen": 2}')
    assert bad.returncode == 2 and "not on the grid" in bad.stderr and "origin" in bad.stderr
    for args in (["--case", "../x"], ["--case", "ok", "--image", f"mr={ct}"]):
        base = {"--case": "scan-4", "--image": f"ct={ct}"}
        base.update(dict(zip(args[::2], args[1::2])))
        out = add_case("--set", str(case_set), *[x for kv in base.items() for x in kv], "--label", str(seg_path),
                       "--labels", '{"liver": 1, "spleen": 2}')
        assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr
    assert sorted(p.name for p in (case_set / "labelsTr").iterdir()) == ["scan-1.nii.gz", "scan-2.nii.gz"]
    assert not [p for p in case_set.rglob(".*")]  # no temporary files left behind


def test_second_scan_case_set_for_docs_adapt(tmp_path):
    """`python -m unetrpp_train.demo second-scan SET` (docs/adapt.md): the shared DICOM series with its labels."""
    out = subprocess.run([sys.executable, "-m", "unetrpp_train.demo", "second-scan", str(tmp_path / "set")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["aorta", "inferior vena cava", "liver", "pancreas",
                                                             "portal and splenic vein", "right adrenal gland", "spleen",
                                                             "stomach"]
    data = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert data["labels"]["liver"] == 6 and len(data["labels"]) == 14
    label = sitk.ReadImage(str(tmp_path / "set" / "labelsTr" / "siemens-20.nii.gz"))
    assert label.GetSize() == (512, 512, 20) and int((sitk.GetArrayFromImage(label) == 6).sum()) == 366708
