"""Post-training static int8 quantization of a package's ONNX export (`unetrpp quantize`).

    record = quantize_package("my-model", calibration=["ct1.nii.gz", "ct2/"], held_out=["ct3.nii.gz"])

1. The float32 graph: the package's stored export (`unetrpp export-onnx --into-package`), made and
   stored first when the package has none (or only a stale one).
2. Calibration windows: each calibration scan goes through the engine's own path, a
   `SegmentRequest` read and preprocessed exactly as `Segmenter.segment` does (the manifest's
   plan), and is cut into windows as the sliding window cuts it (`unetrpp.predict`: same starts,
   same zero padding); at most `max_windows` of them, spread evenly over all scans' windows.
3. ONNX Runtime's `quantize_static` (QDQ format: QuantizeLinear/DequantizeLinear pairs that
   OpenVINO and ONNX Runtime both execute as int8; int8 weights per output channel in 7 bits
   (`REDUCE_RANGE`), uint8 activations, MinMax calibration; the convolutions and matrix
   products). The result is stored beside the float32 graph as `model-int8.onnx`
   (`unetrpp.package.store_export`).
4. Agreement: every calibration scan and every held-out scan is segmented by the Segmenter with
   the same backend at float32 and at int8 (`--precision int8`), and the share of equal labels on
   the input grid (all voxels, and the voxels either run labels as foreground) plus the per-label
   Dice of int8 against float32 is recorded in the manifest (`exports.onnx_int8.agreement`),
   where `unetrpp segment --precision int8` reports it from.

int8 is never a default: only `--precision int8` runs it. Needs `onnxruntime` (its quantization
tool) and `onnx`; no other dependency.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RequestError
from ..progress import Event, ProgressSink, StepTimer, null_sink
from . import BackendError, is_installed

log = logging.getLogger(__name__)

#: the operators quantized: the convolutions and matrix products (the network's arithmetic); norms,
#: softmax and additions stay float32 (as OpenVINO and ONNX Runtime run them fastest anyway)
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: activation type: QUInt8 (asymmetric). QInt8 (ONNX Runtime's S8S8) does not compile in OpenVINO
#: 2026.4's CPU plugin ("Check 'any_of(scale.size(), OC, 1U)' failed" in its post-op composer)
ACTIVATIONS = "QUInt8"
#: 7-bit weights: CPUs without VNNI multiply u8 x s8 with VPMADDUBSW, whose 16-bit sums saturate
#: with full-range weights. Measured on the demo model, held-out example CT, AVX2 EPYC: labels equal
#: to float32 99.43 % (OpenVINO) and 98.47 % (ONNX Runtime) without, 99.80 % and 99.79 % with.
REDUCE_RANGE = True
#: calibration windows used at most (ONNX Runtime's MinMax calibration keeps a window's activations)
DEFAULT_MAX_WINDOWS = 32


def _need_onnxruntime() -> None:
    if not is_installed("onnxruntime"):
        raise BackendError("int8 quantization uses ONNX Runtime's quantization tool: pip install 'unetrpp[onnx]' "
                           "(or: pip install onnxruntime onnx)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BackendError("int8 quantization needs the onnx package: pip install onnx") from None


def _scan_name(scan: Any) -> str:
    return Path(str(scan)).name or str(scan)


def preprocessed_scans(model: Any, scans: Sequence[Any], *, sink: ProgressSink = null_sink) -> list[tuple[str, np.ndarray]]:
    """(name, preprocessed (C, D, H, W) float32 volume) of each scan, through the Segmenter's own
    request, reading and preprocessing (no second implementation)."""
    from ..preprocess import preprocess
    from ..request import SegmentRequest
    from ..segmenter import _read_inputs

    out = []
    for scan in scans:
        sink(Event("stage", stage="calibration", message=f"reading and preprocessing {_scan_name(scan)}"))
        request = SegmentRequest.build(model.manifest, scan)
        images, _ = _read_inputs(request)
        volume, _state = preprocess(images, model.manifest, roi=request.roi)
        out.append((_scan_name(scan), np.ascontiguousarray(volume, dtype=np.float32)))
    return out


def window_positions(volumes: Sequence[np.ndarray], patch: Sequence[int], overlap: float,
                     max_windows: int) -> list[tuple[int, tuple[int, ...]]]:
    """(volume index, window start) of at most `max_windows` sliding windows, evenly spread over
    every volume's windows in order (the sliding window's own starts over the padded volume)."""
    import itertools

    from ..predict import padding_for, window_starts

    every = []
    for i, vol in enumerate(volumes):
        padded, _ = padding_for(vol.shape[1:], patch)
        every += [(i, tuple(s)) for s in itertools.product(*window_starts(padded, patch, overlap))]
    if len(every) <= max_windows:
        return every
    picks = np.linspace(0, len(every) - 1, max_windows).round().astype(int)
    return [every[k] for k in sorted(set(picks.tolist()))]


def cut_window(volume: np.ndarray, start: Sequence[int], patch: Sequence[int]) -> np.ndarray:
    """The window at `start` as the sliding window cuts it: (1, C, *patch), zero outside the volume."""
    from ..predict import _window_slices, padding_for

    size = tuple(volume.shape[1:])
    _, below = padding_for(size, patch)
    src, dst = _window_slices(start, below, size, patch)
    window = np.zeros((1, volume.shape[0], *patch), dtype=np.float32)
    window[(0, slice(None), *dst)] = volume[(slice(None), *src)]
    return window


class _Reader:
    """ONNX Runtime's CalibrationDataReader over the chosen windows, with progress and ETA."""

    def __init__(self, volumes: list[np.ndarray], positions: list[tuple[int, tuple[int, ...]]],
                 patch: Sequence[int], input_name: str, sink: ProgressSink, cancel: Any = None) -> None:
        self.volumes, self.positions, self.patch, self.input_name = volumes, positions, tuple(patch), input_name
        self.timer = StepTimer("calibration", len(positions), sink)
        self.cancel = cancel
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        from ..errors import CancelledError

        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("quantization cancelled by the user")
        if self.i >= len(self.positions):
            return None
        if self.i:
            self.timer.step()
        v, start = self.positions[self.i]
        self.i += 1
        return {self.input_name: cut_window(self.volumes[v], start, self.patch)}

    def rewind(self) -> None:
        self.i = 0


