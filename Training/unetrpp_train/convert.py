"""Converters from the public benchmark datasets to the one converted layout (see `unetrpp_train.layout`).

``unetrpp-train convert DATASET SRC -o DST`` with DATASET one of:

synapse
    Synapse multi-organ CT (MICCAI 2015 "Beyond the Cranial Vault", the RawData.zip of the challenge):
    ``SRC/RawData/Training/img/img00XX.nii.gz`` and ``.../label/label00XX.nii.gz`` (SRC may also be
    ``RawData`` or ``RawData/Training``). Case ids ``img00XX``. The label files keep the official 13-label
    BTCV numbering; evaluation scores the 8 organs of the TransUNet/nnFormer/UNETR++ table
    (spleen 1, right kidney 2, left kidney 3, gallbladder 4, liver 6, stomach 7, aorta 8, pancreas 11).
    Split: the standard 12 test cases 0001 0002 0003 0004 0008 0022 0025 0029 0032 0035 0036 0038 form
    ``test`` (and ``val``: the official trainer validates on them), the other 18 ``train``.
btcv
    The same images and split, evaluated on all 13 organs.
acdc
    ACDC (MICCAI 2017): ``SRC/[database/]training/patientNNN/patientNNN_frameXX.nii.gz`` + ``_gt``, the ED and
    ES frame numbers read from ``Info.cfg``. Case ids ``patientNNN_frameXX``. Labels 1 RV cavity,
    2 myocardium, 3 LV cavity (kept). Split: the official UNETR++ ACDC trainer's fixed lists of the 100
    training patients: 70 ``train``, 10 ``val`` (patients 089-100 listed in ACDC_VAL) and the remaining 20
    ``test`` (80 train+val / 20 test, by patient, both frames of a patient in the same split).
brats
    Brain tumour MRI, three layouts, detected automatically, all stored in ONE convention, the Medical
    Segmentation Decathlon Task01_BrainTumour numbering the official network uses:
    channels ``flair``, ``t1``, ``t1gd``, ``t2`` (in that order); labels 1 oedema, 2 non-enhancing tumour /
    necrotic core, 3 enhancing tumour; regions WT = {1, 2, 3}, TC = {2, 3}, ET = {3}.

    ======================  ==========================================  ==========================
    layout                  files                                       label mapping (source -> stored)
    ======================  ==========================================  ==========================
    Decathlon Task01        imagesTr/BRATS_XXX.nii.gz (4-D: FLAIR, T1w,  1->1, 2->2, 3->3 (kept)
                            T1gd, T2w), labelsTr/BRATS_XXX.nii.gz
    BraTS 2021 challenge    <case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz  1 NCR/NET->2, 2 ED->1, 4 ET->3
    BraTS 2023 challenge    <case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz   1 NETC->2, 2 SNFH->1, 3 ET->3
    ======================  ==========================================  ==========================

    Split: Decathlon: the official UNETR++ tumour trainer's 73 validation cases (BRATS_VAL) are ``val``,
    all others ``train``. Challenge layouts (no official UNETR++ split): cases sorted by id, every fifth
    (positions 4, 9, 14, ...) ``val``, the rest ``train`` (80/20, deterministic).
lung
    Medical Segmentation Decathlon Task06_Lung: ``SRC/dataset.json``, ``imagesTr/lung_XXX.nii.gz``,
    ``labelsTr/lung_XXX.nii.gz``; label 1 lung tumour. Split: sorted ids, every fifth ``val`` (80/20).

Every converter checks every case: missing files, unreadable files, images that are empty or all-NaN,
label values that are not declared, image/label (and channel/channel) grids that differ; the error
names the case and the file.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from unetrpp.official_models import (ACDC_LABELS, BRATS_LABELS, BRATS_REGIONS, BTCV_LABELS, LUNG_LABELS,
                                     SYNAPSE_EVALUATED_LABELS)

from .layout import CaseSource, ConversionError, DatasetSpec, DatasetWriter, ImageRef

log = logging.getLogger(__name__)

DATASETS = ("synapse", "btcv", "acdc", "brats", "lung")

SYNAPSE_TEST = ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038"]
SYNAPSE_ALL = [f"{i:04d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                    31, 32, 33, 34, 35, 36, 37, 38, 39, 40)]

# The official UNETR++ ACDC trainer (unetr_pp_trainer_acdc.py) fixes its split by patient number.
ACDC_TRAIN = [1, 4, 5, 6, 7, 10, 11, 13, 15, 16, 18, 19, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
              36, 37, 38, 39, 40, 41, 43, 44, 45, 46, 47, 50, 51, 52, 54, 56, 57, 58, 59, 60, 61, 62, 63, 65, 66, 68,
              69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 80, 82, 83, 84, 85, 86, 87]
ACDC_VAL = [89, 90, 91, 93, 94, 96, 97, 98, 99, 100]
ACDC_TEST = sorted(set(range(1, 101)) - set(ACDC_TRAIN) - set(ACDC_VAL))

# The official UNETR++ tumour trainer's validation cases of Decathlon Task01 (all other cases train).
BRATS_VAL = [11, 12, 18, 20, 21, 28, 29, 32, 34, 36, 41, 47, 49, 53, 56, 57, 69, 71, 89, 90, 92, 95, 103, 105, 106,
             107, 109, 118, 145, 147, 156, 161, 172, 176, 181, 194, 196, 198, 204, 205, 209, 220, 221, 227, 234, 235,
             245, 250, 256, 257, 260, 269, 270, 271, 281, 282, 287, 289, 291, 292, 310, 314, 323, 327, 330, 333, 337,
             346, 350, 352, 361, 382, 397]

BRATS_CHANNELS = ["flair", "t1", "t1gd", "t2"]
BRATS_2021_SUFFIX = {"flair": "flair", "t1": "t1", "t1gd": "t1ce", "t2": "t2"}
BRATS_2023_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1gd": "t1c", "t2": "t2w"}
BRATS_MAPS = {
    "decathlon": {0: 0, 1: 1, 2: 2, 3: 3},
    "brats2021": {0: 0, 1: 2, 2: 1, 4: 3},
    "brats2023": {0: 0, 1: 2, 2: 1, 3: 3},
}
BRATS_SOURCE_LABELS = {
    "decathlon": {1: "oedema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
    "brats2021": {1: "necrotic / non-enhancing tumour core (NCR/NET)", 2: "peritumoral oedema (ED)", 4: "enhancing tumour (ET)"},
    "brats2023": {1: "non-enhancing tumour core (NETC)", 2: "surrounding FLAIR hyperintensity / oedema (SNFH)", 3: "enhancing tumour (ET)"},
}


def _names(labels: Sequence[dict[str, Any]]) -> dict[int, str]:
    return {int(item["value"]): str(item["name"]) for item in labels}


def _classes(names: dict[int, str], values: Sequence[int]) -> list[dict[str, Any]]:
    return [{"name": names[v], "labels": [v]} for v in values]


def every_fifth_split(ids: Sequence[str]) -> dict[str, list[str]]:
    """Deterministic 80/20: sorted ids, positions 4, 9, 14, ... are validation."""
    ordered = sorted(ids)
    return {"train": [c for i, c in enumerate(ordered) if i % 5 != 4],
            "val": [c for i, c in enumerate(ordered) if i % 5 == 4]}


def _nii(folder: Path, stem: str) -> Path:
    """folder/stem.nii.gz, or folder/stem.nii when only that exists."""
    gz = folder / f"{stem}.nii.gz"
    plain = folder / f"{stem}.nii"
    return plain if not gz.is_file() and plain.is_file() else gz


def _visible(paths: Sequence[Path] | Any) -> list[Path]:
    return sorted(p for p in paths if not p.name.startswith((".", "._")))


# Synapse / BTCV -----------------------------------------------------------------------------
def _find_synapse(src: Path) -> Path:
    for cand in (src / "RawData" / "Training", src / "Training", src, src / "Abdomen" / "RawData" / "Training"):
        if (cand / "img").is_dir():
            return cand
    raise ConversionError(
        f"no Synapse/BTCV layout under {src}: expected {src / 'RawData' / 'Training' / 'img'}/img00XX.nii.gz "
        "and .../label/label00XX.nii.gz (the challenge's RawData.zip, unpacked)"
    )


def _synapse_cases(src: Path) -> tuple[list[CaseSource], Path]:
    root = _find_synapse(src)
    cases = []
    for img in _visible(root.joinpath("img").glob("img*.nii*")):
        m = re.fullmatch(r"img(\d{4})\.nii(\.gz)?", img.name)
        if not m:
            continue
        number = m.group(1)
        label = _nii(root / "label", f"label{number}")
        cases.append(CaseSource(f"img{number}", {"ct": ImageRef(img)}, label))
    if not cases:
        raise ConversionError(f"{root / 'img'} holds no img00XX.nii.gz files")
    found = {c.case_id[3:] for c in cases}
    missing = [n for n in SYNAPSE_ALL if n not in found]
    if missing:
        log.warning("%s: %d of the 30 Synapse training cases are missing (%s)", root, len(missing), ", ".join(missing))
    return cases, root


def _synapse_splits(cases: Sequence[CaseSource]) -> dict[str, list[str]]:
    ids = sorted(c.case_id for c in cases)
    test = [c for c in ids if c[3:] in SYNAPSE_TEST]
    return {"train": [c for c in ids if c not in test], "val": list(test), "test": list(test)}


def _synapse_like(dataset: str, src: Path) -> tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]:
    cases, root = _synapse_cases(src)
    names = _names(BTCV_LABELS)
    if dataset == "synapse":
        evaluation = {"classes": _classes(names, SYNAPSE_EVALUATED_LABELS),
                      "description": "the 8 organs of the Synapse table (TransUNet/nnFormer/UNETR++): labels 1, 2, 3, 4, 6, 7, 8, 11"}
        description = "Synapse multi-organ CT, 13 BTCV labels kept; evaluated on 8 organs"
    else:
        evaluation = {"classes": _classes(names, sorted(names)), "description": "all 13 BTCV organs"}
        description = "BTCV multi-organ CT, all 13 organs"
    spec = DatasetSpec(
        dataset=dataset, variant="synapse", name=dataset, description=description,
        channels=[{"name": "ct", "modality": "CT"}], labels=names, evaluation=evaluation,
        source_path=src, source_layout=f"RawData/Training img/label ({root})",
    )
    rule = ("official Synapse split (TransUNet/nnFormer/UNETR++): test = 0001 0002 0003 0004 0008 0022 0025 0029 0032 "
            "0035 0036 0038; val = test (the official trainer validates on the test cases); train = the other 18")
    return spec, cases, _synapse_splits(cases), rule


# ACDC ---------------------------------------------------------------------------------------
def _find_acdc(src: Path) -> Path:
    for cand in (src / "training", src / "database" / "training", src):
        if any(cand.glob("patient[0-9][0-9][0-9]")):
            return cand
    raise ConversionError(f"no ACDC layout under {src}: expected {src / 'training'}/patientNNN/ folders with Info.cfg")


def read_info_cfg(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConversionError(f"case {path.parent.name}: {path} is missing (it gives the ED and ES frames)")
    info = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise ConversionError(f"case {path.parent.name}: {path} has no valid '{key}: <frame number>' line")
    return info


def _acdc(dataset: str, src: Path) -> tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]:
    root = _find_acdc(src)
    cases = []
    split_of = {**{n: "train" for n in ACDC_TRAIN}, **{n: "val" for n in ACDC_VAL}, **{n: "test" for n in ACDC_TEST}}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for folder in _visible(p for p in root.glob("patient[0-9][0-9][0-9]") if p.is_dir()):
        info = read_info_cfg(folder / "Info.cfg")
        number = int(folder.name[7:])
        for phase in ("ED", "ES"):
            frame = f"{folder.name}_frame{int(info[phase]):02d}"
            cases.append(CaseSource(frame, {"mri": ImageRef(_nii(folder, frame))}, _nii(folder, f"{frame}_gt"),
                                    meta={"patient": folder.name, "phase": phase, "group": info.get("Group", "")}))
            splits[split_of.get(number, "test")].append(frame)
    if not cases:
        raise ConversionError(f"{root} holds no patientNNN folders")
    spec = DatasetSpec(
        dataset=dataset, variant="acdc", name="acdc", description="ACDC cine MRI, ED and ES frames",
        channels=[{"name": "mri", "modality": "MR"}], labels=_names(ACDC_LABELS),
        evaluation={"classes": [{"name": "RV", "labels": [1]}, {"name": "MYO", "labels": [2]}, {"name": "LV", "labels": [3]}],
                    "description": "right ventricle cavity (1), myocardium (2), left ventricle cavity (3)"},
        source_path=src, source_layout=f"ACDC training/patientNNN ({root})",
    )
    rule = ("official UNETR++ ACDC split by patient (unetr_pp_trainer_acdc.py): 70 train, 10 val (patients 089-100 "
            "minus 092, 095), the remaining 20 test; ED and ES frames of a patient stay together")
    return spec, cases, {k: sorted(v) for k, v in splits.items()}, rule


# BraTS --------------------------------------------------------------------------------------
def _brats_layout(src: Path) -> tuple[str, Path]:
    for cand in (src, src / "Task01_BrainTumour"):
        if (cand / "imagesTr").is_dir():
            return "decathlon", cand
    for pattern, layout in (("*_flair.nii*", "brats2021"), ("*-t2f.nii*", "brats2023")):
        for depth in ("*", "*/*"):
            hits = _visible(src.glob(f"{depth}/{pattern}"))
            if hits:
                return layout, hits[0].parent.parent
    raise ConversionError(
        f"no BraTS layout under {src}: expected the Decathlon Task01_BrainTumour folder (imagesTr/, labelsTr/), "
        "BraTS 2021 case folders (<case>/<case>_flair.nii.gz ...) or BraTS 2023 case folders (<case>/<case>-t2f.nii.gz ...)"
    )


def _decathlon_pairs(root: Path, task: str) -> list[tuple[str, Path, Path]]:
    """(case id, image, label) from a Decathlon task folder's dataset.json (or its imagesTr/)."""
    meta = root / "dataset.json"
    pairs = []
    if meta.is_file():
        try:
            training = json.loads(meta.read_text()).get("training", [])
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{meta} is not valid JSON: {exc}") from exc
        for item in training:
            try:
                image, label = root / item["image"], root / item["label"]
            except (KeyError, TypeError) as exc:
                raise ConversionError(f"{meta}: a 'training' entry lacks 'image' or 'label': {item!r}") from exc
            pairs.append((image.name.split(".nii")[0], image, label))
    elif task == "lung":
        raise ConversionError(f"{meta} is missing (the Decathlon Task06_Lung folder holds dataset.json, imagesTr/, labelsTr/)")
    else:
        for image in _visible((root / "imagesTr").glob("*.nii*")):
            cid = image.name.split(".nii")[0]
            pairs.append((cid, image, _nii(root / "labelsTr", cid)))
    if not pairs:
        raise ConversionError(f"{root} lists no training cases (dataset.json 'training' / imagesTr/ are empty)")
    return sorted(pairs)


