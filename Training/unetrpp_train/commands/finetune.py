"""`unetrpp-train finetune --from MODEL --data FOLDER --name NEW [--iterations N] [--val CASE ...] [--replay FOLDER ...]`:
adapt an installed model (or a package) to labelled cases in the nnU-Net raw layout (a case set written by
`add-case`, or any nnU-Net raw dataset), evaluate the parent and the result on the same cases, and install the
result as a new model NEW beside the parent (never replacing it). Its manifest records the lineage (parent name,
version and weights SHA256, data SHA256, iterations, label matching, Dice before and after).

Labels are matched by name; a new name adds a class. Model labels the data does not annotate keep the parent's
prediction as their training label (--unannotated keep) or are trained as background (--unannotated
background). Held-out cases: --val, else every fifth case from 5 cases on, else all cases (said plainly).

--progress json writes one JSON object per line on stdout: {"event": "stage" | "progress" | "log", ...}, then
{"event": "done", "model": NEW, "package": PATH, "metrics": {"before": {...}, "after": {...}}, ...} or
{"event": "error", "category": ..., "message": ...}. SIGTERM or Ctrl-C stops training after the current step
with a checkpoint (exit 130); the same command with --resume continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any


def run(args: argparse.Namespace) -> int:
    from unetrpp.errors import classify

    from ..finetune import Events, FinetuneOptions, cancel_on_signals, finetune

    opts = FinetuneOptions(parent=args.parent, data=args.data, name=args.name, iterations=args.iterations,
                           val=list(args.val or []), replay=list(args.replay or []), workdir=args.output,
                           device=args.device, lr=args.lr, batch_size=args.batch_size, workers=args.workers,
                           seed=args.seed, version=args.version, unannotated=args.unannotated,
                           install=not args.no_install)
    as_json = args.progress == "json"
    events = Events(sys.stdout if as_json else None)
    root = logging.getLogger()
    if not as_json and root.level > logging.INFO:
        logging.getLogger("unetrpp_train").setLevel(logging.INFO)
    try:
        with cancel_on_signals(events, stopping_process=True) as token:
            result = finetune(opts, resume=args.resume, events=events, cancel=token)
    except (Exception, KeyboardInterrupt) as exc:
        if as_json:
            events.emit({"event": "error", **classify(exc).as_json()})
        raise
    if as_json:
        events.emit({"event": "done", **result})
    else:
        before, after = result["metrics"]["before"], result["metrics"]["after"]
        print(f"{result['model']} installed: {result['package']}")
        print(f"{'structure':<28} {'Dice before':>11} {'Dice after':>10}")
        for k in before:
            print(f"{k:<28} {before[k]:>11.3f} {after.get(k, float('nan')):>10.3f}")
        print(result["evaluation"]["note"])
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ..finetune import DEFAULT_ITERATIONS

    p = subparsers.add_parser("finetune", help="adapt a model to corrected cases and install the result as a new model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="parent", required=True, metavar="MODEL", help="installed model name or package path")
    p.add_argument("--data", required=True, metavar="FOLDER", help="labelled cases in the nnU-Net raw layout")
    p.add_argument("--name", required=True, metavar="NEW", help="name of the new model (never an installed one)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, metavar="N",
                   help=f"training iterations (default {DEFAULT_ITERATIONS}; batch 2)")
    p.add_argument("--val", nargs="+", metavar="CASE", help="cases held out for evaluation (not trained on)")
    p.add_argument("--replay", action="append", metavar="FOLDER",
                   help="cases of the original data (nnU-Net raw layout) trained alongside, to limit forgetting")
    p.add_argument("-o", "--output", metavar="WORKDIR",
                   help="work folder (default: <unetrpp home>/finetune/NEW): converted data, run, evaluations, package")
    p.add_argument("--unannotated", choices=["keep", "background"], default="keep",
                   help="model labels the data does not annotate: keep the parent's prediction (default) or background")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4, poly decay)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="data loader processes (default 1)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--version", default="1.0.0", help="version of the new package")
    p.add_argument("--no-install", action="store_true", help="leave the package in WORKDIR/package, do not install it")
    p.add_argument("--resume", action="store_true", help="continue a cancelled or interrupted fine-tune in WORKDIR")
    p.add_argument("--progress", choices=["text", "json"], default="text",
                   help="json: one event per line on stdout (stage, progress, log, done, error) for a GUI or server")
    p.set_defaults(func=run)
    return p