def quantize_onnx(float_onnx: str | os.PathLike[str], out: str | os.PathLike[str], reader: Any, *,
                  activations: str = ACTIVATIONS, reduce_range: bool = REDUCE_RANGE) -> dict[str, Any]:
    """ONNX Runtime's static quantization of `float_onnx` into `out` (QDQ, per-channel int8
    weights, uint8 activations, MinMax); returns the settings for the record."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = {"tool": "onnxruntime.quantization.quantize_static", "onnxruntime": onnxruntime.__version__,
                "format": "QDQ", "per_channel": True, "weight_type": "QInt8", "activation_type": activations,
                "reduce_range": reduce_range,
                "calibrate_method": "MinMax", "op_types": list(QUANTIZED_OPS)}
    source = Path(float_onnx)
    with tempfile.TemporaryDirectory(prefix="unetrpp-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # ONNX Runtime's recommended pre-processing (shape inference, graph optimization)
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
            settings["pre_process"] = "quant_pre_process"
        except Exception as exc:  # optional: quantization works without it
            log.info("quantization pre-processing skipped (%s: %s)", type(exc).__name__, exc)
            prepared = source
        quantize_static(
            str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=getattr(QuantType, activations), reduce_range=reduce_range,
            op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},  # MinMax keeps only per-tensor min/max per window
        )
    return settings


def agreement(model: Any, scans: Sequence[Any], backend: str, *, fast: bool,
              sink: ProgressSink = null_sink) -> list[dict[str, Any]]:
    """Labels of the Segmenter with `backend` at int8 against float32 on each scan (input grid)."""
    from ..request import SegmentRequest
    from ..segmenter import Segmenter

    segmenter = Segmenter(model, device="cpu")
    rows = []
    for scan in scans:
        labels = {}
        for precision in ("f32", "int8"):
            sink(Event("stage", stage="agreement", message=f"{_scan_name(scan)}: segmenting ({backend}, {precision})"))
            request = SegmentRequest.build(model.manifest, scan, fast=fast, backend=backend, precision=precision,
                                           device="cpu")
            labels[precision] = segmenter.run(request).labelmap.array
        rows.append({"scan": _scan_name(scan), **label_agreement(labels["f32"], labels["int8"])})
    return rows


def label_agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Share of equal labels (all voxels; voxels either labels as foreground) and per-label Dice."""
    a, b = np.asarray(reference), np.asarray(other)
    fg = (a != 0) | (b != 0)
    dice = {}
    for value in sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0}):
        x, y = a == value, b == value
        dice[str(int(value))] = round(float(2 * (x & y).sum() / max(int(x.sum() + y.sum()), 1)), 5)
    return {"labels_equal": float((a == b).mean()),
            "foreground_equal": float((a[fg] == b[fg]).mean()) if fg.any() else 1.0,
            "voxels": int(a.size), "dice_vs_f32": dice}


