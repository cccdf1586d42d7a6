"""Model packages: a folder or zip holding `model.json` (the manifest) and `weights.safetensors`.

Loading checks the manifest against its schema and the weights against the SHA256 recorded in the
manifest before a single tensor is read; weights are never unpickled.

A package folder may also store ONNX exports of its network (`model.onnx`, float32, and
`model-int8.onnx`, the int8 quantization; `store_export`), recorded in the manifest's `exports`
with their SHA256, size, opset, input shape, and the SHA256 of the weights and the architecture
they were made from. `stored_export` hands one to a runtime only after its size, SHA256 and
provenance match and its graph holds no external-data reference (an ONNX file is only ever read by
ONNX Runtime or OpenVINO, never unpickled); otherwise it says why (stale, damaged, absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .atomic import replace_path, staged_file, staging_dir
from .errors import OutputExistsError, PackageError
from .hashing import check_sha256, sha256_bytes, sha256_file
from .manifest import (MANIFEST_FILE, MAX_ONNX_BYTES, MAX_WEIGHTS_BYTES, ONNX_FILES, WEIGHTS_FILE, Manifest,
                       package_zip_entry, read_manifest, read_manifest_json)
from .network import UNETRPP, build_network

log = logging.getLogger(__name__)

__all__ = ["Model", "load", "save_package", "read_manifest", "load_weights_into", "MANIFEST_FILE", "WEIGHTS_FILE",
           "store_export", "stored_export", "update_export_record", "StoredExport", "package_of"]
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
    _PACKAGE_OF[network] = path
    return Model(network=network, manifest=manifest, path=path)


# Stored ONNX exports --------------------------------------------------------------------------
#: the package each loaded network came from (the backends look for its stored exports)
_PACKAGE_OF: "weakref.WeakKeyDictionary[nn.Module, Path]" = weakref.WeakKeyDictionary()


def package_of(network: nn.Module) -> Path | None:
    """The package `network` was loaded from by `load` (None for a network built otherwise)."""
    try:
        return _PACKAGE_OF.get(network)
    except TypeError:
        return None


def architecture_sha256(manifest: Manifest) -> str:
    """SHA256 of the network configuration (what, with the weights, fixes the exported graph)."""
    text = json.dumps(manifest.network_config.to_dict(), sort_keys=True)
    return sha256_bytes(text.encode())


class StoredExportError(PackageError):
    """A stored ONNX export that cannot be used: damaged, altered, or made for other weights."""


@dataclass(frozen=True)
class StoredExport:
    """A stored export's record and file; `stale` says why it does not belong to these weights."""

    kind: str
    path: Path
    record: dict[str, Any]
    stale: str | None

    @property
    def sha256(self) -> str:
        return self.record["sha256"]


def _export_record(path: Path, kind: str) -> tuple[Manifest, StoredExport | None]:
    manifest = read_manifest(path)
    record = manifest.exports.get(kind)
    if record is None:
        return manifest, None
    stale = None
    if record["weights_sha256"] != manifest.weights_sha256:
        stale = (f"it was made from other weights (SHA256 {record['weights_sha256'][:12]}, the package's are "
                 f"{manifest.weights_sha256[:12]})")
    elif record["architecture_sha256"] != architecture_sha256(manifest):
        stale = "it was made for another architecture than the manifest's"
    return manifest, StoredExport(kind=kind, path=path / ONNX_FILES[kind], record=record, stale=stale)


def stored_export(package: str | os.PathLike[str], kind: str = "onnx", *, verify: bool = True) -> StoredExport | None:
    """The stored export `kind` ("onnx" or "onnx_int8") of a package folder: None when the manifest
    records none (or the package is a zip: exports are used from installed folders). With `verify`
    (default) the file is checked before it is returned: a regular file of the recorded size (at most
    MAX_ONNX_BYTES), the recorded SHA256, and (with the `onnx` package) no external-data reference;
    a failure raises StoredExportError naming the file and the command that rewrites it. A stale
    record (other weights or architecture) is returned with `stale` set and is not verified."""
    path = Path(package)
    if not path.is_dir():
        return None
    _, found = _export_record(path, kind)
    if found is None or found.stale or not verify:
        return found
    file, record = found.path, found.record
    memo = _verified_key(file, record["sha256"])
    if memo is not None and memo in _VERIFIED:
        return found
    redo = ("unetrpp export-onnx MODEL --into-package --overwrite" if kind == "onnx"
            else "unetrpp quantize MODEL --calibration SCAN ... --overwrite")
    if file.is_symlink() or not file.is_file():
        raise StoredExportError(f"{file}: the stored ONNX export recorded in {path / MANIFEST_FILE} is missing or not "
                                f"a regular file; write it again: {redo}")
    size = file.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise StoredExportError(f"{file} is {size} bytes, over the limit of {MAX_ONNX_BYTES} bytes "
                                "(UNETRPP_MAX_ONNX_BYTES raises it for a trusted package)")
    if size != record["bytes"]:
        raise StoredExportError(f"{file} is {size} bytes, not the {record['bytes']} recorded in the manifest: it is "
                                f"truncated or was altered, and has not been used; write it again: {redo}")
    try:
        check_sha256(sha256_file(file), record["sha256"], f"the stored ONNX export {file}")
    except PackageError as exc:
        raise StoredExportError(f"{exc} Write it again: {redo}") from None
    _vet_onnx(file)
    if memo is not None:
        _VERIFIED.add(memo)
    return found


