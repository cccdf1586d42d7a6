"""The model manifest (`model.json`): validated against a versioned JSON Schema, with typed access.

The manifest carries everything needed to run a model the way it was trained: network settings,
inputs and their normalisation, the preprocessing plan, labels (names, colours, SNOMED-CT
terminology), inference defaults, provenance and licence.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from .errors import ManifestError
from .network import NetworkConfig, NetworkConfigError

SCHEMA_VERSION = 1


@lru_cache(maxsize=None)
def manifest_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    text = resources.files("unetrpp").joinpath(f"schema/model-v{version}.schema.json").read_text()
    return json.loads(text)


def _field_path(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(top level)"


def _fill_defaults(schema_part: dict[str, Any], data: dict[str, Any]) -> None:
    for key, sub in schema_part.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])


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
    normalization: dict[str, Any]
    description: str = ""
    aliases: tuple[str, ...] = ()


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
        return [
            InputSpec(
                name=i["name"],
                modality=i["modality"],
                normalization=i["normalization"],
                description=i.get("description", ""),
                aliases=tuple(i.get("aliases", ())),
            )
            for i in self.data["inputs"]
        ]

    @property
    def labels(self) -> list[Label]:
        return [
            Label(l["value"], l["name"], tuple(l["color"]), l.get("terminology"))  # type: ignore[arg-type]
            for l in self.data["labels"]
        ]

    @property
    def regions(self) -> list[Region]:
        return [
            Region(r["name"], tuple(r["labels"]), tuple(r["color"]), r.get("terminology"))  # type: ignore[arg-type]
            for r in self.data.get("regions", [])
        ]

    @property
    def plan(self) -> dict[str, Any]:
        return self.data["plan"]

    @property
    def inference(self) -> dict[str, Any]:
        return self.data["inference"]

    @property
    def weights_sha256(self) -> str:
        return self.data["weights"]["sha256"]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=2) + "\n"

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


def validate_manifest(data: Any) -> dict[str, Any]:
    """Validate against the schema; return a copy with defaults filled. Raises ManifestError
    naming the first offending field."""
    if not isinstance(data, dict):
        raise ManifestError("model.json must hold a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"model.json field 'schema_version' is {version!r}; this version of unetrpp reads "
            f"schema version {SCHEMA_VERSION}. Update unetrpp or re-export the package."
        )
    schema = manifest_schema(version)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        err = jsonschema.exceptions.best_match(errors) or errors[0]
        raise ManifestError(f"model.json field '{_field_path(err)}': {err.message}")
    out = copy.deepcopy(data)
    for section in ("plan", "inference"):
        out.setdefault(section, {})
        _fill_defaults(schema["properties"][section], out[section])
    for inp in out["inputs"]:
        if inp["normalization"]["scheme"] == "zscore":
            inp["normalization"].setdefault("nonzero_mask", False)
    return out
