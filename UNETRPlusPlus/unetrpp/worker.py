"""The process the Slicer module starts: `python -m unetrpp.worker ARGS` runs `unetrpp segment ARGS`
with JSON-lines progress on stdout (one object per line, see `unetrpp.progress`).

The last line is `{"event": "done", ...}` or `{"event": "error", "category": ..., "kind": ...,
"message": ...}` (category and message from `unetrpp.errors.classify`, the one error policy).
Exit codes as the CLI (`cli.run_command`): 0 ok, 2 input/model/output/environment/resource
error, 3 quality refusal, 130 cancelled (SIGTERM or SIGINT: the run stops at the next sliding
window and leaves no partial output), 1 internal error. Logging goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from .commands.segment import add_arguments

    p = argparse.ArgumentParser(prog="python -m unetrpp.worker",
                                description="unetrpp segment with JSON-lines progress (for the Slicer module)")
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from .commands.segment import run

    from .cli import run_command

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return run_command(lambda a: run(a, force_json=True), args)


if __name__ == "__main__":
    sys.exit(main())
