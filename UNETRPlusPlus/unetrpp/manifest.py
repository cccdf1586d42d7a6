"""The model manifest (`model.json`): validated against a versioned JSON Schema, with typed access.

The manifest carries everything needed to run a model the way it was trained: network settings,
inputs and their normalisation, the preprocessing plan, labels (names, colours, SNOMED-CT
terminology), inference defaults, provenance and licence.

This module is part of the engine's torch-free contract layer (with `catalogue`, `terminology`,
`progress`, `errors`): the Slicer module and `unetrpp --help`/`unetrpp models` import it without
loading torch. `jsonschema` is imported only when a manifest is validated.

Every default of the optional manifest fields lives here, once: `Plan` (preprocessing),
`InferenceDefaults` (sliding window, mirroring, Gaussian sigma, largest component) and
`ZSCORE_NONZERO_MASK_DEFAULT`. The schema file only checks types and ranges.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import reprlib
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import IO, Any

from . import jsonio
from .errors import InputImageError, ManifestError, PackageError
from .jsonio import MAX_JSON_BYTES, MAX_JSON_DEPTH
from .network.config import NetworkConfig, NetworkConfigError

#: The manifest schema version this engine writes (`schema/model-v<N>.schema.json`). Older versions
#: it still reads are validated against their own schema, then migrated (`MIGRATIONS`).
SCHEMA_VERSION = 2
#: The files of a model package (a folder or a zip).
MANIFEST_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
#: ONNX exports a package may store (`exports` in the manifest; unetrpp.package.store_export).
ONNX_FILES = {"onnx": "model.onnx", "onnx_int8": "model-int8.onnx"}


# Defaults: the one place ----------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The preprocessing plan. Defaults are the official nnU-Net v1 behaviour (see preprocess.py)."""

    target_spacing: tuple[float, float, float]  # mm, array axis order (z, y, x); required
    crop_to_nonzero: bool = True
    image_order: int = 3  # spline order of image resampling
    label_order: int = 1  # order of per-class label resampling
    anisotropy_threshold: float = 3  # nnU-Net RESAMPLING_SEPARATE_Z_ANISO_THRESHOLD
    separate_z_order: int = 0  # order along the low-resolution axis when it is resampled separately
    orientation: str | None = None  # None keeps the stored voxel order (official behaviour)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["target_spacing"] = tuple(float(s) for s in data["target_spacing"])
        return cls(**values)


@dataclass(frozen=True)
class InferenceDefaults:
    """How a model is run unless the user says otherwise (official UNETR++/nnU-Net v1 values:
    half-patch overlap, mirroring on all three axes, Gaussian sigma = patch/8)."""

    overlap: float = 0.5
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    gaussian_sigma_scale: float = 0.125
    largest_component_labels: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InferenceDefaults":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


#: z-score normalisation over the whole image unless the plan says "non-zero voxels only".
ZSCORE_NONZERO_MASK_DEFAULT = False


