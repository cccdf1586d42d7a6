"""`unetrpp export-onnx`: a model package's network as an ONNX file (for ONNX Runtime, OpenVINO,
Triton; docs/deploy.md), or stored inside the package (`--into-package`) for the engine's own
openvino/onnxruntime backends."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a model package's network to ONNX (a file, or stored in the package)",
        description=(
            "Export the network of a model package (folder, .zip or installed name) to ONNX: opset 17, "
            "input 'image' (N, C, D, H, W) float32 with D, H, W the package's patch size, output "
            "'logits' (N, K, D, H, W); only N (the batch of windows) is dynamic. The export is checked "
            "against PyTorch on one window (ONNX Runtime when installed) unless --no-check. Softmax, "
            "sliding window and mirroring are not part of the graph (see docs/deploy.md). "
            "--into-package stores it in the package folder (model.onnx, recorded in model.json with its "
            "SHA256, opset, input shape and check), where --backend openvino/onnxruntime use it instead of "
            "exporting into the cache."
        ),
    )
    p.add_argument("model", help="model package (folder or .zip) or installed model name")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="ONNX file to write")
    where.add_argument("--into-package", action="store_true",
                       help="store the export in the package folder (model.onnx, recorded in model.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file or stored export")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch (not with --into-package)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def export_into_package(model, *, overwrite: bool = False) -> dict:
    """Export `model` (a loaded package folder), check it against PyTorch and store it in the package
    (`unetrpp.package.store_export`). Returns the manifest record. Also used by the training package."""
    import tempfile
    from pathlib import Path

    import torch

    from ..backends import BackendError, is_installed
    from ..backends.onnx_export import EXPORT_REVISION, check_export, export_onnx, onnx_info
    from ..errors import OutputExistsError
    from ..package import store_export

    if "onnx" in model.manifest.exports and not overwrite:  # before the export's minutes
        raise OutputExistsError(f"{model.path} already stores an ONNX export; pass --overwrite to replace it")
    if not (is_installed("onnxruntime") or is_installed("openvino")):
        raise BackendError("storing an ONNX export needs OpenVINO or ONNX Runtime to check it against PyTorch: "
                           "pip install 'unetrpp[cpu]'")
    with tempfile.TemporaryDirectory(prefix="unetrpp-export-") as tmp:
        out = export_onnx(model.network, Path(tmp) / "model.onnx")
        check = check_export(model.network, out)
        info = onnx_info(out)
        record = {"opset": info["opset"], "input_shape": info["inputs"]["image"], "check": check,
                  "exporter": {"torch": torch.__version__, "export_revision": EXPORT_REVISION}}
        return store_export(model.path, "onnx", out, record, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..catalogue import resolve_model
    from ..errors import OutputExistsError, PackageError
    from ..package import load
    from ..backends.onnx_export import check_export, export_onnx, onnx_info

    if args.into_package:
        if args.no_check:
            raise PackageError("--into-package stores only checked exports: drop --no-check")
        path = resolve_model(args.model)
        if not Path(path).is_dir():
            raise PackageError(f"{path}: exports are stored in a package folder; install the zip first "
                               "(unetrpp models install PACKAGE.zip) and export into the installed model")
        model = load(path)
        record = export_into_package(model, overwrite=args.overwrite)
        result = {"model": model.manifest.name, "package": str(model.path), "stored": record}
        if args.json:
            print(json.dumps(result))
        else:
            check = record["check"]
            print(f"stored {record['file']} ({record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]}) in "
                  f"{model.path}; checked with {check['runtime']}: max relative error "
                  f"{check['relative_error']:.2e} (limit {check['limit']:.0e})")
        return 0
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
        if check and check.get("runtime"):
            print(f"checked with {check['runtime']}: max relative error {check['relative_error']:.2e} "
                  f"(limit {check['limit']:.0e})")
    return 0
