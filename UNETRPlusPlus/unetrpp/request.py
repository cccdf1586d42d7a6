"""`SegmentRequest`: what one segmentation is asked to do, validated once.

Every entry point (`unetrpp segment`, `unetrpp batch`, the worker, `pipeline.segment`, the server,
the remote client, the Slicer module) translates its own surface into one request and passes it
down unchanged to `Segmenter.segment(request, output_plan)`; no layer below re-validates:

    from unetrpp.request import SegmentRequest
    request = SegmentRequest.build(manifest, {"CT": "ct.nii.gz"}, roi="-120,-250,-900,150,30,-700",
                                   overlap=0.5, fast=True)
    request.inputs            # {"ct": Path("ct.nii.gz")}: manifest names, manifest order
    request.roi               # ((-120.0, -250.0, -900.0), (150.0, 30.0, -700.0))

- Surfaces: keyword arguments (`build`), argparse (the commands pass `args.roi` etc. to `build`),
  a JSON mapping from outside (`options_from_json`, through the one bounded JSON reader
  `unetrpp.jsonio`: a job's `options`, refused with a `RequestError` when it is not a bounded
  JSON object of known options with the right types).
- Inputs: `{name or alias: path or Image}` or one path/Image for a one-input model; names are
  resolved once, by `Manifest.resolve_inputs`. A path is checked to be there and reachable: a
  symbolic link loop, a missing file or an unreachable folder is an input error naming it.
- Options: `roi` ((xmin, ymin, zmin), (xmax, ymax, zmax)) in LPS mm, or the text
  "xmin,ymin,zmin,xmax,ymax,zmax" (`check_roi`, the one ROI check); `overlap` in [0, 1) or None
  (the model's default, applied by the Segmenter); `fast` (no mirroring); `series_uid`; `device`
  ("auto": the Segmenter's); `backend` ("auto"); `precision` ("auto"; "int8" runs the package's
  int8 export, an explicit option only, `unetrpp.backends`); `with_confidence`; `strict` (refuse a run whose
  input checks fail).

Torch-free (the contract layer): imports neither torch nor the image readers.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import InputImageError, RequestError

if TYPE_CHECKING:  # pragma: no cover
    from .image import Image
    from .manifest import Manifest

Roi = tuple[tuple[float, float, float], tuple[float, float, float]]

#: Every option of a request, with its default.
DEFAULTS: dict[str, Any] = {"roi": None, "overlap": None, "fast": False, "series_uid": None, "device": "auto",
                            "backend": "auto", "precision": "auto", "with_confidence": False, "strict": False}
#: The options a remote client may send as JSON (the server chooses the device).
JSON_OPTIONS = ("fast", "overlap", "roi", "series_uid", "backend", "precision", "with_confidence", "strict")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BACKEND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_PRECISION = ("auto", "f32", "bf16", "f16", "int8")  # unetrpp.backends.PRECISION_CHOICES (torch-free here)


# The one ROI check --------------------------------------------------------------------------------
def check_roi(roi: Any, given: str | None = None) -> Roi | None:
    """A region of interest ((xmin, ymin, zmin), (xmax, ymax, zmax)) in LPS mm as floats, or None.
    Accepts two corners (any sequences of 3 numbers) or the text "xmin,ymin,zmin,xmax,ymax,zmax"
    (commas or semicolons). Refuses anything else, including NaN and infinite bounds (which no
    comparison catches) and a max not above its min (RequestError)."""
    if roi is None:
        return None
    if isinstance(roi, str):
        given = given or f"--roi {roi!r}"
        try:
            values = [float(p) for p in roi.replace(";", ",").split(",")]
        except ValueError:
            values = []
        roi = (values[:3], values[3:]) if len(values) == 6 else ((), ())
    shown = given if given is not None else repr(roi)
    try:
        if isinstance(roi, (str, bytes)) or len(roi) != 2 or any(isinstance(c, (str, bytes)) for c in roi):
            raise TypeError
        lo, hi = (tuple(_number(v) for v in corner) for corner in roi)
    except (TypeError, ValueError):
        lo = hi = ()
    if len(lo) != 3 or len(hi) != 3:
        raise RequestError(f"region of interest {shown}: give six numbers xmin,ymin,zmin,xmax,ymax,zmax in mm "
                           "(LPS, as DICOM/ITK)")
    if not all(math.isfinite(v) for v in (*lo, *hi)):
        raise RequestError(f"region of interest {shown}: every bound must be a finite number of mm (not NaN or "
                           "infinite)")
    if any(b <= a for a, b in zip(lo, hi)):
        raise RequestError(f"region of interest {shown}: each max must be greater than its min")
    return lo, hi  # type: ignore[return-value]


def _number(v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError("a boolean is not a number")
    return float(v)


def parse_roi(text: str) -> Roi:
    """"xmin,ymin,zmin,xmax,ymax,zmax" (LPS mm) -> ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    roi = check_roi(str(text), given=f"--roi {text!r}")
    assert roi is not None
    return roi


