"""`Segmenter`: a model package loaded once, then used for any number of segmentations.

Every way into the engine uses it (the `unetrpp segment` CLI, the Slicer module's worker process,
batch and server use, `pipeline.segment` for scripts), so all give identical results:

    from unetrpp import Segmenter
    from unetrpp.outputs import OutputPlan

    seg = Segmenter("synapse-official", device="auto")          # resolve, verify, load: once
    plan = OutputPlan.create("ct.seg.nrrd")                      # check output paths before work
    result = seg.segment("ct.nii.gz", plan, fast=True, sink=print, cancel=stop_event)
    result.labelmap, result.report, result.outputs               # Image, dict, {kind: path}

- `Segmenter(model, device="auto", batch_size=None, amp=True)`: `model` is a loaded `Model`, a
  package path or an installed model's name. Raises `PackageError`/`ManifestError`/
  `IntegrityError` for a bad package, `DeviceUnavailableError` for a device that is not there.
- `run(inputs, roi=None, overlap=None, fast=False, series_uid=None, with_confidence=False,
  sink=null_sink, cancel=None) -> SegmentationResult`: read -> preprocess -> predict ->
  postprocess, nothing written. `inputs`: {input name or alias: Image or path}, or one Image/path
  for one-input models. `roi`: ((xmin, ymin, zmin), (xmax, ymax, zmax)) in LPS mm. `sink` receives
  `progress.Event`s ("stage", "progress", "log"); `cancel` is any object with `is_set()` (a
  `threading.Event`), checked between stages and sliding windows (raises `CancelledError`).
- `write(result, plan, cancel=None) -> dict[kind, path]`: the outputs of `plan` (see
  `unetrpp.outputs`), atomically and together; fills `result.outputs` and the report's timing.
- `segment(inputs, plan=None, **run_options)`: `run`, then `write` when `plan` is given, then a
  "done" event with the outputs and the report.

The Segmenter holds no state between runs other than the loaded network, so one instance may
serve runs one after another (not concurrently: one network, one device).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CancelledError, InputImageError, UnetrppError
from .image import Image, check_geometry, read_image
from .manifest import Manifest
from .outputs import OutputPlan, protected_sources, write_outputs
from .package import Model, load
from .preprocess import PreprocessState, labels_to_input_grid, preprocess
from .progress import CancelToken, Event, ProgressSink, null_sink
from .segmentation import remove_small_components, segment_statistics

log = logging.getLogger(__name__)

STAGE_KEYS = ("read", "preprocess", "predict", "postprocess", "write")
Roi = Sequence[Sequence[float]]
Inputs = Mapping[str, "Image | str | os.PathLike[str]"] | Image | str | os.PathLike[str]


@dataclass
class SegmentationResult:
    labelmap: Image
    report: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    confidence: Image | None = None
    state: PreprocessState | None = None
    warnings: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict, repr=False)  # raw seconds per stage


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("segmentation cancelled by the user")


# Inputs -----------------------------------------------------------------------------------
def _inputs_help(manifest: Manifest) -> str:
    parts = []
    for s in manifest.inputs:
        others = [a for a in s.aliases if a != s.name]
        parts.append(s.name + (f" (also {', '.join(others)})" if others else "") + f": {s.description or s.modality}")
    return "; ".join(parts)


def resolve_input_names(given: Sequence[str], manifest: Manifest) -> dict[str, str]:
    """Map user-given input names (manifest names or their aliases, case-insensitive) to manifest
    names. Raises InputImageError listing the expected names when they do not fit."""
    specs = manifest.inputs
    lookup: dict[str, str] = {}
    for s in specs:
        for key in (s.name, *s.aliases):
            lookup.setdefault(key.lower(), s.name)
    mapping: dict[str, str] = {}
    for g in given:
        name = lookup.get(g.lower())
        if name is None:
            raise InputImageError(f"model {manifest.name!r} has no input named {g!r}; its inputs are {_inputs_help(manifest)}")
        if name in mapping.values():
            raise InputImageError(f"input {name!r} was given twice; model {manifest.name!r} takes {_inputs_help(manifest)}")
        mapping[g] = name
    missing = [s.name for s in specs if s.name not in mapping.values()]
    if missing:
        raise InputImageError(
            f"model {manifest.name!r} takes {len(specs)} input(s), missing: {', '.join(missing)}. "
            f"Give each as --input NAME=PATH; its inputs are {_inputs_help(manifest)}"
        )
    return mapping


def named_inputs(inputs: Inputs | None, manifest: Manifest) -> Mapping[str, Any]:
    """One image/path for a one-input model -> {its input name: image}; a mapping as given."""
    names = [i.name for i in manifest.inputs]
    if isinstance(inputs, Mapping):
        if not inputs:
            raise InputImageError(
                f"no input given; model {manifest.name!r} takes "
                + (f"one input (INPUT or --input {names[0]}=PATH)" if len(names) == 1
                   else f"--input NAME=PATH for each of: {', '.join(names)}"))
        return inputs
    if inputs is None:
        return named_inputs({}, manifest)
    if len(names) != 1:
        raise InputImageError(
            f"model {manifest.name!r} takes {len(names)} inputs; give each as --input NAME=PATH with "
            f"NAME in: {', '.join(names)}"
        )
    return {names[0]: inputs}


def _read_inputs(inputs: Mapping[str, Any], manifest: Manifest,
                 series_uid: str | None) -> tuple[dict[str, Image], dict[str, Any]]:
    mapping = resolve_input_names(list(inputs), manifest)
    images: dict[str, Image] = {}
    described: dict[str, Any] = {}
    for given, value in inputs.items():
        name = mapping[given]
        if isinstance(value, Image):  # in memory: the geometry checks read_image does for files
            check_geometry(value, f"input {given!r}")
            img = value
        else:
            img = read_image(value, series_uid=series_uid)
        images[name] = img
        described[name] = {
            "source": img.meta.get("source", "(in memory)"),
            "size": list(img.size),
            "spacing": list(img.spacing),
            "origin": list(img.origin),
            "direction": img.direction.ravel().tolist(),
        }
    return {n: images[n] for n in (s.name for s in manifest.inputs)}, described


def check_roi(roi: Roi | None, given: str | None = None) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """A region of interest ((xmin, ymin, zmin), (xmax, ymax, zmax)) in LPS mm as floats, or None.
    Refuses anything else, including NaN and infinite bounds (which no comparison catches)."""
    if roi is None:
        return None
    shown = given if given is not None else repr(roi)
    try:
        lo, hi = (tuple(float(v) for v in corner) for corner in roi)
    except (TypeError, ValueError):
        lo = hi = ()
    if len(lo) != 3 or len(hi) != 3:
        raise InputImageError(f"region of interest {shown}: give six numbers xmin,ymin,zmin,xmax,ymax,zmax in mm (LPS, as DICOM/ITK)")
    if not all(math.isfinite(v) for v in (*lo, *hi)):
        raise InputImageError(f"region of interest {shown}: every bound must be a finite number of mm (not NaN or infinite)")
    if any(b <= a for a, b in zip(lo, hi)):
        raise InputImageError(f"region of interest {shown}: each max must be greater than its min")
    return lo, hi  # type: ignore[return-value]


# Report -----------------------------------------------------------------------------------
def statistics(labelmap: Image, manifest: Manifest) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's "segments" ({value, name, voxels, volume_ml} per manifest label) and "regions"
    ({name, labels, voxels, volume_ml} per union of labels), from `segment_statistics`."""
    segments: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for entry in segment_statistics(labelmap, manifest):
        kind = entry.pop("kind")
        (segments if kind == "label" else regions).append(entry)
    return segments, regions


