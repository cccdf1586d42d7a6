"""`unetrpp-train export RUNDIR -o PACKAGE`: turn a training run into a model package + model card."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("unetrpp_train")

_DTYPES = ("float32", "float16", "bfloat16")  # torch dtypes of the same names (torch is imported on use)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUNDIR", help="training run folder (run.json + checkpoints)")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package folder, or a .zip file")
    p.add_argument("--name", help="package id (lower-case, e.g. synapse-unetrpp)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--title")
    p.add_argument("--description")
    p.add_argument("--license", dest="license_text", help="licence text for the manifest")
    p.add_argument("--metrics", metavar="JSON", help="metrics file to record, e.g. the output of `unetrpp-train evaluate` "
                   "or {\"dice\": {\"liver\": 0.95, ...}}")
    p.add_argument("--notes", help="provenance notes")
    p.add_argument("--card-extra", metavar="FILE", help="Markdown inserted near the top of the model card")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="weights precision in the package")
    p.add_argument("--checkpoint", default="final", help="final (default; latest if the run has not finished), latest, or a file name")
    p.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import DEFAULT_LICENSE, export_run, read_json_file

    if logging.getLogger().level > logging.INFO:
        log.setLevel(logging.INFO)
    metrics: dict[str, Any] | None = None
    if args.metrics:
        metrics = read_json_file(Path(args.metrics), "--metrics")
    extra = Path(args.card_extra).read_text() if args.card_extra else None
    out = export_run(args.run, args.output, name=args.name, version=args.version, title=args.title,
                     description=args.description, license_text=args.license_text or DEFAULT_LICENSE,
                     metrics=metrics, notes=args.notes, card_extra=extra, dtype=getattr(torch, args.dtype),
                     checkpoint=args.checkpoint, overwrite=args.overwrite)
    print(out)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a training run as a model package with a model card",
                              description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m unetrpp_train.commands.export`): the package CLI's `export`, with
    its logging and error handling."""
    from ..cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
