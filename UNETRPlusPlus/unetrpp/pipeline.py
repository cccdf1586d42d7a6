"""One segmentation, end to end: read -> preprocess -> predict -> postprocess -> write.

`segment(model, inputs, options)` is what the CLI (`unetrpp segment`), the worker process of the
Slicer module (`python -m unetrpp.worker`) and scripts call. It reports progress as
`unetrpp.progress` events, can be cancelled between sliding windows and between stages, times
every stage, and never leaves a partial output: every file is written into a temporary folder next
to its target and renamed into place; existing outputs are refused unless `overwrite`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .errors import CancelledError, InputImageError, OutputExistsError, UnetrppError
from .image import Image, image_suffix, read_image
from .manifest import Manifest
from .package import Model, load
from .preprocess import PreprocessState, labels_to_input_grid, preprocess
from .progress import CancelToken, Event, ProgressSink, null_sink
from .segmentation import remove_small_components, segment_statistics, write_labelmap, write_seg_nrrd

log = logging.getLogger(__name__)

#: Output formats by suffix: a Slicer segmentation, or a plain labelmap.
SEGMENTATION_SUFFIXES = (".seg.nrrd",)
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
STAGE_KEYS = ("read", "preprocess", "predict", "postprocess", "write")


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
    overwrite: bool = False
    series_uid: str | None = None  # for DICOM folders holding several series
    sink: ProgressSink = null_sink
    cancel: CancelToken | None = None


@dataclass
class SegmentationResult:
    labelmap: Image
    report: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    confidence: Image | None = None
    state: PreprocessState | None = None
    warnings: list[str] = field(default_factory=list)


# Paths ------------------------------------------------------------------------------------
def default_report_path(output: Path) -> Path:
    suffix = image_suffix(output)
    stem = output.name[: -len(suffix)] if suffix and output.name.lower().endswith(suffix) else output.stem
    return output.with_name(stem + ".report.json")


def _output_plan(options: SegmentOptions) -> dict[str, Path]:
    """The files this run will write, checked before any work is done."""
    if options.output is None:
        if options.probabilities or options.report:
            raise UnetrppError("--probabilities and --report need an output path (-o)")
        return {}
    out = Path(options.output)
    suffix = image_suffix(out)
    if suffix not in SEGMENTATION_SUFFIXES + LABELMAP_SUFFIXES:
        raise UnetrppError(
            f"output {out}: unknown format {suffix or '(no suffix)'!r}; use .seg.nrrd (Slicer segmentation "
            "with names, colours and terminology), .nii.gz, .nii or .nrrd (labelmap)"
        )
    plan = {"segmentation": out, "report": Path(options.report) if options.report else default_report_path(out)}
    if options.probabilities:
        prob = Path(options.probabilities)
        if image_suffix(prob) not in (".nii.gz", ".nii", ".nrrd", ".mha"):
            raise UnetrppError(f"probability map {prob}: use a .nii.gz, .nii, .nrrd or .mha file name")
        plan["probabilities"] = prob
    if len({p.resolve() for p in plan.values()}) != len(plan):
        raise UnetrppError(f"output paths must differ: {', '.join(map(str, plan.values()))}")
    for kind, path in plan.items():
        if path.exists() and not options.overwrite:
            raise OutputExistsError(f"{kind} output {path} already exists; choose another path or pass --overwrite")
        if path.exists() and path.is_dir():
            raise OutputExistsError(f"{kind} output {path} is a folder; give a file name")
        if not path.parent.exists():
            raise UnetrppError(f"the folder of {kind} output {path} does not exist; create it first")
    return plan


class _Staging:
    """A temporary folder beside each target; files are renamed into place only on `commit`."""

    def __init__(self) -> None:
        self.dirs: dict[Path, Path] = {}
        self.files: list[tuple[Path, Path]] = []

    def path_for(self, target: Path) -> Path:
        parent = target.parent.resolve()
        if parent not in self.dirs:
            self.dirs[parent] = Path(tempfile.mkdtemp(prefix=".unetrpp-partial-", dir=parent))
        staged = self.dirs[parent] / target.name
        self.files.append((staged, target))
        return staged

    def commit(self) -> None:
        for staged, target in self.files:
            if not staged.exists():
                raise RuntimeError(f"writer did not create {staged}")
        for staged, target in self.files:
            os.replace(staged, target)

    def cleanup(self) -> None:
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)


# Inputs -----------------------------------------------------------------------------------
def resolve_input_names(given: Sequence[str], manifest: Manifest) -> dict[str, str]:
    """Map user-given input names (manifest names or their aliases, case-insensitive) to manifest
    names. Raises InputImageError listing the expected names when they do not fit."""
    specs = manifest.inputs
    expected = [s.name for s in specs]
    lookup: dict[str, str] = {}
    for s in specs:
        for key in (s.name, *s.aliases):
            lookup.setdefault(key.lower(), s.name)
    help_names = "; ".join(
        f"{s.name}" + (f" (also {', '.join(a for a in s.aliases if a != s.name)})" if [a for a in s.aliases if a != s.name] else "")
        + f": {s.description or s.modality}"
        for s in specs
    )
    mapping: dict[str, str] = {}
    for g in given:
        name = lookup.get(g.lower())
        if name is None:
            raise InputImageError(f"model {manifest.name!r} has no input named {g!r}; its inputs are {help_names}")
        if name in mapping.values():
            raise InputImageError(f"input {name!r} was given twice; model {manifest.name!r} takes {help_names}")
        mapping[g] = name
    missing = [n for n in expected if n not in mapping.values()]
    if missing:
        raise InputImageError(
            f"model {manifest.name!r} takes {len(expected)} input(s), missing: {', '.join(missing)}. "
            f"Give each as --input NAME=PATH; its inputs are {help_names}"
        )
    return mapping


def _read_inputs(inputs: Mapping[str, Image | str | os.PathLike[str]], manifest: Manifest,
                 series_uid: str | None) -> tuple[dict[str, Image], dict[str, Any]]:
    mapping = resolve_input_names(list(inputs), manifest)
    images: dict[str, Image] = {}
    described: dict[str, Any] = {}
    for given, value in inputs.items():
        name = mapping[given]
        img = value if isinstance(value, Image) else read_image(value, series_uid=series_uid)
        images[name] = img
        described[name] = {
            "source": img.meta.get("source", "(in memory)"),
            "size": list(img.size),
            "spacing": list(img.spacing),
            "origin": list(img.origin),
            "direction": img.direction.ravel().tolist(),
        }
    return {n: images[n] for n in (s.name for s in manifest.inputs)}, described


# Postprocessing ---------------------------------------------------------------------------
def statistics(labelmap: Image, manifest: Manifest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's "segments" ({value, name, voxels, volume_ml} per manifest label) and "regions"
    ({name, labels, voxels, volume_ml} per union of labels), from `segment_statistics`."""
    segments: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for entry in segment_statistics(labelmap, manifest):
        kind = entry.pop("kind")
        (segments if kind == "label" else regions).append(entry)
    return segments, regions


