"""`unetrpp quantize`: post-training static int8 quantization of a model package, calibrated on
scans, stored in the package for `--precision int8` (unetrpp.backends.quantize)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="int8 quantization of a model package from calibration scans (for --precision int8)",
        description=(
            "Quantize the network of an installed model package (or package folder) to int8: the "
            "calibration scans are read and preprocessed as `unetrpp segment` does and cut into its "
            "sliding windows; ONNX Runtime's static quantization (QDQ, per-channel int8 weights) makes "
            "model-int8.onnx, stored in the package beside the float32 export (made first if missing). "
            "The labels at int8 are then compared with float32 on every calibration and held-out scan; "
            "the agreement is recorded in model.json and reported by `unetrpp segment --precision int8`. "
            "int8 is never used unless asked for."
        ),
    )
    p.add_argument("model", help="installed model name or model package folder")
    p.add_argument("--calibration", nargs="+", required=True, metavar="SCAN",
                   help="scans (image files or DICOM series folders) like the ones the model will see")
    p.add_argument("--held-out", nargs="+", default=[], metavar="SCAN",
                   help="scans not used for calibration, on which the label agreement is also measured")
    p.add_argument("--max-windows", type=int, default=None,
                   help="calibration windows at most, spread over the scans (default 32)")
    p.add_argument("--mirroring", action="store_true",
                   help="measure the agreement with the model's mirroring (default: without, as --fast)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing int8 export")
    p.add_argument("--json", action="store_true", help="print the stored record as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..backends.quantize import DEFAULT_MAX_WINDOWS, quantize_package
    from ..catalogue import resolve_model
    from ..errors import PackageError
    from ..progress import Event, TqdmSink
    from .segment import _Cancel

    path = resolve_model(args.model)
    if not Path(path).is_dir():
        raise PackageError(f"{path}: exports are stored in a package folder; install the zip first "
                           "(unetrpp models install PACKAGE.zip) and quantize the installed model")
    bar = TqdmSink() if sys.stderr.isatty() else None
    last = [0.0]

    def lines(event: Event) -> None:  # not a terminal: stage lines, and progress every 10 %
        if event.event == "stage":
            print(f"[{event.stage}] {event.message or ''}", file=sys.stderr, flush=True)
        elif event.event == "log":
            print(f"{event.level or 'info'}: {event.message}", file=sys.stderr, flush=True)
        elif event.event == "progress" and (event.fraction or 0) - last[0] >= 0.1:
            last[0] = event.fraction or 0
            eta = f", about {event.eta_s:.0f} s left" if event.eta_s is not None else ""
            print(f"[{event.stage}] {event.done}/{event.total} windows{eta}", file=sys.stderr, flush=True)

    cancel = _Cancel()
    cancel.install()
    try:
        windows = DEFAULT_MAX_WINDOWS if args.max_windows is None else args.max_windows
        record = quantize_package(path, args.calibration, held_out=args.held_out, max_windows=windows,
                                  overwrite=args.overwrite, fast=not args.mirroring, sink=bar or lines, cancel=cancel)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(record))
        return 0
    a = record["agreement"]
    print(f"stored {record['file']} ({record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]}) in {path}: "
          f"{record['quantization']['windows']} calibration window(s) from {record['quantization']['scans']} scan(s)")
    for part in ("calibration", "held_out"):
        for row in a.get(part, []):
            print(f"  {part.replace('_', '-')} {row['scan']}: labels equal to float32 {row['labels_equal']:.4%} "
                  f"(foreground {row['foreground_equal']:.4%})")
    print(f"run it with: unetrpp segment --model {args.model} --precision int8 SCAN -o OUT")
    return 0
