"""The `unetrpp` command. Each sub-command lives in `unetrpp.commands.<name>`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

from . import __version__
from .errors import CANCELLED, classify

log = logging.getLogger(__name__)

# Sub-command modules, in the order `unetrpp --help` lists them.
COMMANDS = ["segment", "batch", "models", "import_official", "serve", "export_onnx", "quantize"]


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
    return run_command(args.func, args)


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command as every entry point does (`unetrpp`, the worker): whatever goes wrong is
    mapped by `errors.classify` (the one policy) and ends in one line on stderr, never a
    traceback: `error: MESSAGE` (or `cancelled`). Exit codes by category: 0 ok; 2 input, model,
    output, environment or resource; 3 quality (`--strict` refused); 130 cancelled; 1 internal (a
    bug: its traceback is logged at debug level, shown with -vv)."""
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except BaseException as exc:  # noqa: BLE001 - classified below; SystemExit passes through
        if isinstance(exc, SystemExit):
            raise
        classified = classify(exc)
        if isinstance(exc, BrokenPipeError):
            # the reader of stdout is gone (`| head`, a parent process that stopped reading): stop
            # quietly; stdout goes to /dev/null so that the interpreter's final flush cannot fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if classified.is_bug:
            log.debug("internal error", exc_info=True)
        if classified.category == CANCELLED:
            print("cancelled", file=sys.stderr)
        else:
            print(f"error: {classified.message}", file=sys.stderr)
        return classified.exit_code


if __name__ == "__main__":
    sys.exit(main())
