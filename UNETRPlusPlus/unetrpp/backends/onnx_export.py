"""ONNX export of a UNETR++ network (any variant, official or trained package).

The graph is traced from the deploy form of the faithful network (`unetrpp.network.deploy`: the
same function, the transformer blocks computed channel-first so that the runtimes execute no
token transposes; eval mode, float32, no deep-supervision heads) with PyTorch's TorchScript-based
exporter (`deploy=False` traces the faithful module tree itself):

* opset `OPSET` (17: LayerNormalization is a single operator);
* one input `image` of shape (N, C, D, H, W) and one output `logits` (N, K, D, H, W), float32;
  N (the batch of windows) is the only dynamic axis. D, H, W are fixed to the package's patch size:
  the EPA attention projects a fixed number of tokens, so other spatial sizes are not the same
  network (larger volumes go through sliding-window inference, `unetrpp.predict`);
* the logits, not probabilities: softmax, mirroring and stitching stay in the engine (or in the
  serving code, see docs/deploy.md).

`export_onnx` writes the file atomically; `cached_onnx` keeps one export per package and patch
under $UNETRPP_HOME/cache/onnx so that a second run pays no export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import PackageError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: bumped when the exported graph changes for the same weights (invalidates cached exports);
#: 2: the channel-first deploy graph
EXPORT_REVISION = 2


def _faithful_float32(network: nn.Module) -> nn.Module:
    """The faithful network in eval mode, float32, on the CPU, without deep-supervision heads
    (a copy when anything has to change; the caller's network is never modified)."""
    import copy

    from ..network import UNETRPP

    if not isinstance(network, UNETRPP):
        raise TypeError(f"ONNX export needs a faithful UNETRPP network, not {type(network).__name__}")
    needs_copy = (
        network.deep_supervision
        or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in network.parameters())
        or network.training
    )
    if not needs_copy:
        return network
    net = copy.deepcopy(network).float().cpu().eval()
    if net.deep_supervision:
        net.deep_supervision = False
        del net.out2, net.out3
    return net


def export_onnx(network: nn.Module, path: str | os.PathLike[str], *, opset: int = OPSET,
                dynamic_batch: bool = True, deploy: bool = True) -> Path:
    """Export the faithful `network` to an ONNX file at `path` (written next to it, then renamed),
    traced from its deploy form (`deploy=False`: from the faithful tree). Returns the path."""
    path = Path(path)
    net = _faithful_float32(network)
    if deploy:
        from ..network.deploy import deploy_network

        net = deploy_network(net, copy=net is network)  # transform the copy made above, if any
    shape = (1, *net.config.input_shape)
    x = torch.zeros(shape, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about the (constant) shape check
            torch.onnx.export(
                net, (x,), tmp, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("exported %s (%s, %s form, opset %d, input %s) to %s", type(net).__name__, net.config.variant,
             "deploy" if deploy else "faithful", opset, shape, path)
    return path


def export_key(network: nn.Module, weights_sha256: str | None = None) -> str:
    """A key that changes whenever the exported graph would: the weights (the package's SHA256,
    else a hash of the tensors), the architecture, the exporter and its revision."""
    config = json.dumps(network.config.to_dict(), sort_keys=True)
    h = hashlib.sha256()
    h.update(f"{EXPORT_REVISION}|{OPSET}|{torch.__version__}|{config}".encode())
    if weights_sha256:
        h.update(weights_sha256.encode())
    else:
        for name, t in network.state_dict().items():
            if name.startswith(("out2.", "out3.")):
                continue
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    """$UNETRPP_HOME/cache (default ~/.unetrpp/cache); UNETRPP_CACHE overrides it."""
    env = os.environ.get("UNETRPP_CACHE")
    if env:
        return Path(env).expanduser()
    from ..catalogue import home

    return home() / "cache"


def cached_onnx_path(network: nn.Module, key: str) -> Path:
    return cache_dir() / "onnx" / f"{network.config.variant}-{key}.onnx"


def cached_onnx(network: nn.Module, weights_sha256: str | None = None) -> Path:
    """The ONNX export of `network` from the cache, exported (once) when missing."""
    path = cached_onnx_path(network, export_key(network, weights_sha256))
    if path.is_file():
        log.info("ONNX export from the cache: %s", path)
        return path
    return export_onnx(network, path)


def onnx_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Opset, input and output names and shapes of an ONNX file (needs the `onnx` package)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v) -> list[Any]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": {v.name: dims(v) for v in m.graph.input},
        "outputs": {v.name: dims(v) for v in m.graph.output},
    }


__all__ = ["OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "cached_onnx", "export_key", "cache_dir", "onnx_info"]


def check_export(network: nn.Module, path: str | os.PathLike[str], *, limit: float = 1e-4, batch: int = 2) -> dict[str, Any]:
    """Run the export and the faithful PyTorch network on the same deterministic input (a batch of
    `batch`, so the dynamic axis is exercised) and compare: max |difference| / max |PyTorch|.
    Uses ONNX Runtime, else OpenVINO; raises `ExportCheckError` above `limit`."""
    from . import is_installed
    from ..network.deterministic import deterministic_input

    net = _faithful_float32(network)
    x = deterministic_input((batch, *net.config.input_shape), dtype=torch.float32)
    with torch.no_grad():
        expected = net(x).numpy()
    if is_installed("onnxruntime"):
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got, runtime = session.run(None, {INPUT_NAME: x.numpy()})[0], f"onnxruntime {ort.__version__}"
    elif is_installed("openvino"):
        from .runtimes import OpenVINONetwork

        got, runtime = OpenVINONetwork(path, net.config.input_shape)(x).numpy(), "openvino"
    else:
        return {"runtime": None, "relative_error": None, "limit": limit,
                "skipped": "neither onnxruntime nor openvino is installed"}
    import numpy as np

    err = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-30))
    if not err <= limit:
        raise ExportCheckError(f"the ONNX export of {path} differs from PyTorch: max relative error {err:.2e} "
                               f"over the limit {limit:.0e}")
    return {"runtime": runtime, "relative_error": err, "limit": limit, "batch": batch}


class ExportCheckError(PackageError):
    """The exported graph does not compute what the PyTorch network computes."""
