"""The `unetrpp-train` command. Each sub-command lives in its own module `unetrpp_train.commands.<name>`
with `add_parser(subparsers)` that registers it and sets `func`; modules are discovered, so a new
command needs no change here. Commands listed in ORDER come first in `--help`, any others follow
alphabetically.

Exit codes (as `unetrpp`): 0 ok; 1 no command given; 2 an error caused by the input (`UnetrppError`, and
the errors unreadable, missing, malformed or hostile files raise: OSError, ValueError, EOFError,
RecursionError, UnicodeError, zip and pickle errors), message on stderr as `error: ...` (the traceback
only with -v); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import pkgutil
import sys
import traceback
import zipfile
from typing import Callable

from unetrpp.errors import UnetrppError

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
        description="Train UNETR++ on the benchmark datasets: convert -> plan -> train -> evaluate -> export.",
    )
    parser.add_argument("--version", action="version", version=f"unetrpp-train {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        module = importlib.import_module(f"{__package__}.commands.{name}")
        module.add_parser(sub)
    return parser


#: exceptions that bad input (a missing, unreadable, truncated, malformed or hostile file) raises
INPUT_ERRORS = (OSError, ValueError, EOFError, RecursionError, UnicodeError, zipfile.BadZipFile, pickle.UnpicklingError,
                MemoryError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(exc, MemoryError):
        return "not enough memory for this input"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {text}"


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
    """Run one entry point: its exit code, or `error: ...` on stderr and 2 for an error the input caused."""
    try:
        return int(call() or 0)
    except UnetrppError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
