"""Models as the Slicer module sees them: installed and bundled packages and catalogue entries.

Everything here comes from the engine's torch-free contract layer (`unetrpp.catalogue` for the
cache, bundled models and catalogue; `unetrpp.manifest` for the typed inputs, labels and regions),
so the module loads without torch and keeps no copy of those rules. Installing, downloading and
removing go through the engine's `unetrpp models` command or functions (see logic.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetrpp import catalogue
from unetrpp.errors import UnetrppError
from unetrpp.manifest import InputSpec, Label, Region, inputs_of, labels_of, read_manifest_json, regions_of

log = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parents[1]  # UNETRPlusPlus/ (holds unetrpp/ and Resources/)

# The module's names for the engine's records (one definition, in unetrpp.manifest).
ModelInput = InputSpec
ModelLabel = Label
ModelRegion = Region
home = catalogue.home
bundled_models_dir = catalogue.bundled_models_dir


@dataclass(frozen=True)
class ModelInfo:
    """One choice in the model selector: an installed package, or a catalogue entry not installed."""

    name: str
    title: str
    version: str = ""
    description: str = ""
    installed: bool = False
    path: Path | None = None
    inputs: tuple[InputSpec, ...] = ()
    labels: tuple[Label, ...] = ()
    regions: tuple[Region, ...] = ()
    licence: str = ""
    size: int | None = None
    citation: str = ""
    source: str = ""
    url: str = ""
    sha256: str | None = None
    downloadable: bool = False
    variant: str = ""
    bundled: bool = False  # shipped with the extension: usable, not removable
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)


def read_package_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """model.json of a package folder or zip, as JSON (the engine validates it when it runs)."""
    return read_manifest_json(path)


def model_from_manifest(data: dict[str, Any], path: Path | None, installed: bool = True,
                        bundled: bool = False) -> ModelInfo:
    size = None
    if path is not None and path.is_dir():
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    elif path is not None and path.is_file():
        size = path.stat().st_size
    return ModelInfo(
        name=str(data.get("name", path.name if path else "?")),
        title=str(data.get("title") or data.get("name", "")),
        version=str(data.get("version", "")),
        description=str(data.get("description", "")),
        installed=installed,
        path=path,
        inputs=tuple(inputs_of(data)),
        labels=tuple(labels_of(data)),
        regions=tuple(regions_of(data)),
        licence=str(data.get("license", "")),
        size=size,
        citation=str(data.get("citation", "")),
        source=str(data.get("provenance", {}).get("source", "")),
        variant=str(data.get("architecture", {}).get("variant", "")),
        bundled=bundled,
        data=data,
    )


def _from_installed(models: list[catalogue.InstalledModel], bundled: bool = False) -> list[ModelInfo]:
    out = []
    for m in models:
        if m.broken:  # `unetrpp models` lists it with the reason; the module offers only usable models
            log.warning("skipping broken model package %s: %s", m.path, m.problem)
            continue
        try:
            out.append(model_from_manifest(m.data, m.path, bundled=bundled))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable model package %s: %s", m.path, exc)
    return out


def installed_models() -> list[ModelInfo]:
    return _from_installed(catalogue.installed_models())


def bundled_models() -> list[ModelInfo]:
    return _from_installed(catalogue.bundled_models(), bundled=True)


def catalogue_models(path: Path | None = None) -> list[ModelInfo]:
    """Catalogue entries (the engine's reader and checks); an unreadable catalogue lists nothing."""
    file = path or catalogue.default_catalogue_path()
    if file is None or not Path(file).is_file():
        return []
    try:
        entries = catalogue.load_catalogue(file)
    except UnetrppError as exc:
        log.warning("%s", exc)
        return []
    return [
        ModelInfo(
            name=e.name, title=e.title, version=e.version, description=e.summary, installed=False,
            inputs=tuple(InputSpec(n, "") for n in e.inputs), licence=e.licence, size=e.size, url=e.url,
            sha256=e.sha256, downloadable=e.downloadable, variant=e.variant, source=e.format, data=e.to_dict(),
        )
        for e in entries
    ]


def available_models(catalogue_file: Path | None = None) -> list[ModelInfo]:
    """Installed models first, then the bundled ones (an installed model of the same name wins),
    then catalogue entries that are not installed."""
    installed = installed_models()
    names = {m.name for m in installed}
    installed += [m for m in bundled_models() if m.name not in names]
    names = {m.name for m in installed}
    return installed + [m for m in catalogue_models(catalogue_file) if m.name not in names]


def format_size(size: int | None) -> str:
    if not size:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
