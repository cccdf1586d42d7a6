"""Converters from the public benchmark datasets to the one converted layout (see `unetrpp_train.layout`).

``unetrpp-train convert DATASET SRC -o DST`` with DATASET one of:

synapse
    Synapse multi-organ CT (MICCAI 2015 "Beyond the Cranial Vault", the RawData.zip of the challenge):
    ``SRC/RawData/Training/img/img00XX.nii.gz`` and ``.../label/label00XX.nii.gz`` (SRC may also be
    ``RawData`` or ``RawData/Training``). Case ids ``img00XX``. The label files keep the official 13-label
    BTCV numbering; evaluation scores the 8 organs of the TransUNet/nnFormer/UNETR++ table
    (spleen 1, right kidney 2, left kidney 3, gallbladder 4, liver 6, stomach 7, aorta 8, pancreas 11).
    Split: the official lists (splits/synapse.json): the 12 test cases 0001 0002 0003 0004 0008 0022 0025 0029
    0032 0035 0036 0038 form ``test`` (and ``val``: the official trainer validates on them), the other 18 ``train``.
btcv
    The same images and split, evaluated on all 13 organs.
acdc
    ACDC (MICCAI 2017): ``SRC/[database/]training/patientNNN/patientNNN_frameXX.nii.gz`` + ``_gt``, the ED and
    ES frame numbers read from ``Info.cfg``. Case ids ``patientNNN_frameXX``. Labels 1 RV cavity,
    2 myocardium, 3 LV cavity (kept). Split: the official UNETR++ ACDC trainer's fixed lists (splits/acdc.json):
    80 patients (160 frames) ``train``, 20 patients (40 frames) ``test`` (= ``val``, as the official trainer
    validates on them).
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

    Split: Decathlon: the official UNETR++ tumour trainer's lists (splits/brats.json): 387 ``train``, 73
    ``test`` (= ``val``); the 24 cases in neither list are converted but in no split. Challenge layouts (no
    official UNETR++ split): a custom split (below).
nnunet
    Any dataset in the nnU-Net raw layout: ``SRC/dataset.json`` (nnU-Net v2: ``channel_names`` {"0": "CT"},
    ``labels`` name -> value, ``file_ending``; or the Decathlon / nnU-Net v1 form: ``modality``, ``labels``
    value -> name, ``training`` [{"image", "label"}]), ``imagesTr/<case>_0000.nii.gz`` (one file per channel;
    the Decathlon's single or 4-D ``imagesTr/<case>.nii.gz`` too) and ``labelsTr/<case>.nii.gz``. Channel
    names are the channel_names values in lower case ("CT" -> ``ct``, CT normalisation; any other -> z-score);
    labels keep their values and names. Variant ``auto``: `unetrpp-train plan` chooses the configuration from
    the data. Split: from 5 cases on 80/20 (every fifth sorted case ``val``), fewer cases all ``train`` and
    none held out; ``all`` lists every case.
lung
    Medical Segmentation Decathlon Task06_Lung: ``SRC/dataset.json``, ``imagesTr/lung_XXX.nii.gz``,
    ``labelsTr/lung_XXX.nii.gz``; label 1 lung tumour. Split: the official lists (splits/lung.json): 50
    ``train``, 13 ``test`` (= ``val``).

Official and custom splits: by default every benchmark gets the official split lists of the UNETR++ trainers
(`unetrpp_train.official`); a source whose case ids differ from them (missing or unknown cases) is still
converted, the split restricted to the cases present, and dataset.json records the difference
(``official_split``: missing, extra); the paper recipes refuse such a dataset at `train` time unless
``--custom-split``. ``custom_split=True`` (``convert --custom-split``) instead splits all cases 80/20:
sorted ids, every fifth (positions 4, 9, 14, ...) ``val``, the rest ``train``.

Every converter checks every case: missing files, unreadable files, images that are empty or all-NaN,
label values that are not declared, image/label (and channel/channel) grids that differ; the error
names the case and the file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from unetrpp.jsonio import read_json_file
from unetrpp.official_models import (ACDC_LABELS, BRATS_LABELS, BRATS_REGIONS, BTCV_LABELS, LUNG_LABELS,
                                     SYNAPSE_EVALUATED_LABELS)

from .datasets import KINDS
from .layout import CaseSource, ConversionError, DatasetSpec, DatasetWriter, ImageRef
from .official import official_split, official_splits_for, source_ref

log = logging.getLogger(__name__)

DATASETS = tuple(KINDS)  # the one table: unetrpp_train.datasets

SYNAPSE_TEST = [c[3:] for c in official_split("synapse")["test"]]
SYNAPSE_ALL = sorted(c[3:] for c in official_split("synapse")["train"] + official_split("synapse")["test"])

# The official UNETR++ ACDC trainer (unetr_pp_trainer_acdc.py:346-401) fixes its split by frame; patients:
ACDC_TRAIN = sorted({int(c[7:10]) for c in official_split("acdc")["train"]})
ACDC_TEST = sorted({int(c[7:10]) for c in official_split("acdc")["test"]})

# The official UNETR++ tumour trainer's test (validation) cases of Decathlon Task01 (unetr_pp_trainer_tumor.py:425)
BRATS_VAL = [int(c[6:]) for c in official_split("brats")["test"]]

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
    return cases, root


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
    return spec, cases, None, ""


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
    for folder in _visible(p for p in root.glob("patient[0-9][0-9][0-9]") if p.is_dir()):
        info = read_info_cfg(folder / "Info.cfg")
        for phase in ("ED", "ES"):
            frame = f"{folder.name}_frame{int(info[phase]):02d}"
            cases.append(CaseSource(frame, {"mri": ImageRef(_nii(folder, frame))}, _nii(folder, f"{frame}_gt"),
                                    meta={"patient": folder.name, "phase": phase, "group": info.get("Group", "")}))
    if not cases:
        raise ConversionError(f"{root} holds no patientNNN folders")
    spec = DatasetSpec(
        dataset=dataset, variant="acdc", name="acdc", description="ACDC cine MRI, ED and ES frames",
        channels=[{"name": "mri", "modality": "MR"}], labels=_names(ACDC_LABELS),
        evaluation={"classes": [{"name": "RV", "labels": [1]}, {"name": "MYO", "labels": [2]}, {"name": "LV", "labels": [3]}],
                    "description": "right ventricle cavity (1), myocardium (2), left ventricle cavity (3)"},
        source_path=src, source_layout=f"ACDC training/patientNNN ({root})",
    )
    return spec, cases, None, ""


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
        meta_data = read_json_file(meta, str(meta), error=ConversionError)  # the one bounded reader
        training = meta_data.get("training", []) if isinstance(meta_data, dict) else []
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
        splits, rule = None, ""
    else:
        sep, suffix, seg = ("_", BRATS_2021_SUFFIX, "seg") if layout == "brats2021" else ("-", BRATS_2023_SUFFIX, "seg")
        first = "flair" if layout == "brats2021" else "t2f"
        folders = sorted({p.parent for p in _visible(root.glob(f"*/*{sep}{first}.nii*"))})
        for folder in folders:
            cid = folder.name
            images = {ch: ImageRef(_nii(folder, f"{cid}{sep}{suffix[ch]}")) for ch in BRATS_CHANNELS}
            cases.append(CaseSource(cid, images, _nii(folder, f"{cid}{sep}{seg}"), label_map))
        splits = every_fifth_split([c.case_id for c in cases])
        rule = ("custom split (no official UNETR++ split for this layout): cases sorted by id, every fifth "
                "(positions 4, 9, ...) val, the rest train")
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
        meta_data = read_json_file(meta, str(meta), error=ConversionError)  # the one bounded reader
        declared = meta_data.get("labels", {}) if isinstance(meta_data, dict) else {}
        if declared and sorted(int(k) for k in declared) != [0, 1]:
            raise ConversionError(f"{meta} declares labels {declared}; Task06_Lung has 0 background and 1 cancer")
    cases = [CaseSource(cid, {"ct": ImageRef(image)}, label) for cid, image, label in _decathlon_pairs(root, "lung")]
    spec = DatasetSpec(
        dataset=dataset, variant="lung", name="lung", description="Decathlon Task06 lung tumour CT",
        channels=[{"name": "ct", "modality": "CT"}], labels=_names(LUNG_LABELS),
        evaluation={"classes": [{"name": "lung tumour", "labels": [1]}], "description": "lung tumour (1)"},
        source_path=src, source_layout=f"Decathlon Task06_Lung ({root})",
    )
    return spec, cases, None, ""


# nnU-Net raw layout (any dataset) -----------------------------------------------------------
def _nnunet_channels(meta: dict[str, Any], file: Path) -> list[dict[str, str]]:
    from .caseset import channel_name

    raw = meta.get("channel_names", meta.get("modality"))
    if not isinstance(raw, dict) or not raw:
        raise ConversionError(f"{file} names no channels: expected channel_names {{\"0\": \"CT\"}} (nnU-Net v2) or "
                              "modality {\"0\": \"CT\"} (Decathlon, nnU-Net v1)")
    try:
        items = sorted(raw.items(), key=lambda kv: int(kv[0]))
    except ValueError:
        raise ConversionError(f"{file}: channel keys must be 0, 1, ... (got {', '.join(map(str, raw))})") from None
    if [int(k) for k, _ in items] != list(range(len(items))):
        raise ConversionError(f"{file}: channel keys must be 0, 1, ... without gaps (got {', '.join(map(str, raw))})")
    channels: list[dict[str, str]] = []
    for _, value in items:
        name = channel_name(str(value))
        while name in {c["name"] for c in channels}:
            name = f"{name}_{len(channels)}"
        channels.append({"name": name, "modality": "CT" if str(value).strip().casefold() == "ct" else "MR",
                         "source_name": str(value)})
    return channels


def _nnunet_labels(meta: dict[str, Any], file: Path) -> dict[int, str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ConversionError(f"{file} has no labels (name -> value, or Decathlon's value -> name)")
    out: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            raise ConversionError(f"{file}: label {key!r} is a region ({value}); region-based nnU-Net datasets are "
                                  "not supported, give one value per label")
        if str(key).strip().lstrip("-").isdigit() and isinstance(value, str):  # Decathlon / v1: {"1": "liver"}
            number, name = int(key), value
        elif isinstance(value, int) and not isinstance(value, bool):  # v2: {"liver": 1}
            number, name = value, str(key)
        else:
            raise ConversionError(f"{file}: label entry {key!r}: {value!r} is neither name -> value nor value -> name")
        if number < 0 or number > 65535:
            raise ConversionError(f"{file}: label {name!r} has value {number}; values must be 0..65535")
        if number in out and number != 0:
            raise ConversionError(f"{file}: labels {out[number]!r} and {name!r} share the value {number}")
        if number != 0:
            out[number] = name
    if not out:
        raise ConversionError(f"{file} declares no foreground label")
    return dict(sorted(out.items()))


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]


def _nnunet_cases(root: Path, meta: dict[str, Any], channels: list[dict[str, str]], ending: str) -> list[CaseSource]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    names = [c["name"] for c in channels]

    def per_channel(case: str) -> dict[str, ImageRef]:
        return {n: ImageRef(images_dir / f"{case}_{i:04d}{ending}") for i, n in enumerate(names)}

    cases: list[CaseSource] = []
    listed = meta.get("dataset")  # nnU-Net v2's optional explicit file lists
    if isinstance(listed, dict) and listed:
        for case, entry in sorted(listed.items()):
            files = entry.get("images", []) if isinstance(entry, dict) else []
            if len(files) != len(names) or "label" not in entry:
                raise ConversionError(f"{root / 'dataset.json'}: 'dataset' entry {case!r} needs {len(names)} images and a label")
            cases.append(CaseSource(str(case), {n: ImageRef((root / f).resolve()) for n, f in zip(names, files)},
                                    (root / entry["label"]).resolve()))
        return cases
    training = meta.get("training")
    if isinstance(training, list) and training:  # Decathlon / nnU-Net v1
        for item in training:
            if not isinstance(item, dict) or "label" not in item:
                raise ConversionError(f"{root / 'dataset.json'}: a 'training' entry lacks 'label': {item!r}")
            label = root / str(item["label"])
            case = _strip_ending(label.name, ending)
            split_files = per_channel(case)
            if all(ref.path.is_file() for ref in split_files.values()):  # nnU-Net v1: <case>_0000.nii.gz
                images = split_files
            else:  # the Decathlon's own files: one 3-D image, or a 4-D file holding every channel
                image = root / str(item.get("image", ""))
                images = ({names[0]: ImageRef(image)} if len(names) == 1
                          else {n: ImageRef(image, i) for i, n in enumerate(names)})
            cases.append(CaseSource(case, images, label))
        return cases
    if not labels_dir.is_dir():
        raise ConversionError(f"no nnU-Net layout under {root}: {labels_dir} is missing (expected imagesTr/<case>_0000"
                              f"{ending} and labelsTr/<case>{ending})")
    for label in _visible(labels_dir.glob(f"*{ending}")):
        case = _strip_ending(label.name, ending)
        cases.append(CaseSource(case, per_channel(case), label))
    if not cases:
        raise ConversionError(f"{labels_dir} holds no label files ending in {ending}")
    return cases


def few_cases_split(ids: Sequence[str]) -> tuple[dict[str, list[str]], str]:
    """Own data: 80/20 (every fifth sorted case val) from 5 cases on; fewer cases all train, none held out."""
    if len(ids) >= 5:
        split = every_fifth_split(ids)
        rule = "cases sorted by id, every fifth (positions 4, 9, ...) val, the rest train (80/20)"
    else:
        split = {"train": sorted(ids), "val": []}
        rule = (f"only {len(ids)} case(s): all train, none held out (evaluate with --split all: scores on the "
                "training cases, not held-out ones)")
    split["all"] = sorted(ids)
    return split, rule


def _nnunet(dataset: str, src: Path) -> tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]:
    file = src / "dataset.json"
    if not file.is_file():
        raise ConversionError(f"{file} is missing: an nnU-Net raw dataset holds dataset.json, imagesTr/ and labelsTr/")
    meta = read_json_file(file, str(file), error=ConversionError)  # the one bounded reader
    if not isinstance(meta, dict):
        raise ConversionError(f"{file} must hold a JSON object")
    channels = _nnunet_channels(meta, file)
    labels = _nnunet_labels(meta, file)
    ending = str(meta.get("file_ending", ".nii.gz"))
    cases = _nnunet_cases(src, meta, channels, ending)
    form = ("nnU-Net v2" if "channel_names" in meta else "Decathlon / nnU-Net v1")
    spec = DatasetSpec(
        dataset="nnunet", variant="auto", name=str(meta.get("name") or src.name),
        description=str(meta.get("description") or f"{src.name} (nnU-Net raw layout)"),
        channels=[{"name": c["name"], "modality": c["modality"]} for c in channels], labels=labels,
        evaluation={"classes": _classes(labels, sorted(labels)), "description": "every label of dataset.json"},
        source_path=src, source_layout=f"nnU-Net raw layout, {form} dataset.json ({src})",
        extra={"source_channels": {c["name"]: c["source_name"] for c in channels}},
    )
    splits, rule = few_cases_split([c.case_id for c in cases])
    return spec, cases, splits, rule


_BUILDERS: dict[str, Callable[[str, Path], tuple[DatasetSpec, list[CaseSource], dict[str, list[str]], str]]] = {
    "synapse": _synapse_like, "btcv": _synapse_like, "acdc": _acdc, "brats": _brats, "lung": _lung,
    "nnunet": _nnunet,
}


def choose_splits(dataset: str, ids: Sequence[str], custom_split: bool) -> tuple[dict[str, list[str]], str, dict[str, Any]]:
    """(splits, rule, record for dataset.json) for a benchmark with official lists."""
    if custom_split:
        rule = "custom split: cases sorted by id, every fifth (positions 4, 9, ...) val, the rest train (80/20)"
        return every_fifth_split(ids), rule, {"kind": "custom"}
    splits, diff = official_splits_for(dataset, ids)
    data = official_split(dataset)
    rule = (f"official UNETR++ split ({source_ref(dataset)}): {len(data['train'])} train, {len(data['test'])} test; "
            "val = test (the official trainer validates on the test cases)")
    if data["excluded"]:
        rule += f"; {len(data['excluded'])} cases are in neither official list"
    if diff["missing"] or diff["extra"]:
        log.warning("%s: the source differs from the official %s split: %d official case(s) missing%s, %d unknown "
                    "case(s)%s; the paper recipe will refuse this dataset (train with --custom-split, or convert "
                    "with --custom-split for an 80/20 split of what is here)", dataset, dataset, len(diff["missing"]),
                    f" ({', '.join(diff['missing'][:8])}{' ...' if len(diff['missing']) > 8 else ''})" if diff["missing"] else "",
                    len(diff["extra"]), f" ({', '.join(diff['extra'][:8])})" if diff["extra"] else "")
    return splits, rule, {"kind": "official", "source": source_ref(dataset), **diff}


def convert(dataset: str, src: str | Path, dst: str | Path, overwrite: bool = False, custom_split: bool = False) -> Path:
    """Convert the dataset in SRC into DST; returns DST/dataset.json. Resumes an interrupted run.
    Splits: the official lists (default) or, with `custom_split`, 80/20 of all cases."""
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
    if dataset == "nnunet" and custom_split:
        splits, rule = every_fifth_split(ids), "custom split: every fifth sorted case val (80/20)"
        splits["all"] = sorted(ids)
        record = {"kind": "custom"}
    elif splits is None or custom_split:
        splits, rule, record = choose_splits(dataset, ids, custom_split)
    else:
        record = {"kind": "custom"}
    spec.extra["official_split"] = record
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