#: files verified in this process, by (path, inode, size, mtime, SHA256): a changed file is checked again
_VERIFIED: set[tuple] = set()


def _verified_key(file: Path, sha256: str) -> tuple | None:
    try:
        st = file.lstat()
    except OSError:
        return None
    return (str(file.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, sha256)


def _vet_onnx(file: Path) -> None:
    """Refuse an ONNX graph that points outside itself (external data: a path the runtime would open)
    or uses operator domains outside ONNX and ONNX Runtime's own. Needs the `onnx` package, which the
    ONNX backends install; without it the check is skipped (the runtimes refuse external data that
    leaves the model's folder themselves)."""
    try:
        import onnx
    except ImportError:
        log.info("onnx is not installed: the external-data check of %s is skipped", file)
        return
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # a damaged protobuf
        raise StoredExportError(f"{file} is not a readable ONNX file: {type(exc).__name__}") from None
    allowed = {"", "ai.onnx", "com.microsoft"}

    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from nodes(sub)

    domains = {n.domain for n in nodes(model.graph)} - allowed
    if domains:  # (declared but unused opset imports are harmless)
        raise StoredExportError(f"{file} uses operator domain(s) {sorted(domains)}; a stored export may only use "
                                "ONNX's and ONNX Runtime's own operators")

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from tensors(sub)

    for t in tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise StoredExportError(f"{file} refers to external data (tensor {t.name!r}); a stored export must hold "
                                    "all its tensors itself")


def update_export_record(package: str | os.PathLike[str], kind: str, changes: dict[str, Any]) -> dict[str, Any]:
    """Add `changes` (e.g. the measured agreement) to the record of a stored export whose file is
    unchanged (verified first); the manifest is validated, then replaced atomically."""
    path = Path(package)
    found = stored_export(path, kind)
    if found is None or found.stale:
        raise StoredExportError(f"{path} stores no current export {ONNX_FILES[kind]} to update")
    data = read_manifest_json(path)
    if data.get("exports", {}).get(kind, {}).get("sha256") != found.sha256:
        raise StoredExportError(f"{path / MANIFEST_FILE} changed meanwhile; nothing was updated")
    data["exports"][kind].update(json.loads(json.dumps(changes)))
    Manifest(data)  # validate before writing
    from .atomic import write_text

    write_text(path / MANIFEST_FILE, json.dumps(data, indent=2) + "\n", overwrite=True)
    return data["exports"][kind]


def store_export(package: str | os.PathLike[str], kind: str, onnx_file: str | os.PathLike[str],
                 record: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """Copy the ONNX file `onnx_file` into the package folder as its export `kind` and record it in
    the manifest (SHA256, size, the weights' and architecture's SHA256, plus `record`: opset,
    input_shape, check, ...). The file and then the manifest are each written beside their place
    and renamed over it; the manifest is validated before anything is written. Returns the record."""
    path = Path(package)
    if kind not in ONNX_FILES:
        raise ValueError(f"unknown export kind {kind!r}")
    if not path.is_dir():
        raise PackageError(f"{path}: exports are stored in a package folder; install the zip first "
                           "(unetrpp models install PACKAGE.zip) and store into the installed model")
    data = read_manifest_json(path)
    manifest = Manifest(data)
    if kind in manifest.exports and not overwrite:
        raise OutputExistsError(f"{path} already stores an export {ONNX_FILES[kind]}; pass --overwrite to replace it")
    src = Path(onnx_file)
    size = src.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise PackageError(f"{src} is {size} bytes, over the limit of {MAX_ONNX_BYTES} bytes for a stored export")
    entry = {**record, "file": ONNX_FILES[kind], "sha256": sha256_file(src), "bytes": size,
             "weights_sha256": manifest.weights_sha256, "architecture_sha256": architecture_sha256(manifest)}
    data = json.loads(json.dumps(data))
    data.setdefault("exports", {})[kind] = entry
    Manifest(data)  # validate before writing
    from .atomic import write_text

    with staged_file(path / ONNX_FILES[kind], overwrite=True) as tmp:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != entry["sha256"]:  # the source changed while it was copied
            raise PackageError(f"{src} changed while it was copied into {path}; nothing was stored")
    write_text(path / MANIFEST_FILE, json.dumps(data, indent=2) + "\n", overwrite=True)
    log.info("stored %s in %s (sha256 %s, %d bytes)", ONNX_FILES[kind], path, entry["sha256"][:12], size)
    return entry


