"""Sub-commands of the `unetrpp` CLI: each module has `add_parser(subparsers)` which registers
its parser and sets `func` to a callable taking the parsed args and returning an exit code."""
