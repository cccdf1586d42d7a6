"""The ONNX export run by OpenVINO or ONNX Runtime, as a callable on torch tensors."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import BackendError
from .onnx_export import INPUT_NAME, cache_dir

log = logging.getLogger(__name__)

_OV_PRECISION = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


#: OpenVINO inference streams when the caller does not say (UNETRPP_OPENVINO_STREAMS overrides).
#: 1: one request on all threads (lowest latency, least memory). 2 streams of one thread each run
#: two windows (or mirror flips) at once: ~1.1x the throughput on 2 cores, but each stream keeps its
#: own intermediate tensors (+0.4 GB for the full-size synapse network), so it is an explicit option.
DEFAULT_STREAMS = 1


def default_streams() -> int:
    text = os.environ.get("UNETRPP_OPENVINO_STREAMS", "").strip()
    try:
        return max(1, int(text)) if text else DEFAULT_STREAMS
    except ValueError:
        raise BackendError(f"UNETRPP_OPENVINO_STREAMS={text!r} must be a whole number of streams") from None


class OpenVINONetwork:
    """An ONNX export compiled by OpenVINO for the CPU at batch 1 and the package's patch (a static
    shape: OpenVINO's CPU plugin compiles the dynamic-batch graph of UNETR++ wrongly, and a static
    shape is faster). The items of a larger batch run one after another on all threads, or with
    `streams` > 1 concurrently, one stream per item (threads split between the streams; the results
    are the same). `parallel_items` tells the caller how many items to hand over at once. The
    compiled blob is cached on disk (OpenVINO's CACHE_DIR under $UNETRPP_HOME/cache/openvino), so a
    second process skips compilation."""

    def __init__(self, onnx_path: str | os.PathLike[str], input_shape: Sequence[int], *, precision: str = "f32",
                 threads: int = 1, streams: int | None = None) -> None:
        import openvino as ov

        self.input_shape = tuple(int(n) for n in input_shape)
        self.precision = precision
        self.streams = max(1, min(int(default_streams() if streams is None else streams), int(threads)))
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendError("this CPU has no native bfloat16 (OpenVINO lists no BF16 capability); use precision f32")
        blob_cache = cache_dir() / "openvino"
        blob_cache.mkdir(parents=True, exist_ok=True)
        model = core.read_model(str(onnx_path))
        model.reshape({0: [1, *self.input_shape]})
        config = {
            "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
            "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[precision],
            "CACHE_DIR": str(blob_cache),
        }
        if self.streams > 1:
            config["NUM_STREAMS"] = self.streams
        self.compiled = core.compile_model(model, "CPU", config)
        del model
        self.output_shape = tuple(int(n) for n in self.compiled.output(0).shape[1:])
        self.parallel_items = self.streams
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None
        self._lock = threading.Lock()
        log.info("OpenVINO %s: %s compiled for the CPU (%s, %d thread(s), %d stream(s))", ov.get_version(),
                 Path(onnx_path).name, precision, threads, self.streams)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input (batch, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = np.empty((arr.shape[0], *self.output_shape), dtype=np.float32)
        with self._lock:
            if self.queue is None or arr.shape[0] == 1:
                for i, item in enumerate(arr):
                    self.request.infer({0: item[None]})
                    out[i] = self.request.get_output_tensor(0).data[0]
            else:
                def done(request, i: int) -> None:
                    out[i] = request.get_output_tensor(0).data[0]

                self.queue.set_callback(done)
                for i, item in enumerate(arr):
                    self.queue.start_async({0: item[None]}, i)
                self.queue.wait_all()
        return torch.from_numpy(out)


class OnnxRuntimeNetwork:
    """An ONNX export in an ONNX Runtime session (CPU; CUDA with onnxruntime-gpu). f16 converts the
    graph with onnxconverter-common's float16 pass when asked (inputs and outputs stay float32)."""

    def __init__(self, onnx_path: str | os.PathLike[str], *, device: str = "cpu", precision: str = "f32",
                 threads: int = 1) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("this ONNX Runtime has no CUDA support: pip install onnxruntime-gpu, or use "
                                   "--backend torch")
            providers.insert(0, "CUDAExecutionProvider")
        path = str(onnx_path)
        if precision == "f16":
            path = str(_float16_copy(Path(onnx_path)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name or INPUT_NAME
        log.info("ONNX Runtime %s: %s on %s (%s)", ort.__version__, Path(onnx_path).name, providers[0], precision)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


def _float16_copy(path: Path) -> Path:
    out = path.with_name(path.stem + "-f16.onnx")
    if out.is_file():
        return out
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise BackendError("precision f16 with ONNX Runtime needs onnxconverter-common: pip install "
                           "onnxconverter-common") from None
    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out
