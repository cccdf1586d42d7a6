"""The `unetrpp-train` command. Each sub-command lives in its own module `unetrpp_train.commands.<name>`
with `add_parser(subparsers)` that registers it and sets `func`; modules are discovered, so a new
command needs no change here. Commands listed in ORDER come first in `--help`, any others follow
alphabetically.

Exit codes: one policy with `unetrpp`, through `unetrpp.errors.classify`: 0 ok; 1 no command given, or an
internal error (a bug); 2 an error of the input, model, output, environment or resource category; 3 quality;
130 cancelled (Ctrl-C). The message goes to stderr as `error: ...` (the traceback with -v).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
from typing import Callable

from unetrpp.errors import CANCELLED, classify

#: the workflow order shown by `unetrpp-train --help`
ORDER = ["convert", "plan", "recipe", "train", "evaluate", "export"]


def command_modules() -> list[str]:
    from . import commands

    found = {m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    from unetrpp import __version__

    parser = argparse.ArgumentParser(
        prog="unetrpp-train",
        description="Train UNETR++ on the benchmark datasets or your own (nnU-Net raw layout): convert -> plan -> train -> "
                    "evaluate -> export; adapt a model to corrected cases: add-case -> finetune.",
    )
    parser.add_argument("--version", action="version", version=f"unetrpp-train {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        module = importlib.import_module(f"{__package__}.commands.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.INFO, logging.DEBUG][min(args.verbose, 1)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return guarded(lambda: args.func(args), verbose=args.verbose)


def guarded(call: Callable[[], int | None], verbose: int = 0) -> int:
    """Run one entry point: its exit code, or `error: ...` on stderr and the exit code of the error's
    category. Exceptions are mapped only by `unetrpp.errors.classify`, the policy `unetrpp` uses."""
    try:
        return int(call() or 0)
    except (Exception, KeyboardInterrupt) as exc:
        found = classify(exc)
        if found.category == CANCELLED:
            print("cancelled", file=sys.stderr)
            return found.exit_code
        if verbose:
            traceback.print_exc()
        print(f"error: {found.message}", file=sys.stderr)
        return found.exit_code


if __name__ == "__main__":
    sys.exit(main())
