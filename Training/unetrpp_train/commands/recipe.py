"""`unetrpp-train recipe NAME [--json]`: the training recipe fully resolved, so that nobody has to read code to
know what `unetrpp-train train NAME` will run: batch, patch, precision, loss, schedule, optimiser, every
augmentation transform with its probability and range, and the official split the recipe requires.
NAME is a shipped recipe (synapse, btcv, acdc, brats, lung, nnunet) or a recipe JSON file; `nnunet` (own data) needs
--data DST: its stem, patch, batch Dice and dummy-2D augmentation are what `plan` chose for that dataset."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("recipe", help="print a training recipe fully resolved (what `train` will run)",
                              description=__doc__)
    p.add_argument("name", metavar="NAME", help="synapse, btcv, acdc, brats, lung, or a recipe JSON file")
    p.add_argument("--json", action="store_true", help="machine-readable JSON instead of a table")
    p.add_argument("--data", metavar="DST", help="a planned dataset: resolve a recipe whose configuration comes from "
                   "the plan (nnunet: stem, patch, batch Dice, dummy 2D from DST/plan.json)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config, resolve_for_plan
    from ..data import read_plan
    from ..recipe import resolve_recipe, recipe_text

    cfg = load_config(args.name)
    plan = None
    if args.data:
        plan = read_plan(args.data)
        cfg = resolve_for_plan(cfg, plan)
    elif cfg.variant == "auto":
        raise ConfigError(f"recipe {args.name} takes its configuration from a planned dataset: add --data DST")
    resolved = resolve_recipe(cfg)
    if plan is not None and "recipe" in plan:
        resolved["planning_rules"] = plan["recipe"].get("rules", [])
    print(json.dumps(resolved, indent=2) if args.json else recipe_text(resolved))
    return 0
