"""`unetrpp-train recipe NAME [--json]`: the training recipe fully resolved, so that nobody has to read code to
know what `unetrpp-train train NAME` will run: batch, patch, precision, loss, schedule, optimiser, every
augmentation transform with its probability and range, and the official split the recipe requires.
NAME is a shipped recipe (synapse, btcv, acdc, brats, lung) or a recipe JSON file."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("recipe", help="print a training recipe fully resolved (what `train` will run)",
                              description=__doc__)
    p.add_argument("name", metavar="NAME", help="synapse, btcv, acdc, brats, lung, or a recipe JSON file")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..recipe import resolve_recipe, recipe_text

    resolved = resolve_recipe(load_config(args.name))
    print(json.dumps(resolved, indent=2) if args.json else recipe_text(resolved))
    return 0
