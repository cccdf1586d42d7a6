"""`unetrpp-train evaluate --data DST (--model PACKAGE | --predictions DIR) [--split val|test] -o OUTDIR`:
per-case and mean Dice and HD95 (mm and voxels) on a split of a converted dataset, as CSV and Markdown.

With --model the engine segments every case (the same inference as `unetrpp segment`); with
--predictions the labelmaps DIR/<case id>.nii.gz are scored. Classes follow the dataset: the Synapse
8-organ table, BTCV 13 organs, ACDC RV/MYO/LV, BraTS WT/TC/ET regions, lung tumour.
"""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate

    metrics = evaluate(args.data, args.output, split=args.split, model=args.model, predictions=args.predictions,
                       device=args.device, overlap=args.overlap, fast=args.fast, overwrite=args.overwrite,
                       hd95_empty=args.hd95_empty)
    print(f"mean Dice {metrics['mean_dice']}, mean HD95 {metrics['mean_hd95_mm']} mm; reports in {args.output}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="Dice and HD95 per case and class on a dataset split (CSV + Markdown)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DST", help="converted dataset folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="PACKAGE", help="model package (folder, .zip or installed name) to run")
    source.add_argument("--predictions", metavar="DIR", help="folder of labelmaps <case id>.nii.gz to score")
    p.add_argument("--split", help="split to evaluate (default: val, or test when there is no val)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the reports")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (with --model)")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model's, 0.5)")
    p.add_argument("--fast", action="store_true", help="no mirroring (test-time augmentation off)")
    p.add_argument("--overwrite", action="store_true", help="replace reports already in OUTDIR")
    p.add_argument("--hd95-empty", choices=["zero", "exclude"], default="zero",
                   help="HD95 when exactly one mask is empty: 0 and counted in the mean (default, the official "
                        "inference_*.py scripts) or left out of the mean (reported as missing)")
    p.set_defaults(func=run)
    return p