def _defaults_of(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


# Typed records ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Label:
    value: int
    name: str
    color: tuple[int, int, int]
    terminology: dict[str, Any] | None = None


@dataclass(frozen=True)
class Region:
    """A union of labels shown as an extra segment (e.g. BraTS whole tumour = labels 1, 2, 3)."""

    name: str
    labels: tuple[int, ...]
    color: tuple[int, int, int]
    terminology: dict[str, Any] | None = None


@dataclass(frozen=True)
class InputSpec:
    name: str
    modality: str
    normalization: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    aliases: tuple[str, ...] = ()


def _color(raw: Any) -> tuple[int, int, int]:
    if isinstance(raw, (list, tuple)) and len(raw) >= 3:
        return tuple(int(c) for c in raw[:3])  # type: ignore[return-value]
    return (128, 128, 128)


def inputs_of(data: dict[str, Any]) -> list[InputSpec]:
    """The typed inputs of a manifest document (validated or not: missing fields get neutral values)."""
    return [
        InputSpec(name=str(i.get("name", "?")), modality=str(i.get("modality", "")),
                  normalization=dict(i.get("normalization") or {}), description=str(i.get("description", "")),
                  aliases=tuple(str(a) for a in i.get("aliases", ())))
        for i in data.get("inputs", [])
    ]


def labels_of(data: dict[str, Any]) -> list[Label]:
    return [Label(int(l["value"]), str(l["name"]), _color(l.get("color")), l.get("terminology"))
            for l in data.get("labels", [])]


def regions_of(data: dict[str, Any]) -> list[Region]:
    return [Region(str(r["name"]), tuple(int(v) for v in r["labels"]), _color(r.get("color")), r.get("terminology"))
            for r in data.get("regions", [])]


class Manifest:
    """A validated manifest. `data` is the full JSON document (defaults filled in)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = validate_manifest(data)
        try:
            self.network_config = NetworkConfig.from_dict(self.data["architecture"])
        except (NetworkConfigError, TypeError) as exc:
            raise ManifestError(f"model.json field 'architecture': {exc}") from exc
        self._check_consistency()

    # Typed views --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def title(self) -> str:
        return self.data.get("title", self.name)

    @property
    def inputs(self) -> list[InputSpec]:
        return inputs_of(self.data)

    @property
    def labels(self) -> list[Label]:
        return labels_of(self.data)

    @property
    def regions(self) -> list[Region]:
        return regions_of(self.data)

    @property
    def plan(self) -> dict[str, Any]:
        """The plan as JSON (defaults filled); `preprocessing_plan` is the typed view."""
        return self.data["plan"]

    @property
    def preprocessing_plan(self) -> Plan:
        return Plan.from_dict(self.data["plan"])

    @property
    def inference(self) -> dict[str, Any]:
        """Inference settings as JSON (defaults filled); `inference_defaults` is the typed view."""
        return self.data["inference"]

    @property
    def inference_defaults(self) -> InferenceDefaults:
        return InferenceDefaults.from_dict(self.data["inference"])

    @property
    def card(self) -> dict[str, Any]:
        """The model card as data (`card`: training statistics, calibration; read by
        `unetrpp.quality`); empty when the package has none (no reference)."""
        return self.data.get("card") or {}

    @property
    def weights_sha256(self) -> str:
        return self.data["weights"]["sha256"]

    @property
    def exports(self) -> dict[str, Any]:
        """The stored ONNX exports' records ({"onnx": {...}, "onnx_int8": {...}}; may be empty).
        Records only: `unetrpp.package.stored_export` checks a file before it is used."""
        return self.data.get("exports", {})

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2) + "\n"

    # Input names ------------------------------------------------------------------------------
    def input_lookup(self) -> dict[str, str]:
        """Lower-cased input name or alias -> the input's name (the first input wins a shared alias)."""
        lookup: dict[str, str] = {}
        for spec in self.inputs:
            for key in (spec.name, *spec.aliases):
                lookup.setdefault(key.lower(), spec.name)
        return lookup

    def inputs_help(self) -> str:
        """The inputs as a user should name them: 'ct (also CT): abdominal CT; ...'."""
        parts = []
        for s in self.inputs:
            others = [a for a in s.aliases if a != s.name]
            parts.append(s.name + (f" (also {', '.join(others)})" if others else "") + f": {s.description or s.modality}")
        return "; ".join(parts)

    def resolve_inputs(self, given: "list[str] | tuple[str, ...]", *, complete: bool = True) -> dict[str, str]:
        """The one resolution of user-given input names (manifest names or aliases, any case) to
        manifest names: {given: name}. Refuses an unknown name, one input given twice and, with
        `complete`, a missing input, with a message listing the model's inputs (InputImageError)."""
        lookup = self.input_lookup()
        mapping: dict[str, str] = {}
        for g in given:
            name = lookup.get(str(g).lower())
            if name is None:
                raise InputImageError(f"model {self.name!r} has no input named {g!r}; its inputs are {self.inputs_help()}")
            if name in mapping.values():
                raise InputImageError(f"input {name!r} was given twice; model {self.name!r} takes {self.inputs_help()}")
            mapping[g] = name
        missing = [s.name for s in self.inputs if s.name not in mapping.values()]
        if complete and missing:
            raise InputImageError(
                f"model {self.name!r} takes {len(self.inputs)} input(s), missing: {', '.join(missing)}. "
                f"Give each as --input NAME=PATH; its inputs are {self.inputs_help()}"
            )
        return mapping

    # Checks the schema cannot express ---------------------------------------------------------
    def _check_consistency(self) -> None:
        cfg = self.network_config
        if len(self.data["inputs"]) != cfg.in_channels:
            raise ManifestError(
                f"model.json field 'inputs' lists {len(self.data['inputs'])} input(s) but "
                f"'architecture.in_channels' is {cfg.in_channels}"
            )
        names = [i["name"] for i in self.data["inputs"]]
        if len(set(names)) != len(names):
            raise ManifestError(f"model.json field 'inputs': names must be unique, got {names}")
        values = [l["value"] for l in self.data["labels"]]
        if len(set(values)) != len(values):
            raise ManifestError(f"model.json field 'labels': values must be unique, got {values}")
        too_big = [v for v in values if v >= cfg.out_channels]
        if too_big:
            raise ManifestError(
                f"model.json field 'labels': value(s) {too_big} need more than the network's "
                f"{cfg.out_channels} output channels (0 is background)"
            )
        for r in self.data.get("regions", []):
            unknown = sorted(set(r["labels"]) - set(values))
            if unknown:
                raise ManifestError(
                    f"model.json field 'regions' ({r['name']!r}) uses undeclared label(s) {unknown}"
                )


# Bounded JSON ----------------------------------------------------------------------------------
#: Bounds on a model.json (and the model catalogue), checked before it is parsed by the one bounded
#: reader, `unetrpp.jsonio` (real manifests are a few kB and about 6 levels deep).
MAX_MANIFEST_BYTES = MAX_JSON_BYTES


def load_json(data: bytes | str, what: str, *, error: type[Exception] = ManifestError,
              max_bytes: int = MAX_MANIFEST_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`unetrpp.jsonio.load_json` raising ManifestError unless told otherwise."""
    return jsonio.load_json(data, what, error=error, max_bytes=max_bytes, max_depth=max_depth)


def _check_depth(data: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    jsonio.check_depth(data, "model.json", error=ManifestError, max_depth=max_depth)


# Validation -----------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def manifest_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    text = resources.files("unetrpp").joinpath(f"schema/model-v{version}.schema.json").read_text()
    return json.loads(text)


def _field_path(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(top level)"


def _explain(error: Any) -> str:
    """jsonschema's message, readable and bounded (it quotes the whole offending value)."""
    shown = reprlib.repr(error.instance)
    if error.validator == "not" and "description" in error.schema:
        return f"{shown} is not allowed: it must be {error.schema['description']}"
    if error.validator == "maxLength":
        return f"{shown} is longer than {error.validator_value} characters"
    message = error.message
    return message if len(message) <= 300 else message[:300] + "..."


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added the optional `card` (issue 19); a version-1 package has none: no reference."""
    data["schema_version"] = 2
    return data


#: version -> function turning a validated document of that version into the next version.
MIGRATIONS = {1: _v1_to_v2}
#: every schema version this engine reads (older ones are migrated on load).
READABLE_VERSIONS = (*sorted(MIGRATIONS), SCHEMA_VERSION)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A validated document of any readable version, in place, as the current version."""
    while data["schema_version"] != SCHEMA_VERSION:
        data = MIGRATIONS[data["schema_version"]](data)
    return data


def validate_manifest(data: Any) -> dict[str, Any]:
    """Validate against the schema of its version; return a copy migrated to `SCHEMA_VERSION` with
    defaults filled. Raises ManifestError naming the first offending field."""
    import jsonschema  # only here: listing models and the Slicer module never validate

    if not isinstance(data, dict):
        raise ManifestError("model.json must hold a JSON object")
    _check_depth(data)
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ManifestError(
            f"model.json field 'schema_version' is {reprlib.repr(version)}; this version of unetrpp reads "
            f"schema version(s) {', '.join(map(str, READABLE_VERSIONS))}. Update unetrpp or re-export the package."
        )
    validator = jsonschema.Draft202012Validator(manifest_schema(version))
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = jsonschema.exceptions.best_match(errors) or errors[0]
        raise ManifestError(f"model.json field '{_field_path(err)}': {_explain(err)}")
    out = migrate(copy.deepcopy(data))
    for section, defaults in (("plan", _defaults_of(Plan)), ("inference", _defaults_of(InferenceDefaults))):
        target = out.setdefault(section, {})
        for key, value in defaults.items():
            target.setdefault(key, copy.deepcopy(value))
    for inp in out["inputs"]:
        if inp["normalization"]["scheme"] == "zscore":
            inp["normalization"].setdefault("nonzero_mask", ZSCORE_NONZERO_MASK_DEFAULT)
    return out


# Building --------------------------------------------------------------------------------------
def build_manifest(
    *,
    name: str,
    version: str,
    network: NetworkConfig | dict[str, Any],
    inputs: list[dict[str, Any]],
    plan: dict[str, Any],
    labels: list[dict[str, Any]],
    provenance: dict[str, Any],
    title: str | None = None,
    description: str | None = None,
    license: str = "",
    citation: str | None = None,
    regions: list[dict[str, Any]] | None = None,
    inference: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A manifest document (without the `weights` section, which `save_package` adds and then
    validates the whole). `inference` overrides single `InferenceDefaults` fields; the others are
    written out with their defaults so the package states how it runs. `card` is the model card as
    data (`unetrpp.quality.card` builds it)."""
    architecture = network.to_dict() if isinstance(network, NetworkConfig) else dict(network)
    manifest: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "name": name, "version": version}
    if title is not None:
        manifest["title"] = title
    if description is not None:
        manifest["description"] = description
    manifest["license"] = license
    if citation is not None:
        manifest["citation"] = citation
    defaults = InferenceDefaults().to_dict()
    defaults.pop("largest_component_labels")  # written only when a model uses it
    manifest.update({
        "architecture": architecture,
        "inputs": copy.deepcopy(inputs),
        "plan": copy.deepcopy(plan),
        "labels": copy.deepcopy(labels),
        "inference": {**defaults, **copy.deepcopy(inference or {})},
        "provenance": copy.deepcopy(provenance),
    })
    if regions:
        manifest["regions"] = copy.deepcopy(regions)
    if card:
        manifest["card"] = copy.deepcopy(card)
    return manifest


# Reading from a package (folder or zip) --------------------------------------------------------
#: Bounds on a package zip, checked from its central directory before anything is inflated. The
#: weights limit is far above any UNETR++ model (the official synapse weights are ~170 MB);
#: UNETRPP_MAX_WEIGHTS_BYTES raises it for a trusted bigger package.
MAX_WEIGHTS_BYTES = int(os.environ.get("UNETRPP_MAX_WEIGHTS_BYTES", 2 << 30))
MAX_OTHER_FILE_BYTES = 16 << 20  # model card, README, licence
#: a stored ONNX export (float32: about the weights' size; int8: a quarter of it)
MAX_ONNX_BYTES = int(os.environ.get("UNETRPP_MAX_ONNX_BYTES", 2 << 30))
MAX_ZIP_ENTRIES = 64
MAX_ZIP_RATIO = 100  # uncompressed/compressed size of one entry: weights compress about 1.1:1


def check_package_zip(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse a zip whose directory announces too many entries, an entry larger than its limit
    (model.json MAX_MANIFEST_BYTES, weights MAX_WEIGHTS_BYTES, any other MAX_OTHER_FILE_BYTES) or
    a compression ratio above MAX_ZIP_RATIO (a zip bomb). Python's zipfile never inflates an entry
    past the size its directory states (and checks its CRC), so these bounds hold while reading."""
    members = zf.infolist()
    if len(members) > MAX_ZIP_ENTRIES:
        raise PackageError(f"{path} holds {len(members)} entries; a model package zip may hold at most {MAX_ZIP_ENTRIES}")
    names = [m.filename for m in members]
    if len(set(names)) != len(names):  # which copy a reader takes differs between tools
        raise PackageError(f"{path} holds the same file name twice ({sorted({n for n in names if names.count(n) > 1})})")
    for m in members:
        name = m.filename.rsplit("/", 1)[-1]
        limit, setting = {MANIFEST_FILE: (MAX_MANIFEST_BYTES, ""),
                          WEIGHTS_FILE: (MAX_WEIGHTS_BYTES, " (UNETRPP_MAX_WEIGHTS_BYTES raises it for a trusted package)"),
                          **{f: (MAX_ONNX_BYTES, " (UNETRPP_MAX_ONNX_BYTES raises it for a trusted package)")
                             for f in ONNX_FILES.values()},
                          }.get(name, (MAX_OTHER_FILE_BYTES, ""))
        if m.file_size > limit:
            raise PackageError(
                f"{path}: entry {m.filename!r} would inflate to {m.file_size} bytes, over the limit of {limit} bytes"
                f"{setting}; the package was not unpacked"
            )
        if m.compress_type != zipfile.ZIP_STORED and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
            raise PackageError(
                f"{path}: entry {m.filename!r} would inflate {m.compress_size} bytes to {m.file_size} "
                f"(more than {MAX_ZIP_RATIO}:1, a zip bomb?); the package was not unpacked"
            )


@contextlib.contextmanager
def package_zip_entry(path: Path, name: str) -> Iterator[tuple[zipfile.ZipInfo, IO[bytes]]]:
    """(directory entry, open stream) of one file of a package zip, opened only after the zip's
    directory passed `check_package_zip`. A damaged or encrypted zip raises PackageError."""
    try:
        with zipfile.ZipFile(path) as zf:
            check_package_zip(zf, path)
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise PackageError(f"{path} is not a model package: the zip has no {name}") from None
            with zf.open(info) as fh:
                yield info, fh
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:  # RuntimeError: encrypted
        raise PackageError(f"{path} is a damaged zip file: {exc}") from None


def read_manifest_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw model.json of a package folder or zip, as JSON (not validated, but bounded: see
    `load_json`). Raises PackageError or ManifestError with the path in the message."""
    path = Path(path)
    where = f"{path}/{MANIFEST_FILE}"
    if path.is_dir():
        file = path / MANIFEST_FILE
        if not file.is_file():
            raise PackageError(f"{path} is not a model package: it has no {MANIFEST_FILE}")
        with open(file, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    elif zipfile.is_zipfile(path):
        with package_zip_entry(path, MANIFEST_FILE) as (info, fh):
            if info.file_size > MAX_MANIFEST_BYTES:  # from the zip directory, before inflating
                raise ManifestError(f"{where} is {info.file_size} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes")
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    elif not path.exists():
        raise PackageError(f"model package {path} does not exist")
    else:
        raise PackageError(f"{path} is neither a package folder nor a zip file")
    return load_json(data, where)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate only the manifest of a package (cheap, no torch: used to list models)."""
    return Manifest(read_manifest_json(path))
