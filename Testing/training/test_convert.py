"""Converters: each published layout -> the converted layout, geometry kept, labels mapped, splits as
documented, a clear error for every bad input, interrupted conversions resumed or refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from support import raw_datasets as rd
from unetrpp_train.cli import main
from unetrpp_train.convert import ACDC_TEST, ACDC_TRAIN, BRATS_VAL, SYNAPSE_ALL, SYNAPSE_TEST, convert
from unetrpp_train.layout import MARKER_FILE, ConversionError, DatasetLayoutError, load_dataset


def same_geometry_and_voxels(a: Path | sitk.Image, b: Path | sitk.Image) -> None:
    a = sitk.ReadImage(str(a)) if isinstance(a, Path) else a
    b = sitk.ReadImage(str(b)) if isinstance(b, Path) else b
    assert a.GetSize() == b.GetSize()
    assert a.GetSpacing() == b.GetSpacing()
    assert a.GetOrigin() == b.GetOrigin()
    assert a.GetDirection() == b.GetDirection()
    assert a.GetPixelID() == b.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_official_split_lists_are_complete():
    from unetrpp_train.official import official_split

    assert len(ACDC_TRAIN) == 80 and len(ACDC_TEST) == 20  # patients (unetr_pp_trainer_acdc.py:346-401)
    assert sorted(ACDC_TRAIN + ACDC_TEST) == list(range(1, 101))
    acdc = official_split("acdc")
    assert len(acdc["train"]) == 160 and len(acdc["test"]) == 40  # both frames of every patient, on one side
    assert {c[:10] for c in acdc["train"]}.isdisjoint({c[:10] for c in acdc["test"]})
    assert len(BRATS_VAL) == 73 and len(set(BRATS_VAL)) == 73
    brats = official_split("brats")
    assert (len(brats["train"]), len(brats["test"]), len(brats["excluded"])) == (387, 73, 24)
    assert sorted(brats["train"] + brats["test"] + brats["excluded"]) == [f"BRATS_{i:03d}" for i in range(1, 485)]
    lung = official_split("lung")
    assert (len(lung["train"]), len(lung["test"])) == (50, 13) and not set(lung["train"]) & set(lung["test"])
    assert len(SYNAPSE_TEST) == 12 and len(SYNAPSE_ALL) == 30 and len(official_split("synapse")["train"]) == 18


def test_complete_synapse_gets_the_official_18_12_split_and_a_partial_one_is_refused_for_the_paper_recipe(tmp_path):
    from unetrpp_train.official import SplitMismatchError, check_official_split
    from unetrpp_train.trainer import train
    from unetrpp_train.config import load_config

    full = json.loads(convert("synapse", rd.small_synapse_source(tmp_path / "all", SYNAPSE_ALL), tmp_path / "d1").read_text())
    assert len(full["splits"]["train"]) == 18 and full["splits"]["test"] == [f"img{n}" for n in SYNAPSE_TEST]
    assert full["splits"]["val"] == full["splits"]["test"]
    assert full["official_split"]["missing"] == [] and full["official_split"]["extra"] == []
    check_official_split("synapse", full["splits"], "d1", all_cases=list(full["cases"]))  # accepted

    part = tmp_path / "d2"
    convert("synapse", rd.small_synapse_source(tmp_path / "some", ("0001", "0005", "0099")), part)
    data = json.loads((part / "dataset.json").read_text())
    assert data["official_split"]["extra"] == ["img0099"] and "img0002" in data["official_split"]["missing"]
    with pytest.raises(SplitMismatchError) as err:  # the paper recipe refuses it before any work
        train(load_config("synapse"), part, tmp_path / "run")
    msg = str(err.value)
    assert "img0099" in msg and "img0002" in msg and "--custom-split" in msg and "unetr_pp_trainer_synapse.py" in msg
    assert not (tmp_path / "run").exists()
    # an explicit custom split converts everything 80/20 instead
    custom = json.loads(convert("synapse", tmp_path / "some", tmp_path / "d3", custom_split=True).read_text())
    assert custom["official_split"] == {"kind": "custom"} and custom["splits"]["train"] == ["img0001", "img0005", "img0099"]


def test_synapse_real_ct_geometry_labels_split(tmp_path, data_dir):
    src = rd.synapse_source(tmp_path / "src", data_dir)
    out = convert("synapse", src, tmp_path / "dst")
    data = json.loads(out.read_text())
    assert data["splits"]["train"] == ["img0005", "img0006"]
    assert data["splits"]["test"] == ["img0001"] and data["splits"]["val"] == ["img0001"]
    assert [c["labels"] for c in data["evaluation"]["classes"]] == [[1], [2], [3], [4], [6], [7], [8], [11]]
    assert len(data["labels"]) == 14  # background + the official 13-label numbering is kept
    case = tmp_path / "dst" / "cases" / "img0001"
    same_geometry_and_voxels(case / "image_ct.nii.gz", src / "RawData/Training/img/img0001.nii.gz")
    same_geometry_and_voxels(case / "label.nii.gz", src / "RawData/Training/label/label0001.nii.gz")
    assert data["cases"]["img0001"]["spacing"] == [3.0, 3.0, 3.0]
    assert set(data["cases"]["img0001"]["labels_present"]) >= {1, 2, 3, 6, 8, 11}
    assert not (tmp_path / "dst" / MARKER_FILE).exists()
    # the training data reader of the trainer accepts the layout
    from unetrpp_train.data import read_dataset

    info = read_dataset(tmp_path / "dst")
    assert info.channel_names == ["ct"] and info.split("train") == ["img0005", "img0006"]
    assert info.cases["img0001"].label == case / "label.nii.gz"


def test_btcv_evaluates_all_13_organs(tmp_path):
    src = rd.small_synapse_source(tmp_path / "src")
    data = json.loads(convert("btcv", src, tmp_path / "dst").read_text())
    assert [c["labels"][0] for c in data["evaluation"]["classes"]] == list(range(1, 14))
    assert data["variant"] == "synapse" and data["splits"]["train"] == ["img0005"]


def test_acdc_frames_from_info_cfg_and_official_split(tmp_path, data_dir):
    src = rd.acdc_source(tmp_path / "src", data_dir)
    data = json.loads(convert("acdc", src, tmp_path / "dst").read_text())
    # the official lists: patients 001 and 090 train, 002 test (= val, as the official trainer validates on it)
    assert data["splits"] == {"train": ["patient001_frame01", "patient001_frame12", "patient090_frame04", "patient090_frame11"],
                              "test": ["patient002_frame01", "patient002_frame12"],
                              "val": ["patient002_frame01", "patient002_frame12"]}
    assert data["cases"]["patient090_frame11"]["phase"] == "ES"
    assert data["cases"]["patient001_frame12"]["spacing"] == list(rd.ACDC_SPACING)
    case = tmp_path / "dst" / "cases" / "patient002_frame12"
    same_geometry_and_voxels(case / "image_mri.nii.gz", src / "training/patient002/patient002_frame12.nii.gz")
    np.testing.assert_array_equal(arr(case / "label.nii.gz"), arr(src / "training/patient002/patient002_frame12_gt.nii.gz"))
    assert [c["name"] for c in data["evaluation"]["classes"]] == ["RV", "MYO", "LV"]


def test_brats2023_real_case_mapped_to_decathlon_convention(tmp_path, data_dir):
    src = rd.brats2023_source(tmp_path / "src", data_dir)
    data = json.loads(convert("brats", src, tmp_path / "dst").read_text())
    case = tmp_path / "dst" / "cases" / "BraTS-GLI-00000-000"
    s = src / "BraTS-GLI-00000-000"
    for ours, theirs in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w")):
        same_geometry_and_voxels(case / f"image_{ours}.nii.gz", s / f"BraTS-GLI-00000-000-{theirs}.nii.gz")
    seg, lab = arr(s / "BraTS-GLI-00000-000-seg.nii.gz"), arr(case / "label.nii.gz")
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(lab == 1, seg == 2)  # SNFH / oedema
    np.testing.assert_array_equal(lab == 2, seg == 1)  # NETC
    np.testing.assert_array_equal(lab == 3, seg == 3)  # ET
    assert [c["name"] for c in data["channels"]] == ["flair", "t1", "t1gd", "t2"]
    assert {r["name"]: r["labels"] for r in data["regions"]} == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    assert data["label_mapping"]["map"] == {"0": 0, "1": 2, "2": 1, "3": 3}


def test_brats2021_labels_and_decathlon_4d(tmp_path):
    d21 = json.loads(convert("brats", rd.brats2021_source(tmp_path / "s21"), tmp_path / "d21").read_text())
    chans, lab = rd.brats_like_arrays(0)
    np.testing.assert_array_equal(arr(tmp_path / "d21/cases/BraTS2021_00000/label.nii.gz"), lab)
    np.testing.assert_array_equal(arr(tmp_path / "d21/cases/BraTS2021_00000/image_t1gd.nii.gz"), chans[2])
    assert d21["splits"] == {"train": ["BraTS2021_00000", "BraTS2021_00002"]}  # 2 cases: position 4 not reached

    dec = json.loads(convert("brats", rd.brats_decathlon_source(tmp_path / "sdec"), tmp_path / "ddec").read_text())
    assert dec["splits"] == {"train": ["BRATS_001"], "test": ["BRATS_011"], "val": ["BRATS_011"]}
    chans, lab = rd.brats_like_arrays(1)
    for i, name in enumerate(["flair", "t1", "t1gd", "t2"]):
        np.testing.assert_array_equal(arr(tmp_path / f"ddec/cases/BRATS_011/image_{name}.nii.gz"), chans[i])
    np.testing.assert_array_equal(arr(tmp_path / "ddec/cases/BRATS_011/label.nii.gz"), lab)
    assert sitk.ReadImage(str(tmp_path / "ddec/cases/BRATS_011/image_t2.nii.gz")).GetDimension() == 3


def test_lung_decathlon_official_lists_or_custom_split(tmp_path):
    data = json.loads(convert("lung", rd.lung_source(tmp_path / "src", n=6), tmp_path / "dst").read_text())
    # unetr_pp_trainer_lung.py:348-362: 004 005 006 train, 001 003 test; 002 is in neither list (not in Task06)
    assert data["splits"] == {"train": ["lung_004", "lung_005", "lung_006"], "test": ["lung_001", "lung_003"],
                              "val": ["lung_001", "lung_003"]}
    assert data["official_split"]["extra"] == ["lung_002"]
    custom = json.loads(convert("lung", tmp_path / "src", tmp_path / "dst2", custom_split=True).read_text())
    assert custom["splits"]["val"] == ["lung_005"]
    assert custom["splits"]["train"] == ["lung_001", "lung_002", "lung_003", "lung_004", "lung_006"]
    assert data["labels"] == {"0": "background", "1": "lung tumour"} and data["channels"][0]["modality"] == "CT"


# Bad input ----------------------------------------------------------------------------------
def _expect(tmp_path, dataset, src, *fragments):
    with pytest.raises(ConversionError) as err:
        convert(dataset, src, tmp_path / "dst")
    for f in fragments:
        assert f in str(err.value), str(err.value)
    assert not (tmp_path / "dst" / "dataset.json").exists()
    return str(err.value)


def test_undeclared_label_value(tmp_path):
    src = rd.small_synapse_source(tmp_path / "src")
    label = src / "RawData/Training/label/label0002.nii.gz"
    img = sitk.ReadImage(str(label))
    a = sitk.GetArrayFromImage(img)
    a[0, 0, 0] = 14
    bad = sitk.GetImageFromArray(a)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(label))
    _expect(tmp_path, "synapse", src, "case img0002", str(label), "[14]")


def test_geometry_mismatch(tmp_path):
    src = rd.small_synapse_source(tmp_path / "src")
    label = src / "RawData/Training/label/label0005.nii.gz"
    img = sitk.ReadImage(str(label))
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, str(label))
    _expect(tmp_path, "synapse", src, "case img0005", str(label), "spacing")


def test_channel_grids_must_agree(tmp_path):
    src = rd.brats2021_source(tmp_path / "src", cases=("BraTS2021_00000",))
    t2 = src / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    img = sitk.ReadImage(str(t2))
    img.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(img, str(t2))
    _expect(tmp_path, "brats", src, "case BraTS2021_00000", "channel t2", "origin")


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_empty_or_all_nan_image(tmp_path, fill):
    src = rd.lung_source(tmp_path / "src", n=2)
    path = src / "imagesTr" / "lung_002.nii.gz"
    img = sitk.ReadImage(str(path))
    blank = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(img).shape, fill, np.float32))
    blank.CopyInformation(img)
    sitk.WriteImage(blank, str(path))
    # ITK's NIfTI reader turns an all-NaN volume into zeros: both read as an empty image
    _expect(tmp_path, "lung", src, "case lung_002", str(path), "empty")


def test_all_nan_volume_in_a_format_that_keeps_nan(tmp_path):
    from unetrpp_train.layout import ImageRef, _check_intensities

    img = sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32))
    with pytest.raises(ConversionError, match="case c1: .*x.nrrd holds only NaN"):
        _check_intensities(img, "c1", ImageRef(tmp_path / "x.nrrd"))


def test_missing_files(tmp_path, data_dir):
    src = rd.small_synapse_source(tmp_path / "s1")
    (src / "RawData/Training/label/label0005.nii.gz").unlink()
    _expect(tmp_path, "synapse", src, "case img0005", "label0005.nii.gz", "missing")

    acdc = rd.acdc_source(tmp_path / "s2", data_dir)
    (acdc / "training/patient002/Info.cfg").unlink()
    _expect(tmp_path, "acdc", acdc, "patient002", "Info.cfg")

    lung = rd.lung_source(tmp_path / "s3", n=2)
    (lung / "dataset.json").unlink()
    _expect(tmp_path, "lung", lung, "dataset.json")

    brats = rd.brats2021_source(tmp_path / "s4", cases=("BraTS2021_00000",))
    (brats / "BraTS2021_00000" / "BraTS2021_00000_t1ce.nii.gz").unlink()
    _expect(tmp_path, "brats", brats, "case BraTS2021_00000", "BraTS2021_00000_t1ce.nii.gz")

    _expect(tmp_path, "synapse", tmp_path / "s3", "no Synapse/BTCV layout", "img00XX")


# Interrupted conversions ------------------------------------------------------------------------
def test_interrupted_conversion_is_never_complete_and_resumes(tmp_path):
    src = rd.small_synapse_source(tmp_path / "src")
    label = src / "RawData/Training/label/label0005.nii.gz"
    good = label.read_bytes()
    label.write_bytes(b"broken")  # the third case fails: the conversion stops after two complete cases
    dst = tmp_path / "dst"
    with pytest.raises(ConversionError):
        convert("synapse", src, dst)
    assert (dst / MARKER_FILE).is_file() and not (dst / "dataset.json").exists()
    with pytest.raises(DatasetLayoutError, match="interrupted conversion"):
        load_dataset(dst)
    from unetrpp_train.data import DataError, read_dataset

    with pytest.raises(DataError):
        read_dataset(dst)
    done = dst / "cases" / "img0001" / "image_ct.nii.gz"
    stamp = done.stat().st_mtime_ns
    (dst / "cases" / ".img0005.partial").mkdir()  # what a kill during a case leaves behind
    # another conversion into the same folder is refused
    lung = rd.lung_source(tmp_path / "lung", n=2)
    with pytest.raises(ConversionError, match="interrupted conversion of synapse"):
        convert("lung", lung, dst)
    label.write_bytes(good)
    data = json.loads(convert("synapse", src, dst).read_text())  # resumes
    assert sorted(data["cases"]) == ["img0001", "img0002", "img0005"]
    assert done.stat().st_mtime_ns == stamp  # the complete case was kept, not rewritten
    assert not (dst / "cases" / ".img0005.partial").exists() and not (dst / MARKER_FILE).exists()
    assert load_dataset(dst)["splits"]["train"] == ["img0005"]


def test_existing_dataset_kept_or_replaced(tmp_path):
    src = rd.small_synapse_source(tmp_path / "src")
    dst = tmp_path / "dst"
    convert("synapse", src, dst)
    stamp = (dst / "dataset.json").stat().st_mtime_ns
    convert("synapse", src, dst)  # same conversion, complete: nothing to do
    assert (dst / "dataset.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConversionError, match="already holds a converted dataset"):
        convert("btcv", src, dst)
    data = json.loads(convert("btcv", src, dst, overwrite=True).read_text())
    assert data["dataset"] == "btcv"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        convert("synapse", src, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    src = rd.small_synapse_source(tmp_path / "src")
    (src / "RawData/Training/img/img0002.nii.gz").write_bytes(b"not a nifti")
    assert main(["convert", "synapse", str(src), "-o", str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: case img0002") and "img0002.nii.gz" in err and "cannot be read" in err
    shutil.rmtree(tmp_path / "dst")
    (src / "RawData/Training/img/img0002.nii.gz").unlink()
    (src / "RawData/Training/label/label0002.nii.gz").unlink()
    assert main(["convert", "synapse", str(src), "-o", str(tmp_path / "dst")]) == 0
    assert capsys.readouterr().out.strip().endswith("dataset.json")
