"""The model catalogue and the local model cache.

- Catalogue: `Resources/models.json` (entries: name, version, title, summary, url, sha256, size,
  variant, inputs, licence, format). An entry is *downloadable* only when it has a direct URL and
  a known SHA256; official checkpoints whose SHA256 nobody has published are listed so the user
  knows where to get them, and are installed with "install from file" (`install_official`).
- Cache: `UNETRPP_HOME` (default `~/.unetrpp`): `models/<name>/` installed packages (folders),
  `downloads/` finished downloads (kept as a cache, re-verified before each use).

Every install goes through the same checks: the file's SHA256 (when one is known) BEFORE it is
unpacked; a zip may only contain the package's own files (no paths, no links); the manifest is
validated and the weights are checked against the SHA256 the manifest records; the package then
appears in `models/` atomically (staged beside it and renamed). A failed download or check leaves
nothing behind.

Listing reads the manifests as plain JSON (no torch import), so it is cheap; installing imports
the package machinery lazily.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .atomic import remove_path, replace_path, staged_file, staging_dir
from .errors import MODEL, CancelledError, IntegrityError, ManifestError, OutputExistsError, PackageError, UnetrppError
from .hashing import check_sha256, sha256_file
from .jsonio import read_json_file
from .manifest import MANIFEST_FILE, ONNX_FILES, WEIGHTS_FILE, check_package_zip, read_manifest, read_manifest_json
from .progress import CancelToken, Event, null_sink

log = logging.getLogger(__name__)

CATALOGUE_SCHEMA_VERSION = 1
PACKAGE_FILES = (MANIFEST_FILE, WEIGHTS_FILE, "MODEL_CARD.md", "README.md", "LICENSE", *ONNX_FILES.values())
FORMATS = ("package-zip", "official-checkpoint")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*\Z")
_CHUNK = 1 << 16


class CatalogueError(UnetrppError):
    """The catalogue file is missing or malformed, or names no such model."""

    category = MODEL


# Cache locations ------------------------------------------------------------------------------
def home() -> Path:
    """The cache root: $UNETRPP_HOME, else ~/.unetrpp."""
    env = os.environ.get("UNETRPP_HOME")
    return Path(env).expanduser() if env else Path.home() / ".unetrpp"


def models_dir() -> Path:
    return home() / "models"


def downloads_dir() -> Path:
    return home() / "downloads"


def bundled_models_dir() -> Path | None:
    """Models shipped with the project (the demo model): $UNETRPP_BUNDLED_MODELS (empty: none), else
    Resources/models of a source checkout, else <module dir>/Resources/models in the Slicer extension.
    They are read-only: used in place, never copied into the cache, never removed."""
    env = os.environ.get("UNETRPP_BUNDLED_MODELS")
    if env is not None:
        return Path(env).expanduser() if env else None
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "Resources" / "models", here.parent / "Resources" / "models"):
        if candidate.is_dir():
            return candidate
    return None


# Catalogue ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    version: str
    title: str
    summary: str
    url: str
    sha256: str | None
    size: int | None
    variant: str
    inputs: tuple[str, ...]
    licence: str
    format: str = "package-zip"
    homepage: str = ""
    notes: str = ""

    @property
    def downloadable(self) -> bool:
        """True when the file can be fetched and verified automatically."""
        return self.format == "package-zip" and bool(self.url) and bool(self.sha256)

    @property
    def install_hint(self) -> str:
        if self.downloadable:
            return f"unetrpp models install {self.name}"
        if self.format == "official-checkpoint":
            return (
                f"download the official checkpoint from {self.url} (no published SHA256, so it "
                f"cannot be fetched and verified automatically), then import it from file: "
                f"unetrpp models install CHECKPOINT --official {self.variant}"
            )
        return f"no verifiable download for {self.name}; install a package file with: unetrpp models install PATH"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "title": self.title, "summary": self.summary,
            "url": self.url, "sha256": self.sha256, "size": self.size, "variant": self.variant,
            "inputs": list(self.inputs), "licence": self.licence, "format": self.format,
            "homepage": self.homepage, "notes": self.notes, "downloadable": self.downloadable,
        }


def default_catalogue_path() -> Path | None:
    """$UNETRPP_CATALOGUE, else Resources/models.json of a source checkout, else the copy the
    Slicer extension installs beside the engine (<module dir>/Resources/models.json)."""
    env = os.environ.get("UNETRPP_CATALOGUE")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "Resources" / "models.json", here.parent / "Resources" / "models.json"):
        if candidate.is_file():
            return candidate
    return None


def _entry(raw: Any, where: str) -> CatalogueEntry:
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where}: each model entry must be a JSON object")

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in raw or not isinstance(raw[key], kind):
            raise CatalogueError(f"{where}: field '{key}' is missing or not a {getattr(kind, '__name__', kind)}")
        return raw[key]

    name = need("name", str)
    if not _NAME_RE.match(name):
        raise CatalogueError(f"{where}: name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
    sha = raw.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
        raise CatalogueError(f"{where} ({name}): 'sha256' must be 64 hex digits or null")
    size = raw.get("size")
    if size is not None and not (isinstance(size, int) and size > 0):
        raise CatalogueError(f"{where} ({name}): 'size' must be a positive integer (bytes) or null")
    fmt = raw.get("format", "package-zip")
    if fmt not in FORMATS:
        raise CatalogueError(f"{where} ({name}): 'format' must be one of {FORMATS}")
    inputs = need("inputs", list)
    return CatalogueEntry(
        name=name, version=need("version", str), title=raw.get("title", name), summary=need("summary", str),
        url=raw.get("url") or "", sha256=sha.lower() if sha else None, size=size, variant=need("variant", str),
        inputs=tuple(str(i) for i in inputs), licence=need("licence", str), format=fmt,
        homepage=raw.get("homepage", ""), notes=raw.get("notes", ""),
    )


def load_catalogue(path: str | os.PathLike[str] | None = None) -> list[CatalogueEntry]:
    """Read the catalogue. With no path: `default_catalogue_path()`; none found -> empty list."""
    file = Path(path) if path is not None else default_catalogue_path()
    if file is None:
        log.warning("no model catalogue found (set UNETRPP_CATALOGUE); only installed models are listed")
        return []
    if not file.exists():
        raise CatalogueError(f"model catalogue {file} does not exist")
    data = read_json_file(file, f"model catalogue {file}", error=CatalogueError)  # the one bounded reader
    if not isinstance(data, dict) or data.get("schema_version") != CATALOGUE_SCHEMA_VERSION:
        raise CatalogueError(f"model catalogue {file}: expected an object with schema_version {CATALOGUE_SCHEMA_VERSION}")
    entries = [_entry(raw, f"{file} models[{i}]") for i, raw in enumerate(data.get("models", []))]
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CatalogueError(f"model catalogue {file}: duplicate names {dupes}")
    return entries


def catalogue_entry(name: str, catalogue: list[CatalogueEntry] | None = None) -> CatalogueEntry:
    entries = load_catalogue() if catalogue is None else catalogue
    for e in entries:
        if e.name == name:
            return e
    known = ", ".join(e.name for e in entries) or "(catalogue is empty)"
    raise CatalogueError(f"no model called {name!r} in the catalogue; known: {known}")


# Installed models -----------------------------------------------------------------------------
@dataclass(frozen=True)
class InstalledModel:
    name: str
    version: str
    title: str
    description: str
    path: Path
    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    licence: str
    size: int
    source: str = ""
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    problem: str = ""  # why the package is broken (it cannot be used); "" when it reads

    @property
    def broken(self) -> bool:
        return bool(self.problem)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name, "version": self.version, "title": self.title, "description": self.description,
            "path": str(self.path), "inputs": list(self.inputs), "labels": list(self.labels),
            "licence": self.licence, "size": self.size, "source": self.source,
        }
        if self.problem:
            out["problem"] = self.problem
        return out


def _describe_package_dir(path: Path) -> InstalledModel:
    """What a listing shows of a package folder, read cheaply (bounded JSON, no validation). A
    package whose manifest cannot be read or has the wrong shape is described as broken (with the
    reason) instead of failing the whole listing."""
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    try:
        data = read_manifest_json(path)
        if not isinstance(data, dict):
            raise ManifestError(f"{path}/{MANIFEST_FILE} must hold a JSON object, not {type(data).__name__}")
        inputs, labels = data.get("inputs", []), data.get("labels", [])
        if not (isinstance(inputs, list) and all(isinstance(i, dict) for i in inputs)
                and isinstance(labels, list) and all(isinstance(l, dict) for l in labels)
                and isinstance(data.get("provenance", {}), dict)):
            raise ManifestError(f"{path}/{MANIFEST_FILE}: 'inputs', 'labels' or 'provenance' has the wrong type")
    except (PackageError, ManifestError) as exc:
        return InstalledModel(name=path.name, version="?", title="(broken package)", description="", path=path,
                              inputs=(), labels=(), licence="", size=size, problem=str(exc))
    return InstalledModel(
        name=_shown(data.get("name", path.name)), version=_shown(data.get("version", "?")),
        title=_shown(data.get("title", data.get("name", path.name))), description=_shown(data.get("description", ""), 2000),
        path=path, inputs=tuple(_shown(i.get("name", "?")) for i in inputs),
        labels=tuple(_shown(l.get("name", "?")) for l in labels),
        licence=_shown(data.get("license", ""), 2000), size=size,
        source=_shown(data.get("provenance", {}).get("source", "")), data=data,
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _shown(value: Any, limit: int = 200) -> str:
    """A manifest string as a listing prints it: the listing does not validate (see the module
    docstring), so control characters (terminal escapes, line breaks) are replaced and the length
    is bounded."""
    text = _CONTROL.sub(" ", str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def installed_models() -> list[InstalledModel]:
    """Packages under models/ (sorted by name); broken ones are listed with their `problem`."""
    return _packages_in(models_dir())


def bundled_models() -> list[InstalledModel]:
    """Packages shipped with the project (see bundled_models_dir), sorted by name."""
    root = bundled_models_dir()
    return _packages_in(root) if root is not None else []


def _packages_in(root: Path) -> list[InstalledModel]:
    out = []
    if root.is_dir():
        for sub in sorted(root.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            try:
                out.append(_describe_package_dir(sub))
            except OSError as exc:  # unreadable folder
                log.warning("skipping %s: %s", sub, exc)
    return out


def installed_path(name: str) -> Path | None:
    path = models_dir() / name
    return path if _NAME_RE.match(name) and (path / MANIFEST_FILE).is_file() else None


def bundled_path(name: str) -> Path | None:
    root = bundled_models_dir()
    if root is None or not _NAME_RE.match(name):
        return None
    path = root / name
    return path if (path / MANIFEST_FILE).is_file() else None


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """A package path as given, else the installed package of that name, else the bundled one
    (an installed model of the same name takes precedence)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    found = installed_path(str(name_or_path)) or bundled_path(str(name_or_path))
    if found is not None:
        return found
    installed = ", ".join(m.name for m in installed_models() + bundled_models()) or "none"
    raise PackageError(
        f"model {str(name_or_path)!r} is neither a package path nor an installed model (installed: "
        f"{installed}); install it with `unetrpp models install`"
    )


