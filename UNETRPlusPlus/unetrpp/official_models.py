"""What the official UNETR++ models expect and produce, per variant: inputs and normalisation,
the preprocessing plan, labels (names, colours, SNOMED-CT) and inference defaults.

Numbers come from the official repository (Amshaker/unetr_plus_plus @ dcba1c6) and its
nnFormer-derived plans, as recorded in shared/parity/README.md. Values marked `verify` there are
flagged in each manifest's provenance notes; the training planner recomputes them from data.
"""

from __future__ import annotations

import copy
from typing import Any

from .manifest import build_manifest
from .network import variant_config
from .quality.card import official_card
from .terminology import LEFT, MORPHOLOGICALLY_ALTERED, RIGHT, terminology

PAPER = (
    "Shaker A, Maaz M, Rasheed H, Khan S, Yang M-H, Khan FS. UNETR++: Delving into Efficient and "
    "Accurate 3D Medical Image Segmentation. arXiv:2212.04497 (2022)"
)
OFFICIAL_REPOSITORY = "https://github.com/Amshaker/unetr_plus_plus"
# Where the authors publish each checkpoint: the links of the official README at the pinned commit dcba1c6,
# section "Evaluation" (README.md:169, :177, :187, :196). The Decathlon-Lung link is a SharePoint link there;
# an older README revision had a Google Drive link that the authors replaced.
OFFICIAL_CHECKPOINT_URLS = {
    "synapse": "https://drive.google.com/file/d/13JuLMeDQRR_a3c3tr2V2oav6I29fJoBa",
    "acdc": "https://drive.google.com/file/d/15YXiHai1zLc1ycmXaiSHetYbLGum3tV5",
    "lung": "https://mbzuaiac-my.sharepoint.com/:u:/g/personal/abdelrahman_youssief_mbzuai_ac_ae/ETAlc8WTjV1BhZx7zwFpA8UBS4og6upb1qX2UKkypMoTjw?e=KfzAiG",
    "brats": "https://drive.google.com/file/d/1LiqnVKKv3DrDKvo6J0oClhIFirhaz5PG",
}
OFFICIAL_LICENSE = (
    "Apache-2.0 (UNETR++ code and official weights, github.com/Amshaker/unetr_plus_plus); the "
    "training dataset's terms also apply "
    "(research use). Not a medical device: not for clinical decisions."
)


def _label(value: int, name: str, color: tuple[int, int, int], term: dict[str, Any]) -> dict[str, Any]:
    return {"value": value, "name": name, "color": list(color), "terminology": term}


BTCV_LABELS = [
    _label(1, "spleen", (157, 108, 162), terminology(("78961009", "Spleen"))),
    _label(2, "right kidney", (185, 102, 83), terminology(("64033007", "Kidney"), modifier=RIGHT)),
    _label(3, "left kidney", (212, 126, 151), terminology(("64033007", "Kidney"), modifier=LEFT)),
    _label(4, "gallbladder", (139, 150, 98), terminology(("28231008", "Gallbladder"))),
    _label(5, "esophagus", (211, 171, 143), terminology(("32849002", "Esophagus"))),
    _label(6, "liver", (221, 130, 101), terminology(("10200004", "Liver"))),
    _label(7, "stomach", (216, 132, 105), terminology(("69695003", "Stomach"))),
    _label(8, "aorta", (224, 97, 76), terminology(("15825003", "Aorta"))),
    _label(9, "inferior vena cava", (0, 151, 206), terminology(("64131007", "Inferior vena cava"))),
    _label(10, "portal and splenic vein", (0, 112, 165), terminology(("32764006", "Portal vein"))),
    _label(11, "pancreas", (249, 180, 111), terminology(("15776009", "Pancreas"))),
    _label(12, "right adrenal gland", (244, 214, 49), terminology(("23451007", "Adrenal gland"), modifier=RIGHT)),
    _label(13, "left adrenal gland", (200, 170, 40), terminology(("23451007", "Adrenal gland"), modifier=LEFT)),
]
SYNAPSE_EVALUATED_LABELS = [1, 2, 3, 4, 6, 7, 8, 11]

ACDC_LABELS = [
    _label(1, "right ventricle cavity", (103, 174, 224), terminology(("53085002", "Right ventricle"))),
    _label(2, "left ventricle myocardium", (206, 110, 84), terminology(("74281007", "Myocardium"))),
    _label(3, "left ventricle cavity", (230, 220, 70), terminology(("87878005", "Left ventricle"))),
]

_BRAIN = ("12738006", "Brain")
BRATS_LABELS = [
    _label(1, "oedema", (240, 220, 80), terminology(("79654002", "Edema"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)),
    _label(2, "non-enhancing tumour", (70, 130, 230), terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)),
    _label(3, "enhancing tumour", (230, 60, 60), terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)),
]
BRATS_REGIONS = [
    {"name": "whole tumour", "labels": [1, 2, 3], "color": [120, 200, 120],
     "terminology": terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)},
    {"name": "tumour core", "labels": [2, 3], "color": [200, 120, 230],
     "terminology": terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)},
    {"name": "enhancing tumour region", "labels": [3], "color": [255, 80, 40],
     "terminology": terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=_BRAIN)},
]

