"""`unetrpp segment`: segment a CT/MRI file or DICOM folder with a model package."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..errors import InputImageError
from ..progress import Event, JsonLinesSink, TqdmSink, logging_sink

EPILOG = """\
examples:
  unetrpp segment --model synapse-official ct.nii.gz -o ct.seg.nrrd
  unetrpp segment --model ./brats-pkg --input flair=f.nii.gz --input t1=t1.nii.gz \\
      --input t1gd=t1c.nii.gz --input t2=t2.nii.gz -o tumour.seg.nrrd --fast
  unetrpp segment --model ./pkg dicom_folder/ -o seg.nii.gz --roi -120,-250,-900,150,30,-700

exit codes: 0 ok (quality flags are in the table and report), 2 user error (message on stderr),
3 refused by --strict (an input quality check failed), 130 cancelled.
"""


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino", "onnxruntime"),
                   help="what runs the network: auto (OpenVINO on a CPU when installed, else PyTorch; PyTorch on "
                        "GPUs), torch, openvino (pip install 'unetrpp[cpu]') or onnxruntime; the report says which")
    p.add_argument("--precision", default="auto", choices=("auto", "f32", "bf16", "f16", "int8"),
                   help="network precision: auto (float32), bf16/f16 (openvino/onnxruntime), or int8: the package's "
                        "int8 export (make it with unetrpp quantize; explicit only, labels measured against float32)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="input image file or DICOM series folder (one-input models)")
    p.add_argument("--model", "-m", required=True, help="model package (folder or .zip) or installed model name")
    p.add_argument("--input", "-i", dest="named_inputs", action="append", default=[], metavar="NAME=PATH",
                   help="a named input for multi-input models (repeat for each; names from the model)")
    p.add_argument("-o", "--output", required=True,
                   help="output: .seg.nrrd (segments with names/colours/terminology) or .nii.gz/.nii/.nrrd/.mha labelmap")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap in [0, 1) (default: model's, 0.5)")
    add_backend_argument(p)
    p.add_argument("--fast", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    p.add_argument("--roi", metavar="XMIN,YMIN,ZMIN,XMAX,YMAX,ZMAX",
                   help="restrict the work to this physical box (mm, LPS as DICOM/ITK); outside stays background")
    p.add_argument("--probabilities", metavar="PATH", help="also write the confidence map (probability of the chosen label)")
    p.add_argument("--report", metavar="PATH", help="JSON report path (default: <output stem>.report.json)")
    p.add_argument("--report-html", metavar="PATH", help="also write a one-page HTML report: quality checks, volumes, "
                   "flags and key images per structure (docs/quality.md)")
    p.add_argument("--uncertainty", metavar="PATH", help="also write the calibrated uncertainty map (predictive entropy, "
                   "percent; .nii.gz/.nii/.nrrd/.mha)")
    p.add_argument("--strict", action="store_true", help="refuse (exit 3) a scan whose input quality checks fail "
                   "(e.g. an MRI given to a CT model) instead of segmenting it with a flag")
    p.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar: progress bar on the terminal; json: JSON lines on stdout (for the Slicer module)")
    p.add_argument("--series-uid", metavar="UID", help="DICOM SeriesInstanceUID to read from a folder holding several series")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: automatic)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--server", metavar="URL", help="run on a segmentation server (`unetrpp serve`), e.g. https://gpu-host:8890")
    p.add_argument("--token-file", metavar="FILE", help="with --server: file holding the token (else $UNETRPP_SERVER_TOKEN)")
    p.add_argument("--ca-file", metavar="PEM", help="with an https:// --server: the certificate authority that signed "
                   "its certificate (else $UNETRPP_SERVER_CA_FILE, else the system's trusted authorities)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment a volume (NIfTI, NRRD, MHA or DICOM folder) with a model package",
        description="Segment a CT/MRI volume with a UNETR++ model package: official preprocessing, "
        "sliding-window inference, labels back on the input's exact grid.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> Any:
    """The positional INPUT, or {NAME: PATH} from the --input options (names are checked against
    the model by the Segmenter)."""
    if args.input and args.named_inputs:
        raise InputImageError("give either one positional INPUT or --input NAME=PATH options, not both")
    if args.input:
        return args.input
    out: dict[str, str] = {}
    for item in args.named_inputs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputImageError(f"--input {item!r}: write it as NAME=PATH")
        if name in out:
            raise InputImageError(f"--input {name} is given twice")
        out[name] = path
    return out


class _Cancel:
    """First SIGINT/SIGTERM asks the pipeline to stop at the next window; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.event.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def quality_outputs(args: argparse.Namespace) -> dict[str, str]:
    """--report-html / --uncertainty as extra output kinds of the plan (unetrpp.quality.outputs)."""
    wanted = {"report_html": getattr(args, "report_html", None), "uncertainty": getattr(args, "uncertainty", None)}
    wanted = {k: v for k, v in wanted.items() if v}
    if wanted:
        from ..quality import outputs  # noqa: F401  (registers the kinds)
    return wanted


