"""Tiny copies of the published dataset folder layouts, for the converter, planning and evaluation tests.

Real volumes from ../shared/data where one fits (the abdominal CT with its TotalSegmentator labels
remapped to BTCV ids, the BraTS 2023-style case, the ACDC frames stored as .h5), small generated
volumes elsewhere. Every writer returns the source folder it built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

# TotalSegmentator "total" id -> BTCV/Synapse id (shared/data/SOURCES.md)
TOTALSEG_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
ACDC_SPACING = (1.5625, 1.5625, 10.0)


def image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(v) for v in spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    if direction is not None:
        img.SetDirection(tuple(float(v) for v in direction))
    return img


def write(img: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def btcv_labels_of_example(data: Path) -> sitk.Image:
    seg = sitk.ReadImage(str(data / "ct" / "example_seg.nii.gz"))
    arr = sitk.GetArrayFromImage(seg)
    lut = np.zeros(max(int(arr.max()) + 1, 256), dtype=np.uint8)
    for ts, btcv in TOTALSEG_TO_BTCV.items():
        lut[ts] = btcv
    out = sitk.GetImageFromArray(lut[arr])
    out.CopyInformation(seg)
    return out


def synapse_source(root: Path, data: Path, numbers: Sequence[str] = ("0001", "0005", "0006")) -> Path:
    """RawData/Training/img/img00XX.nii.gz + label/label00XX.nii.gz from the real abdominal CT."""
    ct = sitk.ReadImage(str(data / "ct" / "example_ct_sm.nii.gz"))
    labels = btcv_labels_of_example(data)
    base = root / "RawData" / "Training"
    for n in numbers:
        write(ct, base / "img" / f"img{n}.nii.gz")
        write(labels, base / "label" / f"label{n}.nii.gz")
    return root


def small_ct_case(seed: int, shape=(6, 20, 24), spacing=(0.7578, 0.7578, 3.0)) -> tuple[sitk.Image, sitk.Image]:
    """A generated CT-like volume (z, y, x) with two 'organs' (BTCV labels 1 and 6)."""
    rng = np.random.default_rng(seed)
    img = (-1000 + 20 * rng.standard_normal(shape)).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[1:5, 3:10, 3:11] = 6
    lab[2:4, 12:17, 14:21] = 1
    img[lab == 6] = 60 + (10 * rng.standard_normal(int((lab == 6).sum()))).astype(np.int16)
    img[lab == 1] = 45 + (10 * rng.standard_normal(int((lab == 1).sum()))).astype(np.int16)
    origin = (-10.0, 20.0, 5.0 * seed)
    return image(img, spacing, origin), image(lab, spacing, origin)


def small_synapse_source(root: Path, numbers: Sequence[str] = ("0001", "0002", "0005")) -> Path:
    base = root / "RawData" / "Training"
    for i, n in enumerate(numbers):
        img, lab = small_ct_case(i)
        write(img, base / "img" / f"img{n}.nii.gz")
        write(lab, base / "label" / f"label{n}.nii.gz")
    return root


def acdc_source(root: Path, data: Path) -> Path:
    """training/patientNNN/{Info.cfg, patientNNN_frameXX.nii.gz, _gt} from the real ACDC .h5 frames.
    patient001 (official train), patient002 (official test), patient090 (official val: frames 04/11)."""
    import h5py

    def h5(name: str) -> tuple[np.ndarray, np.ndarray]:
        with h5py.File(data / "mr_cardiac" / name, "r") as f:
            return np.asarray(f["image"], np.float32), np.asarray(f["label"], np.uint8)

    plan = {"patient001": ("patient001", 1, 12), "patient002": ("patient002", 1, 12), "patient090": ("patient001", 4, 11)}
    for patient, (src, ed, es) in plan.items():
        folder = root / "training" / patient
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        for frame, h5name in ((ed, f"{src}_frame01.h5"), (es, f"{src}_frame02.h5")):
            arr, lab = h5(h5name)
            write(image(arr, ACDC_SPACING), folder / f"{patient}_frame{frame:02d}.nii.gz")
            write(image(lab, ACDC_SPACING), folder / f"{patient}_frame{frame:02d}_gt.nii.gz")
    return root


def brats_crop(data: Path) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """The real BraTS 2023-style case cropped around its tumour (keeps geometry: ITK slicing)."""
    folder = data / "mr_brain" / "brats_case"
    seg = sitk.ReadImage(str(folder / "segmentation.nii.gz"))
    arr = sitk.GetArrayViewFromImage(seg)
    idx = np.argwhere(arr > 0)
    centre = ((idx.min(0) + idx.max(0)) // 2)[::-1]  # x, y, z
    lo = [int(max(c - 20, 0)) for c in centre]
    box = tuple(slice(a, a + 40) for a in lo)
    images = {s: sitk.ReadImage(str(folder / f"{s}.nii.gz"))[box] for s in ("t1n", "t1c", "t2w", "t2f")}
    return images, seg[box]


def brats2023_source(root: Path, data: Path, case: str = "BraTS-GLI-00000-000") -> Path:
    images, seg = brats_crop(data)
    folder = root / case
    for s, img in images.items():
        write(img, folder / f"{case}-{s}.nii.gz")
    write(seg, folder / f"{case}-seg.nii.gz")
    return root


def brats_like_arrays(seed: int, shape=(8, 12, 12)) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    chans = [(100 + 10 * rng.standard_normal(shape)).astype(np.float32) for _ in range(4)]
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 3:9, 3:9] = 1
    lab[3:5, 4:8, 4:8] = 2
    lab[3:5, 5:7, 5:7] = 3
    return chans, lab


def brats2021_source(root: Path, cases: Sequence[str] = ("BraTS2021_00000", "BraTS2021_00002")) -> Path:
    for i, case in enumerate(cases):
        chans, lab = brats_like_arrays(i)
        lab2021 = np.select([lab == 1, lab == 2, lab == 3], [2, 1, 4], 0).astype(np.uint8)  # ED 2, NCR 1, ET 4
        for suffix, arr in zip(("flair", "t1", "t1ce", "t2"), chans):
            write(image(arr), root / case / f"{case}_{suffix}.nii.gz")
        write(image(lab2021), root / case / f"{case}_seg.nii.gz")
    return root


def brats_decathlon_source(root: Path, cases: Sequence[str] = ("BRATS_001", "BRATS_011")) -> Path:
    training = []
    for i, case in enumerate(cases):
        chans, lab = brats_like_arrays(i)
        four = sitk.JoinSeries([image(a, (1.0, 1.0, 1.0)) for a in chans])  # FLAIR, T1w, T1gd, T2w
        write(four, root / "imagesTr" / f"{case}.nii.gz")
        write(image(lab), root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(cases), "training": training}))
    return root


def lung_source(root: Path, n: int = 5, spacings: Sequence[Sequence[float]] | None = None,
                shape=(6, 16, 16), values: Sequence[np.ndarray] | None = None) -> Path:
    """Task06_Lung-like: dataset.json, imagesTr/lung_XXX.nii.gz, labelsTr/lung_XXX.nii.gz."""
    training = []
    for i in range(n):
        cid = f"lung_{i + 1:03d}"
        sp = spacings[i] if spacings is not None else (0.8, 0.8, 2.5)
        rng = np.random.default_rng(i)
        arr = (-800 + 50 * rng.standard_normal(shape)).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[2:4, 5:10, 5:10] = 1
        if values is not None:
            arr[lab == 1] = values[i]
        write(image(arr, sp), root / "imagesTr" / f"{cid}.nii.gz")
        write(image(lab, sp), root / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "numTraining": n, "training": training}))
    return root


def nnunet_source(root: Path, n: int = 4, form: str = "v2", channels: Sequence[str] = ("T2",),
                  labels: Sequence[str] = ("liver", "spleen")) -> Path:
    """Own data in the nnU-Net raw layout, from the training phantoms (support/phantom.py: an ellipsoid and a
    box, 32x48x48 at 1 mm), named as `labels`. form "v2": dataset.json with channel_names, labels name -> value,
    file_ending, imagesTr/<case>_0000.nii.gz per channel; "decathlon": modality, labels value -> name, a
    "training" list, imagesTr/<case>.nii.gz (4-D with several channels)."""
    from .phantom import phantom

    for i in range(n):
        case = f"case_{i:03d}"
        img, lab = phantom(i)
        arrays = [img * (1.0 + 0.5 * c) for c in range(len(channels))]
        if form == "v2":
            for c, arr in enumerate(arrays):
                write(image(arr), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        else:
            img4 = image(arrays[0]) if len(arrays) == 1 else sitk.JoinSeries([image(a) for a in arrays])
            write(img4, root / "imagesTr" / f"{case}.nii.gz")
        write(image(lab), root / "labelsTr" / f"{case}.nii.gz")
    if form == "v2":
        meta = {"name": "MyOrgans", "channel_names": {str(i): c for i, c in enumerate(channels)},
                "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(labels)}},
                "numTraining": n, "file_ending": ".nii.gz"}
    else:
        meta = {"name": "MyOrgans", "modality": {str(i): c for i, c in enumerate(channels)},
                "labels": {"0": "background", **{str(i + 1): name for i, name in enumerate(labels)}}, "numTraining": n,
                "training": [{"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
                             for i in range(n)]}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