def _brats(dataset: str, src: Path) -> tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]:
    layout, root = _brats_layout(src)
    label_map = BRATS_MAPS[layout]
    cases = []
    if layout == "decathlon":
        for cid, image, label in _decathlon_pairs(root, "brats"):
            cases.append(CaseSource(cid, {ch: ImageRef(image, i) for i, ch in enumerate(BRATS_CHANNELS)}, label, label_map))
        val = {f"BRATS_{n:03d}" for n in BRATS_VAL}
        ids = sorted(c.case_id for c in cases)
        splits = {"train": [c for c in ids if c not in val], "val": [c for c in ids if c in val]}
        rule = "official UNETR++ tumour split (unetr_pp_trainer_tumor.py): its 73 validation cases are val, all others train"
    else:
        sep, suffix, seg = ("_", BRATS_2021_SUFFIX, "seg") if layout == "brats2021" else ("-", BRATS_2023_SUFFIX, "seg")
        first = "flair" if layout == "brats2021" else "t2f"
        folders = sorted({p.parent for p in _visible(root.glob(f"*/*{sep}{first}.nii*"))})
        for folder in folders:
            cid = folder.name
            images = {ch: ImageRef(_nii(folder, f"{cid}{sep}{suffix[ch]}")) for ch in BRATS_CHANNELS}
            cases.append(CaseSource(cid, images, _nii(folder, f"{cid}{sep}{seg}"), label_map))
        splits = every_fifth_split([c.case_id for c in cases])
        rule = "no official split for this layout: cases sorted by id, every fifth (positions 4, 9, ...) val, the rest train"
    names = _names(BRATS_LABELS)
    regions = [{"name": "WT", "labels": [1, 2, 3], "description": "whole tumour"},
               {"name": "TC", "labels": [2, 3], "description": "tumour core"},
               {"name": "ET", "labels": [3], "description": "enhancing tumour"}]
    spec = DatasetSpec(
        dataset=dataset, variant="brats", name="brats",
        description="brain tumour MRI in the Decathlon Task01 convention (FLAIR, T1, T1gd, T2; 1 oedema, 2 non-enhancing, 3 enhancing)",
        channels=[{"name": ch, "modality": "MR"} for ch in BRATS_CHANNELS], labels=names,
        evaluation={"classes": [{"name": r["name"], "labels": r["labels"]} for r in regions],
                    "description": "BraTS regions: WT = {1,2,3}, TC = {2,3}, ET = {3} (Decathlon numbering)"},
        source_path=src, source_layout=f"{layout} ({root})", regions=regions,
        label_mapping={"source_layout": layout, "source_labels": {str(k): v for k, v in BRATS_SOURCE_LABELS[layout].items()},
                       "map": {str(k): v for k, v in label_map.items()}},
        extra={"official_regions": [{"name": r["name"], "labels": r["labels"]} for r in BRATS_REGIONS]},
    )
    return spec, cases, splits, rule