# Install ---------------------------------------------------------------------------------------
def _safe_extract(zip_path: Path, dest: Path) -> None:
    """Extract a package zip: only plain top-level package files (optionally inside one folder);
    anything with another path, a link or an absurd size is refused."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            _extract_members(zf, zip_path, dest)
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:  # RuntimeError: encrypted
        raise PackageError(f"{zip_path} is a damaged zip file: {exc}") from None


def _extract_members(zf: zipfile.ZipFile, zip_path: Path, dest: Path) -> None:
    check_package_zip(zf, zip_path)  # sizes and ratios from the directory, before inflating
    members = [m for m in zf.infolist() if not m.is_dir()]
    prefixes = {m.filename.split("/")[0] for m in members if "/" in m.filename}
    prefix = (prefixes.pop() + "/") if len(prefixes) == 1 and all("/" in m.filename for m in members) else ""
    for m in members:  # every name is checked before anything is written
        rel = m.filename[len(prefix):]
        is_link = (m.external_attr >> 16) & 0o170000 == 0o120000
        if rel not in PACKAGE_FILES or is_link or "\\" in m.filename or m.filename.startswith("/"):
            raise PackageError(
                f"{zip_path} is not a plain model package: it holds {m.filename!r}; a package zip "
                f"may only contain {', '.join(PACKAGE_FILES)}"
            )
    for m in members:
        with zf.open(m) as src, open(dest / m.filename[len(prefix):], "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)


def _verify_package_dir(path: Path) -> str:
    """Validate the manifest and the weights' SHA256; return the package name."""
    manifest = read_manifest(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise PackageError(f"model package {path} has no {WEIGHTS_FILE}")
    check_sha256(sha256_file(weights), manifest.weights_sha256, f"the weights of model package {manifest.name}")
    return manifest.name


def _commit(staged: Path, name: str, overwrite: bool) -> Path:
    target = models_dir() / name
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"model {name!r} is already installed at {target}; remove it first "
            f"(unetrpp models remove {name}) or install with --overwrite"
        )
    replace_path(staged, target, overwrite=overwrite)
    log.info("installed model %s at %s", name, target)
    return target


