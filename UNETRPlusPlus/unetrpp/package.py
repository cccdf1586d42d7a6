"""Model packages: a folder or zip holding `model.json` (the manifest) and `weights.safetensors`.

Loading checks the manifest against its schema and the weights against the SHA256 recorded in the
manifest before a single tensor is read; weights are never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .atomic import replace_path, staging_dir
from .errors import OutputExistsError, PackageError
from .hashing import check_sha256, sha256_bytes, sha256_file
from .manifest import MANIFEST_FILE, MAX_WEIGHTS_BYTES, WEIGHTS_FILE, Manifest, package_zip_entry, read_manifest
from .network import UNETRPP, build_network

log = logging.getLogger(__name__)

__all__ = ["Model", "load", "save_package", "read_manifest", "load_weights_into", "MANIFEST_FILE", "WEIGHTS_FILE"]
_DEEP_SUPERVISION_PREFIXES = ("out2.", "out3.")


@dataclass
class Model:
    """A loaded model package: `network` (eval mode, weights loaded) and its `manifest`."""

    network: UNETRPP
    manifest: Manifest
    path: Path

    @property
    def name(self) -> str:
        return self.manifest.name

    def to(self, device: torch.device | str) -> "Model":
        self.network.to(device)
        return self

    def optimized(self, *, backend: str = "torch", device: str | torch.device | None = None,
                  precision: str = "auto", compile: bool = False) -> Any:
        """The network for inference: a callable taking a (B, C, D, H, W) float32 tensor (C, D, H, W
        = the package's input channels and patch) and returning the logits (B, K, D, H, W).

        `backend="torch"` (default): an eval-only module computing what `network` computes, faster
        (unetrpp.network.fast; ~2x on CPU), on `network`'s current device and dtype (call again after
        moving the model). "openvino" / "onnxruntime" run the package's ONNX export (exported once
        and cached, see `unetrpp.backends`); "auto" picks the fastest installed for `device`
        (default: the network's device). `network` stays the faithful module (training, parity,
        saving)."""
        from .backends import choose_backend, prepare

        if backend == "torch":
            from .network.fast import optimize_for_inference

            return optimize_for_inference(self.network, compile=compile)
        if device is None:
            device = next(self.network.parameters()).device
        choice = choose_backend(backend, device, precision)
        if choice.name == "torch":
            from .network.fast import optimize_for_inference

            return optimize_for_inference(self.network.to(device), compile=compile)
        return prepare(self.network, choice, weights_sha256=self.manifest.weights_sha256)

    def export_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Write the network as ONNX (see `unetrpp.backends.onnx_export` for opset and axes)."""
        from .backends.onnx_export import export_onnx

        return export_onnx(self.network, path)

    def predict(self, volume: Any, *, device: str | torch.device = "auto", fast: bool = False,
                **options: Any) -> torch.Tensor:
        """Softmax probabilities (K, D, H, W) of a preprocessed volume (C, D, H, W) on the network's
        grid, by sliding window with this package's inference defaults (overlap, mirroring unless
        `fast`, Gaussian sigma) and the optimized network; `options` go to
        `unetrpp.predict.predict_probabilities` (e.g. `backend="auto"`, `report={}`). For image files use `unetrpp.Segmenter`."""
        from .predict import predict_probabilities

        defaults = self.manifest.inference_defaults
        kwargs: dict[str, Any] = dict(overlap=defaults.overlap, sigma_scale=defaults.gaussian_sigma_scale,
                                      mirror_axes=() if fast else defaults.mirror_axes)
        kwargs.update(options)
        kwargs.setdefault("weights_sha256", self.manifest.weights_sha256)
        return predict_probabilities(self.network, volume, patch_size=tuple(self.manifest.network_config.patch_size),
                                     device=device, **kwargs)