# Lung ---------------------------------------------------------------------------------------
def _lung(dataset: str, src: Path) -> tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]:
    root = src / "Task06_Lung" if (src / "Task06_Lung").is_dir() else src
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            declared = json.loads(meta.read_text()).get("labels", {})
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{meta} is not valid JSON: {exc}") from exc
        if declared and sorted(int(k) for k in declared) != [0, 1]:
            raise ConversionError(f"{meta} declares labels {declared}; Task06_Lung has 0 background and 1 cancer")
    cases = [CaseSource(cid, {"ct": ImageRef(image)}, label) for cid, image, label in _decathlon_pairs(root, "lung")]
    spec = DatasetSpec(
        dataset=dataset, variant="lung", name="lung", description="Decathlon Task06 lung tumour CT",
        channels=[{"name": "ct", "modality": "CT"}], labels=_names(LUNG_LABELS),
        evaluation={"classes": [{"name": "lung tumour", "labels": [1]}], "description": "lung tumour (1)"},
        source_path=src, source_layout=f"Decathlon Task06_Lung ({root})",
    )
    rule = "cases sorted by id, every fifth (positions 4, 9, ...) val, the rest train (80/20, deterministic)"
    return spec, cases, every_fifth_split([c.case_id for c in cases]), rule


_BUILDERS: dict[str, Callable[[str, Path], tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]]] = {
    "synapse": _synapse_like, "btcv": _synapse_like, "acdc": _acdc, "brats": _brats, "lung": _lung,
}


