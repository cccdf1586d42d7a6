"""Models as the Slicer module sees them: installed packages (UNETRPP_HOME/models) and catalogue
entries, read as plain JSON so that the module loads without torch. Installing, downloading and
removing go through the engine's `unetrpp models` command in a separate process (see logic.py);
the cache layout and catalogue format are the engine's (unetrpp/catalogue.py, docs/CONTRACTS.md).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODULE_DIR = Path(__file__).resolve().parents[1]  # UNETRPlusPlus/ (holds unetrpp/ and Resources/)


def home() -> Path:
    env = os.environ.get("UNETRPP_HOME")
    return Path(env).expanduser() if env else Path.home() / ".unetrpp"


def catalogue_path() -> Path | None:
    env = os.environ.get("UNETRPP_CATALOGUE")
    if env:
        return Path(env)
    for candidate in (MODULE_DIR.parent / "Resources" / "models.json", MODULE_DIR / "Resources" / "models.json"):
        if candidate.is_file():
            return candidate
    return None


def bundled_models_dir() -> Path | None:
    """Models shipped with the extension (the demo model), used in place; as unetrpp.catalogue."""
    env = os.environ.get("UNETRPP_BUNDLED_MODELS")
    if env is not None:
        return Path(env).expanduser() if env else None
    for candidate in (MODULE_DIR.parent / "Resources" / "models", MODULE_DIR / "Resources" / "models"):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class ModelInput:
    name: str
    modality: str
    description: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelLabel:
    value: int
    name: str
    color: tuple[int, int, int]
    terminology: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelRegion:
    name: str
    labels: tuple[int, ...]
    color: tuple[int, int, int]
    terminology: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One choice in the model selector: an installed package, or a catalogue entry not installed."""

    name: str
    title: str
    version: str = ""
    description: str = ""
    installed: bool = False
    path: Path | None = None
    inputs: tuple[ModelInput, ...] = ()
    labels: tuple[ModelLabel, ...] = ()
    regions: tuple[ModelRegion, ...] = ()
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


def _color(raw: Any) -> tuple[int, int, int]:
    return tuple(int(c) for c in raw[:3]) if isinstance(raw, (list, tuple)) and len(raw) >= 3 else (128, 128, 128)  # type: ignore[return-value]


def read_package_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """model.json of a package folder or zip, as JSON (the engine validates it when it runs)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "model.json").read_text(encoding="utf-8"))
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "model.json"]
        if not names:
            raise ValueError(f"{path} holds no model.json")
        return json.loads(zf.read(names[0]).decode("utf-8"))


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
        inputs=tuple(
            ModelInput(str(i.get("name")), str(i.get("modality", "")), str(i.get("description", "")),
                       tuple(str(a).lower() for a in i.get("aliases", ())))
            for i in data.get("inputs", [])
        ),
        labels=tuple(
            ModelLabel(int(l["value"]), str(l["name"]), _color(l.get("color")), l.get("terminology"))
            for l in data.get("labels", [])
        ),
        regions=tuple(
            ModelRegion(str(r["name"]), tuple(int(v) for v in r["labels"]), _color(r.get("color")), r.get("terminology"))
            for r in data.get("regions", [])
        ),
        licence=str(data.get("license", "")),
        size=size,
        citation=str(data.get("citation", "")),
        source=str(data.get("provenance", {}).get("source", "")),
        variant=str(data.get("architecture", {}).get("variant", "")),
        bundled=bundled,
        data=data,
    )


def installed_models() -> list[ModelInfo]:
    return _packages_in(home() / "models")


def bundled_models() -> list[ModelInfo]:
    root = bundled_models_dir()
    return _packages_in(root, bundled=True) if root is not None else []


def _packages_in(root: Path, bundled: bool = False) -> list[ModelInfo]:
    out: list[ModelInfo] = []
    if not root.is_dir():
        return out
    for sub in sorted(root.iterdir()):
        if sub.name.startswith(".") or not (sub / "model.json").is_file():
            continue
        try:
            out.append(model_from_manifest(read_package_manifest(sub), sub, bundled=bundled))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping unreadable model package %s: %s", sub, exc)
    return out


def catalogue_models(path: Path | None = None) -> list[ModelInfo]:
    file = path or catalogue_path()
    if file is None or not Path(file).is_file():
        return []
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("model catalogue %s is unreadable: %s", file, exc)
        return []
    out = []
    for e in data.get("models", []):
        fmt = e.get("format", "package-zip")
        out.append(ModelInfo(
            name=str(e["name"]), title=str(e.get("title", e["name"])), version=str(e.get("version", "")),
            description=str(e.get("summary", "")), installed=False,
            inputs=tuple(ModelInput(str(n), "") for n in e.get("inputs", [])),
            licence=str(e.get("licence", "")), size=e.get("size"), url=str(e.get("url") or ""),
            sha256=e.get("sha256"), downloadable=fmt == "package-zip" and bool(e.get("url")) and bool(e.get("sha256")),
            variant=str(e.get("variant", "")), source=fmt, data=e,
        ))
    return out


def available_models(catalogue: Path | None = None) -> list[ModelInfo]:
    """Installed models first, then the bundled ones (an installed model of the same name wins),
    then catalogue entries that are not installed."""
    installed = installed_models()
    names = {m.name for m in installed}
    installed += [m for m in bundled_models() if m.name not in names]
    names = {m.name for m in installed}
    return installed + [m for m in catalogue_models(catalogue) if m.name not in names]


def format_size(size: int | None) -> str:
    if not size:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
