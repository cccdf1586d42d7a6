"""The one bounded JSON reader for every JSON document that comes from outside the process.

Model manifests (`model.json`), the model catalogue (`models.json`), job options and job files of
the server and request options all go through `load_json` (text or bytes already read) or
`read_json_file` (a file, read with the size bound). Without bounds a hostile document exhausts
memory or the Python stack (`json` and `jsonschema` recurse once per nesting level: 100,000 levels
end in RecursionError, a 500 on the server), so both are checked before parsing:

- at most `max_bytes` bytes (default `MAX_JSON_BYTES`, 1 MiB);
- at most `max_depth` nested arrays/objects (default `MAX_JSON_DEPTH`, 32), counted by a scan of
  the text outside strings, without recursion;
- UTF-8 text, no NaN/Infinity, no number out of the float range, no integer of over 4300 digits.

A violation raises `error` (a `UnetrppError` subclass chosen by the caller: `ManifestError` for a
manifest, `RequestError` for request options, ...) naming `what` and the limit. `check_depth`
applies the same depth bound to an object already built in memory.

Torch-free and standard-library only: part of the contract layer.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from .errors import RequestError

#: Size bound: real manifests and job options are a few kB.
MAX_JSON_BYTES = 1 << 20
#: Nesting bound: real manifests are about 6 levels deep.
MAX_JSON_DEPTH = 32

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def load_json(data: bytes | str, what: str, *, error: type[Exception] = RequestError,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON with bounds (see the module docstring). Raises `error` naming `what`."""
    if len(data) > max_bytes:
        raise error(f"{what} is larger than {max_bytes} bytes, the limit for this file")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8 text: {exc}") from None
    depth = deepest = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub("", data)):
        depth += 1 if match.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise error(f"{what} nests arrays/objects more than {max_depth} levels deep; at most {max_depth} "
                            "are accepted")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:  # pragma: no cover - the depth scan above prevents it
        raise error(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, the constants above, ints of over 4300 digits
        raise error(f"{what} is not valid JSON: {exc}") from None


def read_json_file(path: str | os.PathLike[str], what: str | None = None, *, error: type[Exception] = RequestError,
                   max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`load_json` of a file, reading at most `max_bytes + 1` bytes (a larger file is refused
    without being read whole). An unreadable file raises `error` too."""
    what = what or str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}") from None
    return load_json(data, what, error=error, max_bytes=max_bytes, max_depth=max_depth)


def check_depth(data: Any, what: str, *, error: type[Exception] = RequestError, max_depth: int = MAX_JSON_DEPTH) -> None:
    """The same depth bound on an object built in memory (iterative: a deep one cannot overflow)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise error(f"{what} nests arrays/objects more than {max_depth} levels deep; at most {max_depth} "
                            "are accepted")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))


__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "check_depth", "load_json", "read_json_file"]
