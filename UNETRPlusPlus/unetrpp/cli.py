"""The `unetrpp` command. Each sub-command lives in `unetrpp.commands.<name>`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import UnetrppError

# Sub-command modules, in the order `unetrpp --help` lists them.
COMMANDS = ["segment", "batch", "models", "import_official", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetrpp",
        description="UNETR++ 3D medical image segmentation (Shaker et al., arXiv 2212.04497).",
    )
    parser.add_argument("--version", action="version", version=f"unetrpp {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:  # each module only builds its parser here; its imports of torch are lazy
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except UnetrppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