def install_package(
    source: str | os.PathLike[str],
    expected_sha256: str | None = None,
    overwrite: bool = False,
    expected_name: str | None = None,
) -> Path:
    """Install a package (zip file or folder) into the cache. With `expected_sha256` the zip's
    hash is checked before it is unpacked. Returns the installed folder."""
    source = Path(source)
    if not source.exists():
        raise PackageError(f"model package {source} does not exist")
    if expected_sha256 is not None:
        if not source.is_file():
            raise PackageError(f"{source}: a SHA256 can only be checked for a package file (.zip)")
        check_sha256(sha256_file(source), expected_sha256, f"model package file {source.name}")
    with staging_dir(models_dir()) as staged_root:
        staged = staged_root / "package"
        staged.mkdir()
        if source.is_dir():
            if not (source / MANIFEST_FILE).is_file():
                raise PackageError(f"{source} is not a model package: it has no {MANIFEST_FILE}")
            for name in PACKAGE_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, staged / name)
        elif zipfile.is_zipfile(source):
            _safe_extract(source, staged)
        else:
            raise PackageError(
                f"{source} is neither a model package folder nor a package .zip; for an official "
                "UNETR++ checkpoint (.model) use: unetrpp models install CHECKPOINT --official VARIANT"
            )
        name = _verify_package_dir(staged)
        if expected_name is not None and name != expected_name:
            raise PackageError(f"{source} holds model {name!r}, but the catalogue entry is {expected_name!r}")
        if not _NAME_RE.match(name):
            raise PackageError(f"model name {name!r} is not a valid package name")
        return _commit(staged, name, overwrite)