# The pipeline -----------------------------------------------------------------------------
def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("segmentation cancelled by the user")


def segment(
    model: Model | str | os.PathLike[str],
    inputs: Mapping[str, Image | str | os.PathLike[str]] | Image | str | os.PathLike[str],
    options: SegmentOptions | None = None,
) -> SegmentationResult:
    """Segment `inputs` (name -> Image or path; a single image/path for one-input models) with
    `model` (a loaded Model, a package path or an installed model's name)."""
    options = options or SegmentOptions()
    sink = options.sink
    timing: dict[str, float] = {}
    started = time.perf_counter()
    plan = _output_plan(options)  # refuse existing outputs before any work

    def stage(name: str, message: str) -> float:
        _check_cancel(options.cancel)
        sink(Event("stage", stage=name, message=message))
        return time.perf_counter()

    if not isinstance(model, Model):
        from .catalogue import resolve_model

        t = time.perf_counter()
        model = load(resolve_model(model))
        timing["load_model"] = time.perf_counter() - t
    manifest = model.manifest
    if not isinstance(inputs, Mapping):
        inputs = {manifest.inputs[0].name: inputs}

    t = stage("read", f"reading {len(inputs)} input(s)")
    images, described = _read_inputs(inputs, manifest, options.series_uid)
    timing["read"] = time.perf_counter() - t

    t = stage("preprocess", "crop, resample and normalise (model plan)")
    volume, state = preprocess(images, manifest, roi=options.roi)
    for w in state.warnings:
        sink(Event("log", level="warning", message=w))
    timing["preprocess"] = time.perf_counter() - t

    from .predict import predict_probabilities, select_device

    device = select_device(options.device)
    inference = manifest.inference
    overlap = inference.get("overlap", 0.5) if options.overlap is None else float(options.overlap)
    if not 0 <= overlap < 1:
        raise UnetrppError(f"overlap {overlap} must be at least 0 and below 1")
    mirror_axes = () if options.fast else tuple(inference.get("mirror_axes", (0, 1, 2)))
    t = stage("predict", f"sliding window on {device} over {'x'.join(map(str, volume.shape[1:]))} voxels")
    import torch

    tensor = torch.from_numpy(volume)
    del volume
    probabilities = predict_probabilities(
        model.network, tensor, patch_size=tuple(manifest.network_config.patch_size), overlap=overlap,
        mirror_axes=mirror_axes, sigma_scale=inference.get("gaussian_sigma_scale", 0.125),
        batch_size=options.batch_size, device=device, amp=options.amp, sink=sink, cancel=options.cancel,
    )
    del tensor
    timing["predict"] = time.perf_counter() - t

    t = stage("postprocess", "labels back onto the input grid")
    want_conf = "probabilities" in plan
    result = labels_to_input_grid(probabilities, state, with_confidence=want_conf)
    del probabilities
    labelmap, confidence = result if want_conf else (result, None)
    removed = remove_small_components(labelmap.array, inference.get("largest_component_labels", []))
    labelmap.meta.update(source_of=str(described[manifest.inputs[0].name]["source"]), model=manifest.name)
    segments, regions = statistics(labelmap, manifest)
    timing["postprocess"] = time.perf_counter() - t

    report: dict[str, Any] = {
        "model": {"name": manifest.name, "version": manifest.version, "weights_sha256": manifest.weights_sha256,
                  "title": manifest.title, "path": str(model.path)},
        "device": str(device),
        "inputs": described,
        "options": {"overlap": overlap, "mirror_axes": list(mirror_axes), "roi": _roi_json(options.roi),
                    "largest_component_labels": list(inference.get("largest_component_labels", []))},
        "preprocessing": state.summary(),
        "warnings": list(state.warnings),
        "timing_s": {},
        "segments": segments,
        "regions": regions,
    }
    if removed:
        report["largest_component_removed_voxels"] = {str(k): v for k, v in removed.items()}

    outputs: dict[str, str] = {}
    if plan:
        t = stage("write", f"writing {plan['segmentation']}")
        staging = _Staging()
        try:
            _write_segmentation(labelmap, manifest, staging.path_for(plan["segmentation"]))
            if confidence is not None:
                from .image import write_image

                write_image(confidence, staging.path_for(plan["probabilities"]))
            timing["write"] = time.perf_counter() - t
            timing["total"] = time.perf_counter() - started
            report["timing_s"] = _timing(timing)
            report_file = staging.path_for(plan["report"])
            report_file.write_text(json.dumps(report, indent=2) + "\n")
            _check_cancel(options.cancel)
            staging.commit()
        finally:
            staging.cleanup()
        outputs = {k: str(v) for k, v in plan.items()}
    else:
        timing["write"] = 0.0
        timing["total"] = time.perf_counter() - started
        report["timing_s"] = _timing(timing)
    sink(Event("done", outputs=outputs, report=report))
    log.info("segmented with %s in %.1f s", manifest.name, timing["total"])
    return SegmentationResult(labelmap=labelmap, report=report, outputs=outputs, confidence=confidence,
                              state=state, warnings=list(state.warnings))


