"""`unetrpp models`: list installed models and the catalogue; install (download, package file or
official checkpoint) and remove models in the cache (UNETRPP_HOME, default ~/.unetrpp)."""

from __future__ import annotations

import argparse
import json

from ..network import VARIANTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list, install and remove models",
        description=(
            "Without an action: list the installed models and the catalogue. Models live in "
            "$UNETRPP_HOME/models (default ~/.unetrpp/models)."
        ),
    )
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.add_argument("--catalogue", help="catalogue file (default: Resources/models.json)")
    p.set_defaults(func=run_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    inst = actions.add_parser(
        "install",
        help="install a model: catalogue name, package folder/.zip, or official checkpoint",
        description=(
            "Install a model into the cache. A catalogue name is downloaded and verified by SHA256 "
            "before it is unpacked; a package folder or .zip is checked the same way (manifest and "
            "weights SHA256). With --official VARIANT the file is an official UNETR++ checkpoint "
            "that is imported safely (no arbitrary unpickling)."
        ),
    )
    inst.add_argument("source", metavar="PATH_OR_NAME")
    inst.add_argument("--official", metavar="VARIANT", choices=[*VARIANTS, "tumor", "btcv"],
                      help="the file is an official UNETR++ checkpoint of this variant")
    inst.add_argument("--overwrite", action="store_true", help="replace an installed model of the same name")
    inst.add_argument("--catalogue", help="catalogue file (default: Resources/models.json)")
    inst.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                      help="download progress: terminal bar, JSON lines on stdout, or nothing")
    inst.set_defaults(func=run_install)

    rm = actions.add_parser("remove", help="remove an installed model")
    rm.add_argument("name")
    rm.set_defaults(func=run_remove)


def _catalogue(args: argparse.Namespace):
    from .. import catalogue

    return catalogue.load_catalogue(args.catalogue) if args.catalogue else catalogue.load_catalogue()


def run_list(args: argparse.Namespace) -> int:
    from .. import catalogue

    installed = catalogue.installed_models()
    bundled = catalogue.bundled_models()
    entries = _catalogue(args)
    if args.json:
        print(json.dumps({
            "home": str(catalogue.home()),
            "installed": [m.to_dict() for m in installed],
            "bundled": [m.to_dict() for m in bundled],
            "catalogue": [dict(e.to_dict(), installed=catalogue.installed_path(e.name) is not None) for e in entries],
        }, indent=2))
        return 0
    print(f"Installed models ({catalogue.models_dir()}):")
    if not installed:
        print("  (none)")
    for m in installed:
        print(f"  {m.name:24s} {m.version:8s} {m.title}")
        if m.broken:  # listed so the user can see and remove it; the others still work
            print(f"  {'':24s} BROKEN, cannot be used: {m.problem}")
            print(f"  {'':24s} remove it with: unetrpp models remove {m.name}")
            continue
        print(f"  {'':24s} inputs: {', '.join(m.inputs)}; {len(m.labels)} labels; {m.size / 1e6:.1f} MB")
    if bundled:
        print(f"\nBundled with UNETR++ ({catalogue.bundled_models_dir()}):")
    for m in bundled:
        print(f"  {m.name:24s} {m.version:8s} {m.title}")
        if m.broken:
            print(f"  {'':24s} BROKEN, cannot be used: {m.problem}")
    print("\nCatalogue:")
    if not entries:
        print("  (empty)")
    for e in entries:
        size = f"{e.size / 1e6:.0f} MB" if e.size else "size unknown"
        how = "download" if e.downloadable else "import from file"
        print(f"  {e.name:24s} {e.version:8s} {e.title} [{how}; {size}]")
        if not e.downloadable:
            print(f"  {'':24s} {e.install_hint}")
    return 0


def run_install(args: argparse.Namespace) -> int:
    from .. import catalogue
    from ..progress import JsonLinesSink, TqdmSink, null_sink

    sink = {"json": JsonLinesSink(), "bar": TqdmSink(), "none": null_sink}[args.progress]
    try:
        from pathlib import Path

        entries = _catalogue(args) if args.official is None and not Path(args.source).exists() else None
        path = catalogue.install(args.source, official_variant=args.official, overwrite=args.overwrite,
                                 sink=sink, catalogue=entries)
    except BaseException as exc:
        if args.progress == "json":  # the last line carries the category, as every entry point's does
            from ..errors import classify
            from ..progress import Event

            c = classify(exc)
            sink(Event("error", kind=type(exc).__name__, category=c.category, message=c.message))
        raise
    finally:
        if isinstance(sink, TqdmSink):
            sink.close()
    if args.progress == "json":
        from ..progress import Event

        sink(Event("done", outputs={"model": str(path)}))
    else:
        print(f"installed {path.name} at {path}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from .. import catalogue

    path = catalogue.remove_model(args.name)
    print(f"removed {args.name} ({path})")
    return 0