# Tied parameters ----------------------------------------------------------------------------
def _alias_keys(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Map each state_dict key that shares storage with an earlier key to that key (the official
    synapse network holds one Linear as both E and F)."""
    first_by_storage: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and ident in first_by_storage:
            aliases[key] = first_by_storage[ident]
        else:
            first_by_storage[ident] = key
    return aliases


def load_weights_into(network: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Strictly load `weights` (which may omit tied aliases and may carry deep-supervision heads
    the network does not have)."""
    expected = network.state_dict()
    weights = dict(weights)
    for alias, canonical in _alias_keys(expected).items():
        if alias not in weights and canonical in weights:
            weights[alias] = weights[canonical]
    if not hasattr(network, "out2"):
        weights = {k: v for k, v in weights.items() if not k.startswith(_DEEP_SUPERVISION_PREFIXES)}
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    misshaped = [
        f"{k} {tuple(weights[k].shape)} (network: {tuple(expected[k].shape)})"
        for k in expected
        if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})")
        if misshaped:
            parts.append(f"{len(misshaped)} with the wrong shape (first: {'; '.join(misshaped[:5])})")
        raise PackageError(f"{what} does not fit the network: " + "; ".join(parts))
    network.load_state_dict(weights, strict=True)


# Save -------------------------------------------------------------------------------------
def save_package(
    network: nn.Module,
    manifest: dict[str, Any],
    path: str | os.PathLike[str],
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a package (a folder, or a zip when `path` ends in .zip). The weights' SHA256 is
    computed and recorded in the manifest; the manifest is validated before anything is written,
    and the package appears atomically (written next to its final place, then renamed)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another path or pass overwrite=True")
    state = network.state_dict()
    aliases = _alias_keys(state)
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in state.items()
        if k not in aliases
    }
    weights_bytes = safetensors.torch.save(tensors, metadata={"format": "pt", "package": manifest.get("name", "")})
    data = json.loads(json.dumps(manifest))  # deep copy, JSON types only
    data["weights"] = {
        "file": WEIGHTS_FILE,
        "sha256": sha256_bytes(weights_bytes),
        "dtype": str(dtype).removeprefix("torch."),
        "deep_supervision_heads": any(k.startswith(_DEEP_SUPERVISION_PREFIXES) for k in tensors),
    }
    Manifest(data)  # validate before writing
    manifest_text = json.dumps(data, indent=2) + "\n"

    path.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(path.parent) as tmp:
        if path.suffix == ".zip":
            staged = tmp / path.name
            with zipfile.ZipFile(staged, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(MANIFEST_FILE, manifest_text)
                zf.writestr(WEIGHTS_FILE, weights_bytes)
        else:
            staged = tmp / "package"
            staged.mkdir()
            (staged / MANIFEST_FILE).write_text(manifest_text)
            (staged / WEIGHTS_FILE).write_bytes(weights_bytes)
        replace_path(staged, path, overwrite=overwrite)
    log.info("saved model package %s (%s, weights sha256 %s)", path, data["name"], data["weights"]["sha256"][:12])
    return path


# Load -------------------------------------------------------------------------------------
def _read_weights(path: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """The weights of a package folder or zip, read only after their SHA256 matched. Sizes are
    bounded (MAX_WEIGHTS_BYTES, zip entries checked from the directory before inflating) and the
    hash is streamed, so a hostile package costs neither memory nor minutes before it is refused."""
    expected = manifest.weights_sha256
    if path.is_dir():
        file = path / WEIGHTS_FILE
        if not file.is_file():
            raise PackageError(f"model package {path} has no {WEIGHTS_FILE}")
        if file.stat().st_size > MAX_WEIGHTS_BYTES:
            raise PackageError(f"{file} is {file.stat().st_size} bytes, over the limit of {MAX_WEIGHTS_BYTES} bytes "
                               "(UNETRPP_MAX_WEIGHTS_BYTES raises it for a trusted package)")
        check_sha256(sha256_file(file), expected, f"{file}")
        return safetensors.torch.load_file(str(file))
    with tempfile.TemporaryDirectory(prefix="unetrpp-weights-") as tmp:
        unpacked = Path(tmp) / WEIGHTS_FILE
        digest = hashlib.sha256()
        with package_zip_entry(path, WEIGHTS_FILE) as (_, src), open(unpacked, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
        check_sha256(digest.hexdigest(), expected, f"{path}:{WEIGHTS_FILE}")
        return safetensors.torch.load_file(str(unpacked))


def load(
    path: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    deep_supervision: bool = False,
) -> Model:
    """Load a model package: validate the manifest, verify the weights' SHA256, build the network
    and load the weights strictly. Returns a `Model` whose network is in eval mode."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = _read_weights(path, manifest)
    network = build_network(manifest.network_config, deep_supervision=deep_supervision)
    load_weights_into(network, weights, f"the weights of {path}")
    network.eval().to(device)
    return Model(network=network, manifest=manifest, path=path)