def _timing(timing: dict[str, float]) -> dict[str, float]:
    out = {k: round(timing.get(k, 0.0), 4) for k in STAGE_KEYS}
    if "load_model" in timing:
        out["load_model"] = round(timing["load_model"], 4)
    out["total"] = round(timing["total"], 4)
    return out


def _roi_json(roi: Sequence[Sequence[float]] | None) -> list[list[float]] | None:
    return None if roi is None else [[float(v) for v in roi[0]], [float(v) for v in roi[1]]]


def _write_segmentation(labelmap: Image, manifest: Manifest, path: Path) -> None:
    if path.name.lower().endswith(SEGMENTATION_SUFFIXES):
        write_seg_nrrd(labelmap, manifest, path, include_regions=True)
    else:
        write_labelmap(labelmap, path)


def parse_roi(text: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """"xmin,ymin,zmin,xmax,ymax,zmax" (LPS mm) -> ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    try:
        v = [float(p) for p in text.replace(";", ",").split(",")]
    except ValueError:
        v = []
    if len(v) != 6:
        raise InputImageError(
            f"--roi {text!r}: give six numbers xmin,ymin,zmin,xmax,ymax,zmax in mm (LPS, as DICOM/ITK)"
        )
    lo, hi = tuple(v[:3]), tuple(v[3:])
    if any(b <= a for a, b in zip(lo, hi)):
        raise InputImageError(f"--roi {text!r}: each max must be greater than its min")
    return lo, hi  # type: ignore[return-value]