def convert(dataset: str, src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Convert the dataset in SRC into DST; returns DST/dataset.json. Resumes an interrupted run."""
    dataset = dataset.lower()
    if dataset not in _BUILDERS:
        raise ConversionError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    src = Path(src).resolve()
    if not src.is_dir():
        raise ConversionError(f"source folder {src} does not exist")
    dst = Path(dst).resolve()
    if dst == src:
        raise ConversionError(f"output {dst} must differ from the source folder")
    spec, cases, splits, rule = _BUILDERS[dataset](dataset, src)
    ids = [c.case_id for c in cases]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ConversionError(f"case ids occur twice in {src}: {', '.join(dupes)}")
    for case in cases:  # missing files are reported before anything is written
        for name, ref in case.images.items():
            if not ref.path.is_file():
                raise ConversionError(f"case {case.case_id}: {name} file {ref.path} is missing")
        if not case.label.is_file():
            raise ConversionError(f"case {case.case_id}: label file {case.label} is missing")
    writer = DatasetWriter(dst, spec, overwrite=overwrite)
    if not writer.begin():
        return dst / "dataset.json"
    log.info("converting %d %s case(s) from %s into %s", len(cases), dataset, src, dst)
    for n, case in enumerate(cases, 1):
        log.debug("case %d/%d: %s", n, len(cases), case.case_id)
        writer.write_case(case)
    return writer.finish({k: v for k, v in splits.items() if v or k == "train"}, rule)
