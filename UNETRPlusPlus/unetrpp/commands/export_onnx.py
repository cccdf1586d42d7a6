"""`unetrpp export-onnx`: a model package's network as an ONNX file (for ONNX Runtime, OpenVINO,
Triton; docs/deploy.md)."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a model package's network to ONNX",
        description=(
            "Export the network of a model package (folder, .zip or installed name) to ONNX: opset 17, "
            "input 'image' (N, C, D, H, W) float32 with D, H, W the package's patch size, output "
            "'logits' (N, K, D, H, W); only N (the batch of windows) is dynamic. The export is checked "
            "against PyTorch on one window (ONNX Runtime when installed) unless --no-check. Softmax, "
            "sliding window and mirroring are not part of the graph (see docs/deploy.md)."
        ),
    )
    p.add_argument("model", help="model package (folder or .zip) or installed model name")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..catalogue import resolve_model
    from ..errors import OutputExistsError
    from ..package import load
    from ..backends.onnx_export import check_export, export_onnx, onnx_info

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} already exists; choose another path or pass --overwrite")
    model = load(resolve_model(args.model))
    export_onnx(model.network, out)
    result: dict = {"model": model.manifest.name, "output": str(out), "bytes": out.stat().st_size}
    try:
        result.update(onnx_info(out))
    except ImportError:
        pass
    if not args.no_check:
        result["check"] = check_export(model.network, out)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {out} ({result['bytes'] / 1e6:.1f} MB) for {result['model']}")
        check = result.get("check")
        if check:
            print(f"checked with {check['runtime']}: max relative error {check['relative_error']:.2e} "
                  f"(limit {check['limit']:.0e})", file=sys.stdout)
    return 0
