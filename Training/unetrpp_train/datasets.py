"""One table of the dataset kinds `unetrpp-train` knows: the name `convert`, `plan`, `recipe` and `train`
accept, the network variant it trains, the paper's patch, and the file of its official split.

Everything else reads this table: the converters (`convert.DATASETS`), the recipes (`config.KNOWN_DATASETS`),
planning (`PATCH_SIZES`, variant aliases) and the official split lists (`official.SPLIT_FILES`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetKind:
    name: str
    variant: str
    """network variant (unetrpp.network.VARIANTS); "auto": chosen by `plan` from the data"""
    patch_size: tuple[int, int, int] | None
    """the paper's patch (z, y, x); None: chosen from the data"""
    split: str | None
    """official split file splits/<split>.json; None: no official split (the dataset's own)"""
    description: str


KINDS: dict[str, DatasetKind] = {k.name: k for k in (
    DatasetKind("synapse", "synapse", (64, 128, 128), "synapse", "Synapse multi-organ CT, the paper's 8 organs"),
    DatasetKind("btcv", "synapse", (64, 128, 128), "synapse", "the same CTs, all 13 BTCV organs"),
    DatasetKind("acdc", "acdc", (16, 160, 160), "acdc", "ACDC cine MRI: RV, myocardium, LV"),
    DatasetKind("brats", "brats", (128, 128, 128), "brats", "brain tumour MRI (Decathlon, BraTS 2021/2023)"),
    DatasetKind("lung", "lung", (32, 192, 192), "lung", "Decathlon Task06 lung tumour CT"),
    DatasetKind("nnunet", "auto", None, None, "your own data in the nnU-Net raw layout"),
)}

#: other names of the variants (the official code calls the BraTS network "tumor")
VARIANT_ALIASES = {"btcv": "synapse", "tumor": "brats"}

#: the paper's patch per network variant
PATCH_SIZES: dict[str, list[int]] = {k.variant: list(k.patch_size) for k in KINDS.values() if k.patch_size}

#: dataset kind -> official split file
SPLIT_FILES: dict[str, str] = {k.name: k.split for k in KINDS.values() if k.split}