def _timing(timing: dict[str, float]) -> dict[str, float]:
    out = {k: round(timing.get(k, 0.0), 4) for k in STAGE_KEYS}
    if "load_model" in timing:
        out["load_model"] = round(timing["load_model"], 4)
    out["total"] = round(timing["total"], 4)
    return out


def _roi_json(roi: Roi | None) -> list[list[float]] | None:
    return None if roi is None else [[float(v) for v in roi[0]], [float(v) for v in roi[1]]]


# The Segmenter ----------------------------------------------------------------------------
class Segmenter:
    """A model package loaded once (see the module docstring for the whole API)."""

    def __init__(self, model: Model | str | os.PathLike[str], device: str = "auto", *,
                 batch_size: int | None = None, amp: bool = True) -> None:
        from .predict import select_device

        self.device = select_device(device)
        self._load_seconds: float | None = None
        if not isinstance(model, Model):
            from .catalogue import resolve_model

            t = time.perf_counter()
            model = load(resolve_model(model))
            self._load_seconds = time.perf_counter() - t  # reported once, by the first run
        self.model = model.to(self.device)
        self.batch_size = batch_size
        self.amp = amp

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    def run(self, inputs: Inputs, *, roi: Roi | None = None, overlap: float | None = None, fast: bool = False,
            series_uid: str | None = None, with_confidence: bool = False, sink: ProgressSink = null_sink,
            cancel: CancelToken | None = None) -> SegmentationResult:
        """Segment without writing anything (see the module docstring)."""
        manifest = self.manifest
        roi = check_roi(roi)
        defaults = manifest.inference_defaults
        overlap = defaults.overlap if overlap is None else float(overlap)
        if not 0 <= overlap < 1:
            raise UnetrppError(f"overlap {overlap} must be at least 0 and below 1")
        mirror_axes = () if fast else defaults.mirror_axes
        inputs = named_inputs(inputs, manifest)
        timing: dict[str, float] = {}
        if self._load_seconds is not None:
            timing["load_model"], self._load_seconds = self._load_seconds, None
        started = time.perf_counter() - timing.get("load_model", 0.0)

        def stage(name: str, message: str) -> float:
            check_cancel(cancel)
            sink(Event("stage", stage=name, message=message))
            return time.perf_counter()

        t = stage("read", f"reading {len(inputs)} input(s)")
        images, described = _read_inputs(inputs, manifest, series_uid)
        timing["read"] = time.perf_counter() - t

        t = stage("preprocess", "crop, resample and normalise (model plan)")
        volume, state = preprocess(images, manifest, roi=roi)
        del images
        for w in state.warnings:
            sink(Event("log", level="warning", message=w))
        timing["preprocess"] = time.perf_counter() - t

        import torch

        t = stage("predict", f"sliding window on {self.device} over {'x'.join(map(str, volume.shape[1:]))} voxels")
        tensor = torch.from_numpy(volume)
        del volume
        probabilities = self.model.predict(  # the package's defaults (Gaussian sigma), mirroring unless fast
            tensor, device=self.device, fast=fast, overlap=overlap, batch_size=self.batch_size, amp=self.amp,
            sink=sink, cancel=cancel)
        del tensor
        timing["predict"] = time.perf_counter() - t

        t = stage("postprocess", "labels back onto the input grid")
        mapped = labels_to_input_grid(probabilities, state, with_confidence=with_confidence)
        del probabilities
        labelmap, confidence = mapped if with_confidence else (mapped, None)
        removed = remove_small_components(labelmap.array, list(defaults.largest_component_labels))
        labelmap.meta.update(source_of=str(described[manifest.inputs[0].name]["source"]), model=manifest.name)
        segments, regions = statistics(labelmap, manifest)
        timing["postprocess"] = time.perf_counter() - t
        timing["write"] = 0.0
        timing["total"] = time.perf_counter() - started

        report: dict[str, Any] = {
            "model": {"name": manifest.name, "version": manifest.version, "weights_sha256": manifest.weights_sha256,
                      "title": manifest.title, "path": str(self.model.path)},
            "device": str(self.device),
            "inputs": described,
            "options": {"overlap": overlap, "mirror_axes": list(mirror_axes), "roi": _roi_json(roi),
                        "largest_component_labels": list(defaults.largest_component_labels)},
            "preprocessing": state.summary(),
            "warnings": list(state.warnings),
            "timing_s": _timing(timing),
            "segments": segments,
            "regions": regions,
        }
        if removed:
            report["largest_component_removed_voxels"] = {str(k): v for k, v in removed.items()}
        return SegmentationResult(labelmap=labelmap, report=report, confidence=confidence, state=state,
                                  warnings=list(state.warnings), timing=timing)

    def write(self, result: SegmentationResult, plan: OutputPlan, *, cancel: CancelToken | None = None,
              sink: ProgressSink = null_sink) -> dict[str, str]:
        """Write the outputs of `plan` atomically and together (see `unetrpp.outputs`)."""
        timing = result.timing
        check_cancel(cancel)
        sink(Event("stage", stage="write", message=f"writing {plan.segmentation}"))
        t = time.perf_counter()
        before_total = timing.get("total", 0.0)

        def finish() -> None:  # after every file is staged: the report holds the real write time
            timing["write"] = time.perf_counter() - t
            timing["total"] = before_total + timing["write"]
            result.report["timing_s"] = _timing(timing)
            check_cancel(cancel)

        result.outputs = write_outputs(plan, result.labelmap, self.manifest, result.report, result.confidence,
                                       before_commit=finish)
        return result.outputs

    def segment(self, inputs: Inputs, plan: OutputPlan | None = None, *, sink: ProgressSink = null_sink,
                cancel: CancelToken | None = None, **run_options: Any) -> SegmentationResult:
        """`run`, then `write` when `plan` is given, then the "done" event."""
        if plan is not None:  # again: time has passed since the caller built it; now the model is known too
            plan.check(protected_sources(inputs, self.model.path))
        result = self.run(inputs, with_confidence=plan is not None and plan.probabilities is not None,
                          sink=sink, cancel=cancel, **run_options)
        if plan is not None:
            self.write(result, plan, cancel=cancel, sink=sink)
        sink(Event("done", outputs=result.outputs, report=result.report))
        log.info("segmented with %s in %.1f s", self.manifest.name, result.report["timing_s"]["total"])
        return result
