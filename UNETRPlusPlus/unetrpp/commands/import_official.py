"""`unetrpp import-official`: official UNETR++ checkpoint -> model package."""

from __future__ import annotations

import argparse

from ..network import VARIANTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-official",
        help="convert an official UNETR++ checkpoint into a model package",
        description=(
            "Convert an official UNETR++ checkpoint (model_final_checkpoint.model) into a model "
            "package with the variant's labels, plan and provenance. The checkpoint is read with "
            "torch.load(weights_only=True): files that need arbitrary unpickling are refused."
        ),
    )
    p.add_argument("checkpoint", help="official checkpoint file (.model / .pth)")
    p.add_argument("--variant", required=True, choices=[*VARIANTS, "tumor", "btcv"],
                   help="which official network the checkpoint belongs to")
    p.add_argument("-o", "--output", required=True, help="package folder (or .zip) to write")
    p.add_argument("--name", help="package name (default: <variant>-official)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..official import import_official_checkpoint

    out = import_official_checkpoint(args.checkpoint, args.variant, args.output, name=args.name, overwrite=args.overwrite)
    print(f"wrote model package {out}")
    return 0