LUNG_LABELS = [
    _label(1, "lung tumour", (230, 80, 60), terminology(("108369006", "Neoplasm"), MORPHOLOGICALLY_ALTERED, region=("39607008", "Lung"))),
]

_ZSCORE = {"scheme": "zscore", "nonzero_mask": False}
_ZSCORE_BRAIN = {"scheme": "zscore", "nonzero_mask": True}

_SPECS: dict[str, dict[str, Any]] = {
    "synapse": {
        "title": "UNETR++ abdominal multi-organ CT (Synapse / BTCV, 13 organs)",
        "description": "Segments 13 abdominal organs in contrast-enhanced CT (BTCV numbering).",
        "inputs": [{
            "name": "ct", "modality": "CT", "description": "abdominal CT in Hounsfield units",
            "aliases": ["ct"],
            "normalization": {"scheme": "ct", "clip": [-958.0, 326.0], "mean": 82.95177, "std": 136.94818},
        }],
        "plan": {"target_spacing": [3.0, 0.7578, 0.7578], "crop_to_nonzero": True},
        "labels": BTCV_LABELS,
        "dataset": "Synapse multi-organ CT (MICCAI 2015 BTCV), 18 training / 12 test cases",
        "notes": "",
    },
    "acdc": {
        "title": "UNETR++ cardiac cine MRI (ACDC: RV, myocardium, LV)",
        "description": "Segments right ventricle, left-ventricle myocardium and cavity in short-axis cine MRI.",
        "inputs": [{
            "name": "mri", "modality": "MR", "description": "short-axis cine MRI frame (ED or ES)",
            "aliases": ["cine", "sax", "mri", "frame"], "normalization": _ZSCORE,
        }],
        "plan": {"target_spacing": [5.0, 1.52, 1.52], "crop_to_nonzero": True},
        "labels": ACDC_LABELS,
        "dataset": "ACDC (MICCAI 2017), 80/20 split of the 100 training patients",
        "notes": "target spacing (5.0, 1.52, 1.52) mm is recorded as approximate (verify against the training plan).",
    },
    "brats": {
        "title": "UNETR++ brain tumour MRI (BraTS / Decathlon Task01)",
        "description": "Segments oedema, non-enhancing and enhancing tumour in co-registered, skull-stripped brain MRI; adds whole tumour, tumour core and enhancing tumour regions.",
        "inputs": [
            {"name": "flair", "modality": "MR", "description": "T2-FLAIR", "aliases": ["flair", "t2f", "fla"], "normalization": _ZSCORE_BRAIN},
            {"name": "t1", "modality": "MR", "description": "T1-weighted native", "aliases": ["t1n", "t1w", "t1native", "t1"], "normalization": _ZSCORE_BRAIN},
            {"name": "t1gd", "modality": "MR", "description": "T1-weighted with gadolinium", "aliases": ["t1c", "t1ce", "t1gd", "t1post", "t1_gd"], "normalization": _ZSCORE_BRAIN},
            {"name": "t2", "modality": "MR", "description": "T2-weighted", "aliases": ["t2w", "t2"], "normalization": _ZSCORE_BRAIN},
        ],
        "plan": {"target_spacing": [1.0, 1.0, 1.0], "crop_to_nonzero": True},
        "labels": BRATS_LABELS,
        "regions": BRATS_REGIONS,
        "dataset": "Medical Segmentation Decathlon Task01_BrainTumour (BraTS 2016/2017), official UNETR++ split",
        "notes": "",
    },
    "lung": {
        "title": "UNETR++ lung tumour CT (Decathlon Task06)",
        "description": "Segments primary lung tumours in chest CT.",
        "inputs": [{
            "name": "ct", "modality": "CT", "description": "chest CT in Hounsfield units", "aliases": ["ct"],
            "normalization": {"scheme": "ct", "clip": [-1024.0, 325.0], "mean": -158.58, "std": 324.70},
        }],
        "plan": {"target_spacing": [1.24, 0.79, 0.79], "crop_to_nonzero": True},
        "labels": LUNG_LABELS,
        "dataset": "Medical Segmentation Decathlon Task06_Lung, official UNETR++ split",
        "notes": "CT clip range, mean/sd and target spacing are approximate (Task06 foreground statistics); verify against the training plan.",
    },
}


def official_manifest(variant: str, name: str | None = None, version: str = "1.0.0") -> dict[str, Any]:
    """A manifest template (without weights) for an official variant."""
    cfg = variant_config(variant)
    spec = copy.deepcopy(_SPECS[cfg.variant])
    provenance = {"source": "official-checkpoint", "dataset": spec["dataset"]}
    if spec["notes"]:
        provenance["notes"] = spec["notes"]
    return build_manifest(
        name=name or f"{cfg.variant}-official", version=version, title=spec["title"],
        description=spec["description"], license=OFFICIAL_LICENSE, citation=PAPER, network=cfg,
        inputs=spec["inputs"], plan=spec["plan"], labels=spec["labels"], regions=spec.get("regions"),
        provenance=provenance, card=official_card(spec["inputs"], spec["plan"]),
    )
