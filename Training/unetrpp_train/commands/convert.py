"""`unetrpp-train convert DATASET SRC -o DST`: a public benchmark dataset, or any dataset in the nnU-Net raw
layout, into the converted layout.

DATASET: synapse, btcv, acdc, brats (Decathlon Task01, BraTS 2021 or 2023 layout, detected), lung, or nnunet
(your own data: SRC/dataset.json with channel_names, labels, file_ending; imagesTr/<case>_0000.nii.gz, one
file per channel; labelsTr/<case>.nii.gz; the Decathlon's dataset.json form too).
DST receives dataset.json (written last) and cases/<id>/image_<channel>.nii.gz + label.nii.gz with the
source geometry. Re-running an interrupted conversion resumes it. Splits: the official UNETR++ lists
(Training/unetrpp_train/splits/); a source that lacks official cases or holds unknown ones is converted with
a warning, and the paper recipes refuse it unless `train --custom-split`.
"""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..convert import convert

    out = convert(args.dataset, args.source, args.output, overwrite=args.overwrite, custom_split=args.custom_split)
    print(out)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..convert import DATASETS

    p = subparsers.add_parser("convert", help="convert a benchmark dataset (synapse, btcv, acdc, brats, lung) or your own (nnunet)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, metavar="DATASET", help=", ".join(DATASETS))
    p.add_argument("source", metavar="SRC", help="the dataset as published (unpacked)")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="output folder (new, empty, or an interrupted conversion)")
    p.add_argument("--overwrite", action="store_true", help="replace a converted dataset (or an interrupted conversion) in DST")
    p.add_argument("--custom-split", action="store_true",
                   help="split all cases 80/20 (every fifth sorted id is val) instead of the official UNETR++ lists; "
                        "the paper recipes then need `train --custom-split`")
    p.set_defaults(func=run)
    return p