def _print_summary(result, out=sys.stdout) -> None:
    rep = result.report
    print(f"model {rep['model']['name']} {rep['model']['version']} on {rep['device']}", file=out)
    for kind, path in result.outputs.items():
        print(f"wrote {kind}: {path}", file=out)
    rows = [(s["value"], s["name"], s["voxels"], s["volume_ml"], s.get("quality") or {}) for s in rep["segments"]]
    rows += [("", f"{r['name']} (labels {'+'.join(map(str, r['labels']))})", r["voxels"], r["volume_ml"], {})
             for r in rep["regions"]]
    width = max([len(str(r[1])) for r in rows] + [7])
    print(f"{'label':>5}  {'segment':<{width}}  {'voxels':>10}  {'volume mL':>11}  quality", file=out)
    for v, name, n, ml, q in rows:  # a volume cut by the field of view is a lower bound: >=
        shown = (">= " if q.get("partial") else "") + f"{ml:.2f}"
        print(f"{v!s:>5}  {name:<{width}}  {n:>10}  {shown:>11}  {q.get('status', '')}", file=out)
        for reason in q.get("reasons", []):
            print(f"{'':>5}  {'':<{width}}  {'':>10}  {'':>11}    - {reason}", file=out)
    quality = rep.get("quality")
    if quality:
        print(f"quality: {quality['status']}", file=out)
        for c in quality["checks"]:
            if c["status"] != "ok":  # the structures' reasons are in the table above
                message = ("doubtful: " + ", ".join(c["doubtful"])) if c.get("doubtful") else c["message"]
                print(f"  {c['status']}: {c['name']}: {message}", file=out)
    t = rep["timing_s"]
    print("time (s): " + ", ".join(f"{k} {t[k]:.2f}" for k in ("read", "preprocess", "predict", "postprocess", "write", "total")), file=out)
    for w in result.warnings:
        print(f"warning: {w}", file=out)


def run(args: argparse.Namespace, force_json: bool = False) -> int:
    """The surface (argparse) -> one `SegmentRequest` and one `OutputPlan` -> `Segmenter.segment`.
    Errors propagate to `cli.run_command` (which maps them through `errors.classify`); with JSON
    progress the last line is the error event carrying the category."""
    from ..catalogue import resolve_model
    from ..outputs import OutputPlan
    from ..package import read_manifest
    from ..request import SegmentRequest, parse_roi
    from ..segmenter import Segmenter

    progress = "json" if force_json else args.progress
    bar = None
    if progress == "json":
        sink = JsonLinesSink(sys.stdout)
    elif progress == "bar" and sys.stderr.isatty():
        bar = TqdmSink()
        sink = bar
    elif progress == "bar":
        def sink(event: Event) -> None:  # not a terminal: stage lines only
            if event.event == "stage":
                print(f"[{event.stage}] {event.message or ''}", file=sys.stderr, flush=True)
            elif event.event == "log":
                print(f"{(event.level or 'info')}: {event.message}", file=sys.stderr, flush=True)
    else:
        sink = logging_sink
    cancel = _Cancel()
    cancel.install()
    try:
        inputs = _inputs(args)
        if args.server:
            from ..dicom_seg import check_output_for_inputs
            from ..request import check_options

            check_options(roi=args.roi, overlap=args.overlap, fast=args.fast, series_uid=args.series_uid)
            check_output_for_inputs(args.output, inputs)  # DICOM SEG needs a DICOM series input
            result = run_remote(args, inputs, parse_roi(args.roi) if args.roi else None, sink, cancel)
            return _finish(result, progress, bar)
        model_path = resolve_model(args.model)
        request = SegmentRequest.build(read_manifest(model_path), inputs, roi=args.roi, overlap=args.overlap,
                                       fast=args.fast, series_uid=args.series_uid, device=args.device,
                                       backend=args.backend, precision=args.precision,
                                       with_confidence=args.probabilities is not None,
                                       strict=bool(getattr(args, "strict", False)))
        plan = OutputPlan.create(args.output, args.report, args.probabilities, args.overwrite,  # before loading
                                 protected=[model_path], request=request, extra=quality_outputs(args))
        segmenter = Segmenter(model_path, args.device, batch_size=args.batch_size)
        result = segmenter.segment(request, plan, sink=sink, cancel=cancel)
    except BaseException as exc:
        if progress == "json":
            from ..errors import classify

            c = classify(exc)
            sink(Event("error", kind=type(exc).__name__, category=c.category, message=c.message))
        raise
    finally:
        if bar is not None:
            bar.close()
    return _finish(result, progress, None)


def run_remote(args: argparse.Namespace, inputs: Any, roi: Any, sink: Any, cancel: Any) -> Any:
    """`--server`: the remote client (unetrpp.client) runs the job on a segmentation server."""
    from ..client import run_segment_command

    return run_segment_command(args, inputs, roi, sink, cancel)


def _finish(result, progress: str, bar) -> int:
    if bar is not None:
        bar.close()
    if progress != "json":
        _print_summary(result)
    return 0


__all__ = ["add_parser", "add_arguments", "run"]
