"""Where the network runs: PyTorch, or the ONNX export in OpenVINO or ONNX Runtime.

    choice = choose_backend("auto", device="cpu")     # BackendChoice(name, device, precision, reason)
    net = prepare(network, choice, weights_sha256=...) # callable (B, C, D, H, W) -> logits (B, K, D, H, W)

* `torch`: the engine's optimized PyTorch network (`unetrpp.network.fast`), any device.
* `openvino`: the ONNX export compiled by OpenVINO for the CPU (the `[cpu]` extra).
* `onnxruntime`: the ONNX export in ONNX Runtime (CPU, or CUDA with onnxruntime-gpu).
* `auto`: OpenVINO on a CPU when it is installed (per synapse window 2.1x the PyTorch path on the
  2-core AVX2 development machine with the deploy graph, 1.25x on another CPU before it:
  docs/benchmarks.md), else PyTorch; PyTorch on CUDA and MPS (float16 autocast on CUDA).

Precision: `f32` everywhere by default. `bf16` (OpenVINO on CPUs with native bfloat16) and `f16`
(ONNX Runtime / OpenVINO) are explicit options; labels with them are measured in
docs/benchmarks.md. `int8` is an explicit option only, never the default: it runs the package's
stored int8 export (post-training static quantization calibrated on scans, `unetrpp quantize`,
`unetrpp.backends.quantize`) in OpenVINO or ONNX Runtime on the CPU, and is refused, naming that
command, when the package stores none.

The ONNX graph comes from the package when it stores one (`unetrpp export-onnx MODEL
--into-package`; used only after its size, SHA256 and provenance matched, `unetrpp.package.stored_export`),
else from the export cache: exported once per package and patch on disk
($UNETRPP_HOME/cache/onnx). OpenVINO's compiled blob is cached on disk (its CACHE_DIR), and the
compiled network per package, shape, precision and thread count in this process (`prepare`).

Nothing here is imported by `unetrpp` at start-up, and every optional backend is imported only when
chosen: with only PyTorch installed, `auto` is `torch`. UNETRPP_HIDE_BACKENDS=openvino,onnxruntime
makes installed backends invisible (tests, and users who want PyTorch everywhere).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import EnvironmentProblem

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
PRECISION_CHOICES = ("auto", "f32", "bf16", "f16", "int8")
_OPTIONAL = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_INSTALL_HINT = {
    "openvino": "pip install 'unetrpp[cpu]' (or: pip install openvino onnx)",
    "onnxruntime": "pip install 'unetrpp[onnx]' (or: pip install onnxruntime onnx)",
}


class BackendError(EnvironmentProblem):
    """The requested backend is unknown, not installed or cannot run on the requested device."""


@dataclass(frozen=True)
class BackendChoice:
    """What runs the network: backend name, torch device type, precision, and why (for the report)."""

    name: str
    device: str
    precision: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _hidden() -> set[str]:
    return {s.strip().lower() for s in os.environ.get("UNETRPP_HIDE_BACKENDS", "").split(",") if s.strip()}


def is_installed(name: str) -> bool:
    """Whether backend `name` can be imported here (torch always can)."""
    if name == "torch":
        return True
    module = _OPTIONAL.get(name)
    if module is None or name in _hidden():
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or broken module (sys.modules[name] = None)
        return False


def installed_backends() -> list[str]:
    return [b for b in BACKEND_CHOICES[1:] if is_installed(b)]


def _device_type(device: Any) -> str:
    text = str(device or "cpu").lower()
    return text.split(":", 1)[0]


def choose_backend(backend: str | None = "auto", device: Any = "cpu", precision: str | None = "auto") -> BackendChoice:
    """The backend for `device` ("cpu", "cuda", "cuda:1", "mps" or a torch.device): `backend` as
    given when it can run there (BackendError otherwise), or for "auto" the fastest installed."""
    name = (backend or "auto").strip().lower()
    prec = (precision or "auto").strip().lower()
    if name not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if prec not in PRECISION_CHOICES:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    dev = _device_type(device)
    if prec == "int8":
        return _int8_choice(name, dev)
    if name == "auto":
        if dev != "cpu":
            name, reason = "torch", f"PyTorch on {dev}" + (" (float16 autocast)" if dev == "cuda" else "")
        elif is_installed("openvino"):
            name, reason = "openvino", "OpenVINO is installed and runs UNETR++ faster than PyTorch on CPUs"
        else:
            name, reason = "torch", ("PyTorch optimized CPU path (OpenVINO not installed: "
                                     f"{_INSTALL_HINT['openvino']} for the faster CPU backend)")
    else:
        reason = "requested"
        if not is_installed(name):
            raise BackendError(f"backend {name!r} is not installed: {_INSTALL_HINT[name]}")
        if name == "openvino" and dev != "cpu":
            raise BackendError(f"backend 'openvino' runs on the CPU only, not on {dev}; use --device cpu "
                               "or --backend torch")
        if name == "onnxruntime" and dev not in ("cpu", "cuda"):
            raise BackendError(f"backend 'onnxruntime' runs on the CPU or CUDA, not on {dev}")
    if prec == "auto":
        prec = "f32"  # reduced precision only when asked: see docs/benchmarks.md (labels vs float32)
    elif name == "torch" and prec != "f32":
        raise BackendError("precision applies to the openvino and onnxruntime backends; the torch backend runs "
                           "float32 (with float16 autocast on CUDA)")
    elif name == "onnxruntime" and prec == "bf16":
        raise BackendError("ONNX Runtime offers f32 or f16 here; bf16 is an OpenVINO option")
    return BackendChoice(name=name, device=dev, precision=prec, reason=reason)


def _int8_choice(name: str, dev: str) -> BackendChoice:
    """int8 is an explicit choice: it runs where it can (OpenVINO, else ONNX Runtime, on the CPU) or
    is refused; it never falls back to another precision ("requested": no fallback, no short-job
    switch to PyTorch)."""
    if dev != "cpu":
        raise BackendError(f"precision int8 runs on the CPU (OpenVINO or ONNX Runtime), not on {dev}; use --device cpu")
    if name == "auto":
        name = next((b for b in ("openvino", "onnxruntime") if is_installed(b)), "")
        if not name:
            raise BackendError("precision int8 needs OpenVINO or ONNX Runtime: " + _INSTALL_HINT["openvino"])
    elif name == "torch":
        raise BackendError("precision int8 runs the package's int8 ONNX export in OpenVINO or ONNX Runtime, not in "
                           "PyTorch; use --backend auto, openvino or onnxruntime")
    elif not is_installed(name):
        raise BackendError(f"backend {name!r} is not installed: {_INSTALL_HINT[name]}")
    return BackendChoice(name=name, device=dev, precision="int8", reason="requested")


#: `auto` on a CPU runs a short job on PyTorch while the package has no ONNX export yet: exporting
#: and compiling costs ~15-40 s for a full-size network on 2 cores, which a job needs this many
#: voxel evaluations of the network (16 full-size synapse windows) to win back. Once exported (by a
#: longer job, or `unetrpp export-onnx`'s cache) every job uses OpenVINO.
AUTO_MIN_WORK = 16 * 64 * 128 * 128


# Compiled networks, per process ------------------------------------------------------------
_CACHE: "OrderedDict[tuple, Callable]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _threads() -> int:
    import torch

    return max(1, int(torch.get_num_threads()))


def prepare(network: Any, choice: BackendChoice, *, weights_sha256: str | None = None, optimize: bool = True) -> Callable:
    """A callable running `network` (a faithful UNETRPP) on `choice`: (B, C, D, H, W) float32
    tensor -> logits (B, K, D, H, W) float32 tensor. ONNX-based backends are cached per package
    (weights SHA256), shape, precision and thread count."""
    if choice.name == "torch":
        import torch

        from ..predict import _inference_module

        return _inference_module(network, torch.device(choice.device if choice.device != "cuda" else "cuda"), optimize)
    from .onnx_export import cached_onnx, export_key

    stored = _stored_graph(network, choice)
    graph = stored.sha256 if stored is not None else export_key(network, weights_sha256)
    key = (choice.name, choice.device, choice.precision, graph, tuple(network.config.input_shape), _threads())
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            log.info("compiled %s network from this process's cache", choice.name)
            return hit
    if stored is not None:
        path = stored.path
        log.info("%s: the package's stored %s export %s (sha256 %s)", choice.name,
                 "int8" if choice.precision == "int8" else "ONNX", path, stored.sha256[:12])
    else:
        path = cached_onnx(network, weights_sha256)
    if choice.name == "openvino":
        from .runtimes import OpenVINONetwork

        # int8: the QDQ graph runs as int8 (OpenVINO's low-precision transformations); the hint
        # keeps the layers left in float at float32
        runner: Callable = OpenVINONetwork(path, network.config.input_shape,
                                           precision="f32" if choice.precision == "int8" else choice.precision,
                                           threads=_threads())
    else:
        from .runtimes import OnnxRuntimeNetwork

        runner = OnnxRuntimeNetwork(path, device=choice.device,
                                    precision="f32" if choice.precision == "int8" else choice.precision,
                                    threads=_threads())
    with _CACHE_LOCK:
        _CACHE[key] = runner
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return runner


def _stored_graph(network: Any, choice: BackendChoice) -> Any:
    """The package's stored export for `choice` (verified), or None to use the export cache. int8
    has no fallback: without a usable int8 export it is refused, naming the command that makes one.
    A stale float32 export (other weights) is skipped with a warning; a damaged one is refused
    (`auto` then runs PyTorch with a warning, `unetrpp.predict`)."""
    from ..package import package_of, stored_export

    package = package_of(network)
    kind = "onnx_int8" if choice.precision == "int8" else "onnx"
    if choice.precision == "int8":
        make = f"unetrpp quantize {package or 'MODEL'} --calibration SCAN [SCAN ...]"
        if package is None:
            raise BackendError("precision int8 runs a model package's int8 export; this network was not loaded from a "
                               f"package folder. Load the package with unetrpp.load and make the export: {make}")
        found = stored_export(package, kind)
        if found is None:
            raise BackendError(f"model package {package} has no int8 export; make one from calibration scans: {make}")
        if found.stale:
            raise BackendError(f"the int8 export of {package} is stale: {found.stale}. Make it again: {make} --overwrite")
        return found
    if package is None or (choice.name == "onnxruntime" and choice.precision == "f16"):
        return None  # (ONNX Runtime's f16 writes a converted copy beside the graph: only in the cache)
    found = stored_export(package, kind)
    if found is not None and not found.stale:
        from .onnx_export import EXPORT_REVISION

        revision = found.record.get("exporter", {}).get("export_revision")
        if isinstance(revision, int) and revision < EXPORT_REVISION:  # still the same network, checked when made
            log.info("the stored ONNX export of %s comes from an older exporter (revision %d, now %d): `unetrpp "
                     "export-onnx %s --into-package --overwrite` may give a faster graph", package, revision,
                     EXPORT_REVISION, package)
    if found is not None and found.stale:
        log.warning("the stored ONNX export of %s is not used: %s. Export it again: unetrpp export-onnx %s "
                    "--into-package --overwrite", package, found.stale, package)
        return None
    return found


def check_int8(network: Any, backend: str | None, device: Any) -> BackendChoice:
    """Refuse precision int8 up front (BackendError / StoredExportError naming the fix) when it
    cannot run: no ONNX runtime, another device, or no current int8 export in the package."""
    choice = choose_backend(backend, device, "int8")
    _stored_graph(network, choice)
    return choice


def is_prepared(network: Any, choice: BackendChoice, weights_sha256: str | None = None) -> bool:
    """Whether `prepare` would find the export ready (in this process, in the package, or on disk):
    no export to pay."""
    if choice.name == "torch" or choice.precision == "int8":  # int8 is never exported on the fly
        return True
    from ..package import package_of, stored_export

    package = package_of(network)
    if package is not None:
        try:
            found = stored_export(package, "onnx", verify=False)
        except Exception:  # a package whose manifest no longer reads: prepare says why
            found = None
        if found is not None and not found.stale and found.path.is_file():
            return True
    from .onnx_export import cached_onnx_path, export_key

    key = export_key(network, weights_sha256)
    with _CACHE_LOCK:
        if any(k[0] == choice.name and k[3] == key for k in _CACHE):
            return True
    return cached_onnx_path(network, key).is_file()


def clear_cache() -> None:
    """Forget the compiled networks of this process (the on-disk caches stay)."""
    with _CACHE_LOCK:
        _CACHE.clear()


__all__ = ["BACKEND_CHOICES", "PRECISION_CHOICES", "BackendChoice", "BackendError", "choose_backend", "check_int8",
           "installed_backends", "is_installed", "is_prepared", "prepare", "clear_cache", "AUTO_MIN_WORK"]
