"""`Segmenter`: a model package loaded once, then used for any number of segmentations.

Every way into the engine ends in one call, `Segmenter.segment(request, output_plan)` (the
`unetrpp segment` command, batch, the worker the Slicer module starts, the server's workers,
`pipeline.segment` for scripts), so all give identical results and keep the same rules:

    from unetrpp import Segmenter
    from unetrpp.outputs import OutputPlan

    seg = Segmenter("synapse-official", device="auto")           # resolve, verify, load: once
    request = seg.request("ct.nii.gz", fast=True)                  # validated once (unetrpp.request)
    plan = OutputPlan.create("ct.seg.nrrd", request=request)       # every output rule, before work
    result = seg.segment(request, plan, sink=print, cancel=stop_event)
    result.labelmap, result.report, result.outputs                 # Image, dict, {kind: path}

- `Segmenter(model, device="auto", batch_size=None, amp=True)`: `model` is a loaded `Model`, a
  package path or an installed model's name. Raises `PackageError`/`ManifestError`/
  `IntegrityError` for a bad package, `DeviceUnavailableError` for a device that is not there.
- `request(inputs, **options) -> SegmentRequest`: `SegmentRequest.build` against this model's
  manifest (inputs by name or alias, ROI, overlap, fast, series UID, device, backend, ...).
- `segment(request, plan=None, *, sink, cancel) -> SegmentationResult`: checks the plan again
  (time has passed since it was made; now the model file is known and protected too), reads,
  preprocesses, predicts, postprocesses, writes the plan's files atomically and together, then
  emits the "done" event with the outputs and the report. `plan=None` computes without writing.
  `sink` receives `progress.Event`s ("stage", "progress", "log", "done"); `cancel` is any object
  with `is_set()` (a `threading.Event`), checked between stages and sliding windows (raises
  `CancelledError`).
- The Segmenter alone applies the model's inference defaults (overlap, mirror axes, Gaussian
  sigma, largest-component labels) to what the request leaves open, and builds the optimized
  network (`unetrpp.network.fast`) once per device and dtype, reused by every run.
- `run(request)` and `write(result, plan)` are the two halves of `segment`, kept for the engine's
  own use and tests; entry points call `segment`, which is where the plan's rules are enforced.
  For compatibility `segment`/`run` also take the former form `(inputs, plan, roi=..., fast=...)`
  and build the request themselves.

The Segmenter holds no state between runs other than the loaded (and optimized) network, so one
instance may serve runs one after another (not concurrently: one network per device).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import CancelledError, QualityRefusedError
from .image import Image, check_geometry, read_image
from .manifest import Manifest
from .outputs import OutputPlan, write_outputs
from .package import Model, load
from .preprocess import PreprocessState, SlabLabels, labels_to_input_grid, preprocess
from .progress import CancelToken, Event, ProgressSink, null_sink
from .quality.assess import add_to_report, assess_inputs, assess_result
from .quality.outputs import RunQuality
from .request import SegmentRequest, check_roi  # noqa: F401  (check_roi: re-exported for scripts)
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
    request: SegmentRequest | None = field(default=None, repr=False)  # what was asked
    quality: RunQuality | None = field(default=None, repr=False)  # the checks (issue 19; report["quality"])


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("segmentation cancelled by the user")


# Inputs -----------------------------------------------------------------------------------
def resolve_input_names(given: Sequence[str], manifest: Manifest) -> dict[str, str]:
    """{given name: manifest name}: `Manifest.resolve_inputs` (kept for scripts that import it here)."""
    return manifest.resolve_inputs(list(given))


def _read_inputs(request: SegmentRequest) -> tuple[dict[str, Image], dict[str, Any]]:
    images: dict[str, Image] = {}
    described: dict[str, Any] = {}
    for name, value in request.inputs.items():
        if isinstance(value, Image):  # in memory: the geometry checks read_image does for files
            check_geometry(value, f"input {request.name_of(name)!r}")
            img = value
        else:
            img = read_image(value, series_uid=request.series_uid)
        images[name] = img
        described[name] = {
            "source": img.meta.get("source", "(in memory)"),
            "size": list(img.size),
            "spacing": list(img.spacing),
            "origin": list(img.origin),
            "direction": img.direction.ravel().tolist(),
        }
    return images, described


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
    if "quality" in timing:  # the checks' own seconds, inside read..postprocess (issue 19)
        out["quality"] = round(timing["quality"], 4)
    out["total"] = round(timing["total"], 4)
    return out


def _int8_report(model: Model, backend: dict[str, Any]) -> dict[str, Any]:
    """With precision int8: the int8 export used and its measured agreement with float32."""
    if backend.get("precision") != "int8":
        return {}
    record = model.manifest.exports.get("onnx_int8", {})
    agreement = record.get("agreement", {})
    return {"int8_export": {"sha256": record.get("sha256"), "quantization": record.get("quantization", {}).get("tool"),
                            "labels_equal_to_float32": {k: agreement[k] for k in ("calibration_min_labels_equal",
                                                                                 "held_out_min_labels_equal")
                                                        if k in agreement}}}


def _roi_json(roi: Roi | None) -> list[list[float]] | None:
    return None if roi is None else [[float(v) for v in roi[0]], [float(v) for v in roi[1]]]


def _slab_labels(state: PreprocessState, manifest: Manifest, with_confidence: bool) -> SlabLabels | None:
    """For a large grid (float16 stitching) on the default export path: the labels, the confidence and
    the quality maps made slab by slab while the windows run (`predict.predict_slabs`), so that the
    (K, D, H, W) probabilities are never all in memory (a full abdominal CT: 0.5 GB instead of
    1.2 GB). Small grids (float32, the parity cases) and other export paths: None (the whole volume)."""
    import torch

    from .predict import _stitch_dtype
    from .quality.assess import temperature_of
    from .quality.structures import entropy_step

    classes = int(manifest.network_config.out_channels)
    if not SlabLabels.applies(state) or _stitch_dtype(classes, state.network_shape) == torch.float32:
        return None
    return SlabLabels(state, classes, with_confidence=with_confidence,
                      quality=(temperature_of(manifest), entropy_step(state.network_shape)))


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
        self._networks: dict[tuple[str, Any], Any] = {}  # (device, dtype) -> inference module

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    # Requests -----------------------------------------------------------------------------
    def request(self, inputs: Inputs, **options: Any) -> SegmentRequest:
        """`SegmentRequest.build` against this model's manifest (see `unetrpp.request`)."""
        return SegmentRequest.build(self.manifest, inputs, **options)

    def _request(self, request: SegmentRequest | Inputs, legacy: dict[str, Any]) -> SegmentRequest:
        if isinstance(request, SegmentRequest):
            if legacy:
                raise TypeError(f"options {', '.join(sorted(legacy))} belong in the request, not in this call")
            if request.model is not None and request.model != self.manifest.name:
                from .errors import RequestError

                raise RequestError(f"the request was built for model {request.model!r}, not {self.manifest.name!r}")
            return request
        return self.request(request, **legacy)  # the former form: (inputs, roi=..., fast=..., ...)

    def _device(self, request: SegmentRequest) -> Any:
        if request.device == "auto":
            return self.device
        from .predict import select_device

        return select_device(request.device)

    def network_for(self, device: Any) -> Any:
        """The inference module on `device`: the optimized network (unetrpp.network.fast), built
        once per device and dtype and kept; the faithful network where the fast path does not
        apply (MPS, a dtype other than float32) or cannot be built."""
        import torch

        network = self.model.network
        dtype = next((p.dtype for p in network.parameters() if p.is_floating_point()), torch.float32)
        key = (str(device), dtype)
        module = self._networks.get(key)
        if module is None:
            network.to(device).eval()
            module = network
            if device.type in ("cpu", "cuda") and dtype == torch.float32:
                try:
                    module = self.model.optimized()
                except Exception as exc:  # the faithful network always works; never fail on the fast path
                    log.warning("fast inference path unavailable (%s); using the standard network", exc)
            self._networks[key] = module
        return module

    # The one path ---------------------------------------------------------------------------
    def segment(self, request: SegmentRequest | Inputs, plan: OutputPlan | None = None, *,
                sink: ProgressSink = null_sink, cancel: CancelToken | None = None,
                **legacy: Any) -> SegmentationResult:
        """The one call of every entry point (see the module docstring)."""
        request = self._request(request, legacy)
        if plan is not None:  # again: time has passed since the caller built it; now the model is known too
            plan.check([self.model.path], request=request)
        result = self._run(request, sink, cancel, with_confidence=request.with_confidence or (
            plan is not None and plan.wants_confidence),
            keep_image=plan is not None and any(kind == "report_html" for kind, _ in plan.extra))
        if plan is not None:
            self.write(result, plan, cancel=cancel, sink=sink)
        sink(Event("done", outputs=result.outputs, report=result.report))
        log.info("segmented with %s in %.1f s", self.manifest.name, result.report["timing_s"]["total"])
        return result

    def run(self, request: SegmentRequest | Inputs, *, sink: ProgressSink = null_sink,
            cancel: CancelToken | None = None, **legacy: Any) -> SegmentationResult:
        """Segment without writing anything (the first half of `segment`)."""
        request = self._request(request, legacy)
        return self._run(request, sink, cancel, with_confidence=request.with_confidence)

    def _run(self, request: SegmentRequest, sink: ProgressSink, cancel: CancelToken | None, *,
             with_confidence: bool, keep_image: bool = False) -> SegmentationResult:
        manifest = self.manifest
        defaults = manifest.inference_defaults  # applied here, and only here
        overlap = defaults.overlap if request.overlap is None else request.overlap
        mirror_axes = () if request.fast else tuple(defaults.mirror_axes)
        device = self._device(request)
        timing: dict[str, float] = {}
        if self._load_seconds is not None:
            timing["load_model"], self._load_seconds = self._load_seconds, None
        started = time.perf_counter() - timing.get("load_model", 0.0)

        def stage(name: str, message: str) -> float:
            check_cancel(cancel)
            sink(Event("stage", stage=name, message=message))
            return time.perf_counter()

        if request.precision == "int8":  # explicit: refused before any work when the package cannot run it
            from .backends import check_int8

            check_int8(self.model.network, request.backend, device)
        t = stage("read", f"reading {len(request.inputs)} input(s)")
        images, described = _read_inputs(request)
        timing["read"] = time.perf_counter() - t
        t = time.perf_counter()
        checks = assess_inputs(images, manifest)  # issue 19: against the model card, before any work
        for c in checks:
            if c.status != "ok":
                sink(Event("log", level="warning", message=f"quality {c.name} {c.status}: {c.message}"))
        failed = [c.message for c in checks if c.status == "fail"]
        if request.strict and failed:
            raise QualityRefusedError("refused (--strict): " + " ".join(failed))
        first_image = images[manifest.inputs[0].name] if keep_image else None
        timing["quality"] = time.perf_counter() - t

        t = stage("preprocess", "crop, resample and normalise (model plan)")
        volume, state = preprocess(images, manifest, roi=request.roi)
        del images
        for w in state.warnings:
            sink(Event("log", level="warning", message=w))
        timing["preprocess"] = time.perf_counter() - t

        import torch

        from .predict import plan_backend, predict_probabilities

        patch = tuple(manifest.network_config.patch_size)
        backend = plan_backend(self.model.network, request.backend, device, volume.shape, patch, overlap, mirror_axes,
                               manifest.weights_sha256, precision=request.precision)
        t = stage("predict", f"sliding window on {device} ({backend.name}) over {'x'.join(map(str, volume.shape[1:]))} "
                             "voxels")
        tensor = torch.from_numpy(volume)
        del volume
        predicted: dict[str, Any] = {}
        slabs = _slab_labels(state, manifest, with_confidence)
        probabilities = predict_probabilities(
            self.network_for(device) if backend.name == "torch" else self.model.network, tensor, patch_size=patch,
            overlap=overlap, mirror_axes=mirror_axes, sigma_scale=defaults.gaussian_sigma_scale,
            batch_size=self.batch_size, device=device, amp=self.amp, sink=sink, cancel=cancel, optimize=False,
            backend=backend, weights_sha256=manifest.weights_sha256, report=predicted, consumer=slabs)
        del tensor
        timing["predict"] = time.perf_counter() - t

        t = stage("postprocess", "labels back onto the input grid")
        if slabs is not None:  # the labels were made slab by slab during the prediction
            labelmap, confidence = slabs.finish()
        else:
            mapped = labels_to_input_grid(probabilities, state, with_confidence=with_confidence)
            labelmap, confidence = mapped if with_confidence else (mapped, None)
        removed = remove_small_components(labelmap.array, list(defaults.largest_component_labels))
        labelmap.meta.update(source_of=str(described[manifest.inputs[0].name]["source"]), model=manifest.name)
        segments, regions = statistics(labelmap, manifest)
        timing["postprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        result_quality = assess_result(labelmap, probabilities, state, manifest, segments,
                                       maps=None if slabs is None else slabs.uncertainty_maps())
        del probabilities, slabs
        if result_quality is not None:
            labelmap.meta["segment_quality"] = result_quality.segments  # -> .seg.nrrd segment tags
        timing["quality"] += time.perf_counter() - t
        timing["write"] = 0.0
        timing["total"] = time.perf_counter() - started

        report: dict[str, Any] = {
            "model": {"name": manifest.name, "version": manifest.version, "weights_sha256": manifest.weights_sha256,
                      "title": manifest.title, "path": str(self.model.path)},
            "device": str(device),
            "backend": {**predicted.get("backend", {}), "stitch_dtype": predicted.get("stitch_dtype"),
                        **_int8_report(self.model, predicted.get("backend", {}))},
            "inputs": described,
            "options": {"overlap": overlap, "mirror_axes": list(mirror_axes), "roi": _roi_json(request.roi),
                        "largest_component_labels": list(defaults.largest_component_labels)},
            "preprocessing": state.summary(),
            "warnings": list(state.warnings),
            "timing_s": _timing(timing),
            "segments": segments,
            "regions": regions,
        }
        if removed:
            report["largest_component_removed_voxels"] = {str(k): v for k, v in removed.items()}
        add_to_report(report, checks, result_quality)
        return SegmentationResult(labelmap=labelmap, report=report, confidence=confidence, state=state,
                                  warnings=list(state.warnings), timing=timing, request=request,
                                  quality=RunQuality(checks, result_quality, first_image))

    def write(self, result: SegmentationResult, plan: OutputPlan, *, cancel: CancelToken | None = None,
              sink: ProgressSink = null_sink) -> dict[str, str]:
        """Write the outputs of `plan` atomically and together (the second half of `segment`; the
        plan's checks are `segment`'s: entry points call that)."""
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
                                       before_commit=finish, result=result)
        return result.outputs