def quantize_package(model_or_path: Any, calibration: Sequence[Any], *, held_out: Sequence[Any] = (),
                     max_windows: int = DEFAULT_MAX_WINDOWS, overwrite: bool = False, fast: bool = True,
                     sink: ProgressSink = null_sink, cancel: Any = None) -> dict[str, Any]:
    """Quantize a package folder's network to int8 from calibration scans and store it in the
    package (see the module docstring). Returns the stored record (with the agreement)."""
    from ..errors import OutputExistsError, PackageError
    from ..package import Model, load, store_export, stored_export, update_export_record

    _need_onnxruntime()
    if not calibration:
        raise RequestError("give at least one calibration scan (--calibration SCAN [SCAN ...])")
    if max_windows < 1:
        raise RequestError(f"--max-windows {max_windows} must be at least 1")
    model = model_or_path if isinstance(model_or_path, Model) else load(model_or_path)
    if not Path(model.path).is_dir():
        raise PackageError(f"{model.path}: exports are stored in a package folder; install the zip first "
                           "(unetrpp models install PACKAGE.zip) and quantize the installed model")
    if "onnx_int8" in model.manifest.exports and not overwrite:
        raise OutputExistsError(f"{model.path} already stores an int8 export; pass --overwrite to replace it")
    for scan in [*calibration, *held_out]:  # every input checked before minutes of work
        from ..request import SegmentRequest

        SegmentRequest.build(model.manifest, scan)
    started = time.perf_counter()
    stored = stored_export(model.path, "onnx")
    if stored is None or stored.stale:
        from ..commands.export_onnx import export_into_package

        sink(Event("stage", stage="export", message="exporting the float32 graph into the package first"))
        export_into_package(model, overwrite=True)
        stored = stored_export(model.path, "onnx")
    assert stored is not None and not stored.stale
    patch = tuple(model.manifest.network_config.patch_size)
    overlap = model.manifest.inference_defaults.overlap
    scans = preprocessed_scans(model, calibration, sink=sink)
    positions = window_positions([v for _, v in scans], patch, overlap, max_windows)
    sink(Event("stage", stage="calibration", message=f"{len(positions)} window(s) of {'x'.join(map(str, patch))} "
                                                     f"from {len(scans)} scan(s)"))
    reader = _Reader([v for _, v in scans], positions, patch, "image", sink, cancel)
    with tempfile.TemporaryDirectory(prefix="unetrpp-int8-") as tmp:
        out = Path(tmp) / "model-int8.onnx"
        settings = quantize_onnx(stored.path, out, reader)
        if reader.i:
            reader.timer.step()
        from .onnx_export import onnx_info

        info = onnx_info(out)
        settings.update(windows=len(positions), scans=len(scans), overlap=overlap)
        record = {"opset": info["opset"], "input_shape": info["inputs"]["image"], "source_sha256": stored.sha256,
                  "quantization": settings}
        entry = store_export(model.path, "onnx_int8", out, record, overwrite=overwrite)
    del scans
    from . import choose_backend

    backend = choose_backend("auto", "cpu", "int8").name
    result = {"backend": backend, "mirroring": not fast,
              "measured": "labels of the Segmenter at int8 against float32, same backend, on the input grid",
              "calibration": agreement(model, calibration, backend, fast=fast, sink=sink)}
    if held_out:
        result["held_out"] = agreement(model, held_out, backend, fast=fast, sink=sink)
    for part in ("calibration", "held_out"):
        if part in result:
            result[f"{part}_min_labels_equal"] = min(r["labels_equal"] for r in result[part])
    entry = update_export_record(model.path, "onnx_int8", {"agreement": result})
    log.info("int8 export stored in %s in %.0f s", model.path, time.perf_counter() - started)
    worst = result.get("held_out_min_labels_equal", result["calibration_min_labels_equal"])
    if worst < 0.99:
        sink(Event("log", level="warning", message=f"int8 labels agree with float32 on only {worst:.2%} of the voxels "
                                                   "of a scan; check the segmentations before using --precision int8"))
    return entry


__all__ = ["quantize_package", "quantize_onnx", "label_agreement", "window_positions", "cut_window",
           "preprocessed_scans", "DEFAULT_MAX_WINDOWS"]
