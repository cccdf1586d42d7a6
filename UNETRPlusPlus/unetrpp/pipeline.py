"""One segmentation in one call, for scripts: `segment(model, inputs, SegmentOptions(...))`.

A thin front of the one path: `SegmentOptions` become a `unetrpp.request.SegmentRequest` and an
`unetrpp.outputs.OutputPlan` (checked before the model is loaded), then
`Segmenter.segment(request, plan)` does the work. Use the Segmenter directly to segment several
images with one loaded model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import RequestError
from .image import Image
from .manifest import read_manifest
from .outputs import LABELMAP_SUFFIXES, SEGMENTATION_SUFFIXES, OutputPlan, default_report_path
from .progress import CancelToken, ProgressSink, null_sink
from .request import SegmentRequest, parse_roi
from .segmenter import SegmentationResult, Segmenter, resolve_input_names, statistics

__all__ = ["SegmentOptions", "SegmentationResult", "segment", "parse_roi", "output_plan", "default_report_path",
           "resolve_input_names", "statistics", "LABELMAP_SUFFIXES", "SEGMENTATION_SUFFIXES"]


@dataclass
class SegmentOptions:
    """How to run one segmentation. `output=None` computes without writing anything."""

    output: Path | str | None = None
    report: Path | str | None = None  # default: <output without suffix>.report.json
    probabilities: Path | str | None = None  # confidence map (probability of the chosen label)
    device: str = "auto"
    overlap: float | None = None  # None: the manifest's default
    fast: bool = False  # no mirroring test-time augmentation
    roi: Sequence[Sequence[float]] | None = None  # ((xmin, ymin, zmin), (xmax, ymax, zmax)) LPS mm
    batch_size: int | None = None
    amp: bool = True
    backend: str = "auto"  # torch, openvino, onnxruntime or auto (unetrpp.backends)
    precision: str = "auto"  # f32, bf16, f16, int8 (the package's int8 export) or auto
    overwrite: bool = False
    series_uid: str | None = None  # for DICOM folders holding several series
    strict: bool = False  # refuse a run whose input checks fail (quality)
    sink: ProgressSink = null_sink
    cancel: CancelToken | None = None


def output_plan(options: SegmentOptions, request: SegmentRequest | None = None) -> OutputPlan | None:
    """The checked output paths of `options` (None: compute only), before any work is done."""
    if options.output is None:
        if options.probabilities or options.report:
            raise RequestError("--probabilities and --report need an output path (-o)")
        return None
    return OutputPlan.create(options.output, options.report, options.probabilities, options.overwrite,
                             request=request)


def segment(
    model: "Segmenter | os.PathLike[str] | str | object",
    inputs: Mapping[str, Image | str | os.PathLike[str]] | Image | str | os.PathLike[str],
    options: SegmentOptions | None = None,
) -> SegmentationResult:
    """Segment `inputs` (name -> Image or path; a single image/path for one-input models) with
    `model` (a Segmenter, a loaded Model, a package path or an installed model's name)."""
    options = options or SegmentOptions()
    if isinstance(model, Segmenter):
        manifest = model.manifest
    elif hasattr(model, "manifest"):  # a loaded Model
        manifest = model.manifest  # type: ignore[attr-defined]
    else:
        from .catalogue import resolve_model

        model = resolve_model(model)  # type: ignore[arg-type]
        manifest = read_manifest(model)  # cheap, no torch: the request is checked before loading
    request = SegmentRequest.build(manifest, inputs, roi=options.roi, overlap=options.overlap, fast=options.fast,
                                   series_uid=options.series_uid, device=options.device, backend=options.backend,
                                   precision=options.precision,
                                   strict=options.strict, with_confidence=options.probabilities is not None)
    plan = output_plan(options, request)  # refuse bad or existing outputs before loading anything
    segmenter = model if isinstance(model, Segmenter) else Segmenter(
        model, options.device, batch_size=options.batch_size, amp=options.amp)  # type: ignore[arg-type]
    return segmenter.segment(request, plan, sink=options.sink, cancel=options.cancel)
