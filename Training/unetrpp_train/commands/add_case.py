"""`unetrpp-train add-case --set DIR --case NAME --image CHANNEL=PATH ... --label PATH --labels JSON`:
store one (corrected) case in a named case set in the nnU-Net raw layout (imagesTr/, labelsTr/,
dataset.json, provenance/<case>.json), ready for `unetrpp-train finetune --data DIR`.

The images and the label must lie on one grid; --labels names the values of the label file
({"liver": 6, "spleen": 1}); names are matched to the set's labels by name, the stored file uses the
set's numbering. Prints the case's record as one JSON object on stdout. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _json_arg(text: str, what: str) -> Any:
    from ..caseset import CaseSetError

    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CaseSetError(f"{what} is not valid JSON ({exc}): {text[:80]!r}") from None


def run(args: argparse.Namespace) -> int:
    from ..caseset import CaseSetError, add_case

    images: dict[str, str] = {}
    for item in args.image:
        channel, sep, path = item.partition("=")
        if not sep or not channel or not path:
            raise CaseSetError(f"--image expects CHANNEL=PATH (e.g. ct=scan.nrrd), got {item!r}")
        if channel in images:
            raise CaseSetError(f"--image names channel {channel!r} twice")
        images[channel] = path
    labels = _json_arg(args.labels, "--labels")
    if not isinstance(labels, dict):
        raise CaseSetError('--labels must be a JSON object of name -> value, e.g. {"liver": 6}')
    source = _json_arg(args.source, "--source") if args.source else None
    if source is not None and not isinstance(source, dict):
        raise CaseSetError("--source must be a JSON object")
    record = add_case(args.set, args.case, images, args.label, labels, name=args.name, source=source,
                      overwrite=args.overwrite)
    print(json.dumps(record))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("add-case", help="store a (corrected) case in a case set (nnU-Net raw layout)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", required=True, metavar="DIR", help="case set folder (created when new)")
    p.add_argument("--case", required=True, metavar="NAME", help="case name (letters, digits, . _ -)")
    p.add_argument("--image", required=True, action="append", metavar="CHANNEL=PATH",
                   help="one input volume per channel, in the model's input order (e.g. ct=scan.nrrd)")
    p.add_argument("--label", required=True, metavar="PATH", help="label map on the images' grid")
    p.add_argument("--labels", required=True, metavar="JSON",
                   help='the label map\'s values by name: {"liver": 6, "spleen": 1} (or @file.json)')
    p.add_argument("--name", help="the set's name in dataset.json (default: the folder name)")
    p.add_argument("--source", metavar="JSON", help='provenance to keep, e.g. {"model": "demo-abdomen-ct", '
                   '"corrected_in": "3D Slicer"} (or @file.json)')
    p.add_argument("--overwrite", action="store_true", help="replace a case of the same name")
    p.set_defaults(func=run)
    return p
