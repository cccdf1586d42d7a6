"""`unetrpp-train plan DST [--variant V]`: target spacing, normalisation and patch size for a converted
dataset, from its training cases; written to DST/plan.json (the manifest's `plan` and `inputs`)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def run(args: argparse.Namespace) -> int:
    from ..planning import plan_dataset

    result = plan_dataset(args.data, variant=args.variant, patch_size=args.patch, split=args.split,
                          sample_stride=args.sample_stride, ct_stats=args.ct_stats)
    shown = {"plan": result["plan"], "inputs": result["inputs"], "patch_size": result["patch_size"]}
    if "recipe" in result:
        shown["recipe"] = result["recipe"]
    print(json.dumps(shown, indent=2))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plan", help="plan preprocessing (spacing, normalisation, patch) from the training cases",
                              description=__doc__)
    p.add_argument("data", metavar="DST", help="converted dataset folder")
    from ..datasets import KINDS

    p.add_argument("--variant", choices=[k for k in KINDS if KINDS[k].variant != "auto"] + ["auto"],
                   help="network variant (default: the dataset's; auto = chosen from the data, for own datasets)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="patch size in array order z y x (default: the paper's for the variant)")
    p.add_argument("--split", default="train", help="cases to plan from (default: train)")
    p.add_argument("--sample-stride", type=int, default=10, metavar="N",
                   help="CT statistics use every N-th foreground voxel of each case (default 10, as nnU-Net v1)")
    p.add_argument("--ct-stats", choices=["unclipped", "clipped"], default="unclipped",
                   help="CT mean/sd of the foreground samples before clipping to the 0.5/99.5 percentiles (default: "
                        "nnU-Net v1's stored intensity properties, experiment_planning/DatasetAnalyzer.py) or after")
    p.set_defaults(func=run)
    return p