def install_official(
    checkpoint: str | os.PathLike[str], variant: str, name: str | None = None, overwrite: bool = False
) -> Path:
    """Import an official UNETR++ checkpoint (safely, see `unetrpp.official`) into the cache."""
    from .official import import_official_checkpoint

    with staging_dir(models_dir()) as staged_root:
        out = import_official_checkpoint(checkpoint, variant, staged_root / "package", name=name)
        pkg_name = _verify_package_dir(out)
        return _commit(out, pkg_name, overwrite)


def remove_model(name: str) -> Path:
    """Delete an installed model. Returns the removed path."""
    path = installed_path(name)
    if path is None and bundled_path(name) is not None:
        raise PackageError(f"{name!r} is bundled with UNETR++ ({bundled_path(name)}) and cannot be removed")
    if path is None:
        installed = ", ".join(m.name for m in installed_models()) or "none"
        raise PackageError(f"no installed model called {name!r} (installed: {installed})")
    remove_path(path)
    log.info("removed model %s", name)
    return path


# Download --------------------------------------------------------------------------------------
def download(
    url: str,
    dest: Path,
    expected_sha256: str,
    expected_size: int | None = None,
    sink: Callable[[Event], None] = null_sink,
    cancel: CancelToken | None = None,
    timeout: float = 60.0,
) -> Path:
    """Stream `url` into `dest`, hashing on the fly. The file is written under a temporary name and
    renamed only after its size and SHA256 match; on any failure nothing is left at `dest`.
    No resume: an interrupted download starts again from the beginning."""
    import hashlib

    digest = hashlib.sha256()
    done = 0
    started = time.perf_counter()
    with staged_file(dest) as tmp:
        sink(Event("stage", stage="download", message=f"downloading {url}"))
        request = urllib.request.Request(url, headers={"User-Agent": "unetrpp"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, checked below)
        except urllib.error.HTTPError as exc:
            raise PackageError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PackageError(f"download of {url} failed: {getattr(exc, 'reason', exc)}; check the network or install from file") from None
        with response, open(tmp, "wb") as out:
            header = response.headers.get("Content-Length")
            total = int(header) if header and header.isdigit() else expected_size
            last = 0.0
            while True:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("download cancelled")
                try:
                    block = response.read(_CHUNK)
                except (OSError, ValueError) as exc:
                    raise PackageError(f"download of {url} was interrupted after {done} bytes: {exc}") from None
                if not block:
                    break
                out.write(block)
                digest.update(block)
                done += len(block)
                now = time.perf_counter()
                if now - last > 0.2 or (total and done >= total):
                    last = now
                    rate = done / max(now - started, 1e-6)
                    eta = (total - done) / rate if total else None
                    sink(Event("progress", stage="download", done=done, total=total or 0,
                               fraction=done / total if total else None, eta_s=eta))
        if expected_size is not None and done != expected_size:
            raise IntegrityError(
                f"download of {url} is {done} bytes, expected {expected_size}: the transfer was "
                "incomplete or the file changed on the server. It has not been used; try again."
            )
        check_sha256(digest.hexdigest(), expected_sha256, f"the download of {url}")
    return dest


def install_from_catalogue(
    name: str,
    catalogue: list[CatalogueEntry] | None = None,
    overwrite: bool = False,
    sink: Callable[[Event], None] = null_sink,
    cancel: CancelToken | None = None,
) -> Path:
    """Download (or reuse a verified cached download of) a catalogue entry and install it."""
    entry = catalogue_entry(name, catalogue)
    if not entry.downloadable:
        raise CatalogueError(f"model {name!r} cannot be downloaded automatically: {entry.install_hint}")
    if installed_path(entry.name) is not None and not overwrite:
        raise OutputExistsError(
            f"model {entry.name!r} is already installed; remove it first or install with --overwrite"
        )
    if not entry.url.startswith(("https://", "http://")):
        raise CatalogueError(f"model {name!r}: only http(s) URLs can be downloaded, got {entry.url!r}")
    cached = downloads_dir() / f"{entry.name}-{entry.version}.zip"
    if cached.is_file():
        if sha256_file(cached) == entry.sha256:
            log.info("using the cached download %s", cached)
        else:
            log.warning("cached download %s fails its SHA256 check; downloading again", cached)
            cached.unlink()
    if not cached.is_file():
        download(entry.url, cached, entry.sha256 or "", entry.size, sink=sink, cancel=cancel)
    sink(Event("stage", stage="install", message=f"installing {entry.name}"))
    return install_package(cached, expected_sha256=entry.sha256, overwrite=overwrite, expected_name=entry.name)


def install(
    path_or_name: str,
    official_variant: str | None = None,
    overwrite: bool = False,
    sink: Callable[[Event], None] = null_sink,
    cancel: CancelToken | None = None,
    catalogue: list[CatalogueEntry] | None = None,
) -> Path:
    """`unetrpp models install`: a path (package folder/zip, or with `official_variant` an official
    checkpoint) or a catalogue name."""
    path = Path(path_or_name)
    if official_variant is not None:
        return install_official(path, official_variant, overwrite=overwrite)
    if path.exists():
        return install_package(path, overwrite=overwrite)
    if os.sep in str(path_or_name) or str(path_or_name).endswith((".zip", ".model", ".pth")):
        raise PackageError(f"model package {path_or_name} does not exist")
    return install_from_catalogue(str(path_or_name), catalogue, overwrite=overwrite, sink=sink, cancel=cancel)