# Options ------------------------------------------------------------------------------------------
def check_options(*, roi: Any = None, overlap: Any = None, fast: Any = False, series_uid: Any = None,
                  device: Any = "auto", backend: Any = "auto", precision: Any = "auto", with_confidence: Any = False,
                  strict: Any = False) -> dict[str, Any]:
    """Every option of a request validated and normalised (RequestError naming the option)."""
    if overlap is not None:
        if isinstance(overlap, bool):
            raise RequestError("overlap must be a number in [0, 1), not a boolean")
        try:
            overlap = float(overlap)
        except (TypeError, ValueError):
            raise RequestError(f"overlap {overlap!r} must be a number in [0, 1)") from None
        if not (math.isfinite(overlap) and 0 <= overlap < 1):
            raise RequestError(f"overlap {overlap} must be at least 0 and below 1")
    for name, value in (("fast", fast), ("with_confidence", with_confidence), ("strict", strict)):
        if not isinstance(value, bool):
            raise RequestError(f"option {name} must be true or false, not {value!r}")
    if series_uid is not None and (not isinstance(series_uid, str) or not series_uid.strip()
                                   or len(series_uid) > 64):
        raise RequestError(f"series UID {series_uid!r} must be a DICOM UID (text of at most 64 characters)")
    if device is None:
        device = "auto"
    elif not isinstance(device, str) and hasattr(device, "type"):  # a torch.device
        device = str(device)
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise RequestError(f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps")
    if not isinstance(backend, str) or not _BACKEND.match(backend):
        raise RequestError(f"backend {backend!r} must be a backend name such as auto or torch")
    if precision is None:
        precision = "auto"
    if not isinstance(precision, str) or precision.strip().lower() not in _PRECISION:
        raise RequestError(f"precision {precision!r}: choose one of {', '.join(_PRECISION)}")
    precision = precision.strip().lower()
    return {"roi": check_roi(roi), "overlap": overlap, "fast": fast,
            "series_uid": series_uid.strip() if series_uid is not None else None, "device": device,
            "backend": backend, "precision": precision, "with_confidence": with_confidence, "strict": strict}


def options_from_json(data: Any, *, allowed: Sequence[str] = JSON_OPTIONS, what: str = "options") -> dict[str, Any]:
    """Request options from a JSON object sent from outside (text, bytes or an already parsed
    mapping): read through the one bounded reader, unknown keys and wrong JSON types refused, then
    `check_options`. Returns the keyword arguments of `SegmentRequest.build`."""
    if isinstance(data, (str, bytes, bytearray)):
        from .jsonio import load_json

        data = load_json(data or "{}", what, error=RequestError)
    elif data is not None:
        from .jsonio import check_depth

        check_depth(data, what, error=RequestError)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RequestError(f"{what} must be a JSON object such as {{\"fast\": true}}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise RequestError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    if "overlap" in data and data["overlap"] is not None and (
            isinstance(data["overlap"], bool) or not isinstance(data["overlap"], (int, float))):
        raise RequestError("option overlap must be a number in [0, 1)")
    if data.get("series_uid") is not None and not isinstance(data["series_uid"], str):
        raise RequestError("option series_uid must be a string")
    values = {k: v for k, v in data.items() if v is not None}  # JSON null: the default
    return check_options(**values)


# Inputs -------------------------------------------------------------------------------------------
def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def check_input_path(path: str | os.PathLike[str], what: str) -> Path:
    """`path` as a Path, refused (InputImageError naming it) when it is empty, missing, a symbolic
    link loop or behind a folder this process cannot enter. Nothing is read."""
    text = os.fspath(path)
    if not text:
        raise InputImageError(f"{what}: the path is empty")
    if "\0" in text:
        raise InputImageError(f"{what}: the path contains a NUL character")
    p = Path(text)
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputImageError(f"input {p} is a symbolic link loop (it never reaches a file); give the file "
                                  "itself") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(p):
                raise InputImageError(f"input {p} is a symbolic link to {os.readlink(p)}, which does not exist") from None
            raise InputImageError(f"input {p} does not exist; check the path") from None
        if exc.errno == errno.EACCES:
            raise InputImageError(f"input {p} is not readable (permission denied on a folder on its way)") from None
        raise InputImageError(f"input {p}: {exc.strerror or exc}") from None
    return p


def _one_input(inputs: Any, manifest: "Manifest") -> dict[str, Any]:
    """One image/path for a one-input model -> {its input name: it}; a mapping as given."""
    names = [i.name for i in manifest.inputs]
    if isinstance(inputs, Mapping):
        if not inputs:
            raise InputImageError(
                f"no input given; model {manifest.name!r} takes "
                + (f"one input (INPUT or --input {names[0]}=PATH)" if len(names) == 1
                   else f"--input NAME=PATH for each of: {', '.join(names)}"))
        return dict(inputs)
    if inputs is None:
        return _one_input({}, manifest)
    if len(names) != 1:
        raise InputImageError(
            f"model {manifest.name!r} takes {len(names)} inputs; give each as --input NAME=PATH with "
            f"NAME in: {', '.join(names)}"
        )
    return {names[0]: inputs}


def resolve_inputs(inputs: Any, manifest: "Manifest") -> tuple[dict[str, Any], dict[str, str]]:
    """({manifest name: Path or Image} in manifest order, {manifest name: name as given}); paths
    checked by `check_input_path`."""
    given = _one_input(inputs, manifest)
    mapping = manifest.resolve_inputs([str(k) for k in given])
    resolved: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, value in given.items():
        name = mapping[str(key)]
        if _is_path(value):
            value = check_input_path(value, f"input {key!r}")
        elif value is None or isinstance(value, (bytes, int, float, bool)):
            raise InputImageError(f"input {key!r} must be a file path, a DICOM folder or an image, not {value!r}")
        resolved[name] = value
        labels[name] = str(key)
    order = [s.name for s in manifest.inputs]
    return {n: resolved[n] for n in order}, {n: labels[n] for n in order}


# The request --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentRequest:
    """A validated request (build it with `SegmentRequest.build`; see the module docstring)."""

    inputs: Mapping[str, Any]  # manifest input name -> Path or Image, manifest order (read-only)
    roi: Roi | None = None
    overlap: float | None = None  # None: the model's default (applied by the Segmenter)
    fast: bool = False  # no mirroring test-time augmentation
    series_uid: str | None = None
    device: str = "auto"  # "auto": the Segmenter's device
    backend: str = "auto"
    precision: str = "auto"  # "int8": the package's int8 export (explicit only)
    with_confidence: bool = False
    strict: bool = False
    model: str | None = None  # name of the manifest the inputs were resolved against
    given_names: Mapping[str, str] = field(default_factory=dict, compare=False)  # manifest name -> as given

    @classmethod
    def build(cls, manifest: "Manifest", inputs: Any, **options: Any) -> "SegmentRequest":
        """Resolve `inputs` against `manifest` and validate `options` (see `check_options`).
        Raises RequestError / InputImageError (category "input") naming what is wrong."""
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise RequestError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
        checked = check_options(**options)
        resolved, labels = resolve_inputs(inputs, manifest)
        return cls(inputs=MappingProxyType(resolved), model=manifest.name,
                   given_names=MappingProxyType(labels), **checked)

    def replace(self, **changes: Any) -> "SegmentRequest":
        """A copy with some options changed (validated again); inputs cannot change this way."""
        if "inputs" in changes:
            raise RequestError("build a new request for other inputs")
        options = {**self.options(), **changes}
        return dataclasses.replace(self, **check_options(**options))

    def options(self) -> dict[str, Any]:
        """The options (not the inputs) as keyword arguments of `build`."""
        return {k: getattr(self, k) for k in DEFAULTS}

    def options_json(self) -> dict[str, Any]:
        """The options as JSON (a report, a job file); `options_from_json` reads it back."""
        out = self.options()
        out["roi"] = None if self.roi is None else [list(self.roi[0]), list(self.roi[1])]
        return out

    def sources(self) -> list[Path]:
        """The input paths (in-memory images have none): what no output may replace."""
        return [v for v in self.inputs.values() if isinstance(v, Path)]

    def name_of(self, name: str) -> str:
        """An input as the user named it (for messages)."""
        return self.given_names.get(name, name)


__all__ = ["DEFAULTS", "JSON_OPTIONS", "Roi", "SegmentRequest", "check_input_path", "check_options", "check_roi",
           "options_from_json", "parse_roi", "resolve_inputs"]
