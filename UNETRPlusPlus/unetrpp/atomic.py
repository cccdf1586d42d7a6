"""Atomic outputs: the one way the engine puts a file or folder where a user or another process
may read it.

Everything is first written under a temporary name in the target's own folder (same file system,
so the final `os.replace` is atomic) and moved into place only once complete. A reader therefore
sees the previous state or the whole new output, never a part; a failure or cancellation leaves
nothing behind (temporary names start with "." and are removed).

- `StagedOutputs`: several files that appear together (segmentation + report + probabilities):
  `path_for(target)` gives the temporary path to write, `commit()` moves all of them into place,
  `cleanup()` (always, in `finally`) removes what was not committed. Also a context manager that
  commits on success and cleans up on any exception.
- `staged_file(target)`: one file written by a callback or a streaming writer (downloads).
- `write_text` / `write_bytes`: one small file in one call.
- `replace_path(staged, target, overwrite)`: move a complete file or folder (a model package) into
  place; an existing target is only replaced with `overwrite`, and is restored if the move fails.
- `remove_path(path)`: make a file or folder disappear atomically, then delete it.

Refusing to overwrite (`OutputExistsError`) is checked when the output is committed, as well as by
callers before any work starts (see `unetrpp.outputs.OutputPlan`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError

TEMP_PREFIX = ".unetrpp-partial-"


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; choose another path or allow overwriting")


class StagedOutputs:
    """Files written beside their targets under temporary names, renamed into place on `commit`."""

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._dirs: dict[Path, Path] = {}
        self._files: list[tuple[Path, Path]] = []

    def path_for(self, target: str | os.PathLike[str]) -> Path:
        """A temporary path (same file name, in a private folder beside `target`) to write to."""
        target = Path(target)
        parent = target.parent.resolve()
        if parent not in self._dirs:
            self._dirs[parent] = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        staged = self._dirs[parent] / target.name
        self._files.append((staged, target))
        return staged

    def commit(self) -> None:
        """Move every staged file into place (all were checked to exist first)."""
        for staged, target in self._files:
            if not staged.exists():
                raise RuntimeError(f"the writer did not create {staged}")
            _refuse_existing(target, self.overwrite)
        for staged, target in self._files:
            os.replace(staged, target)

    def cleanup(self) -> None:
        for d in self._dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.cleanup()


@contextlib.contextmanager
def staged_file(target: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`, on failure it is
    removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _refuse_existing(target, overwrite)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike[str], data: bytes, overwrite: bool = True) -> Path:
    with staged_file(target, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    return write_bytes(target, text.encode("utf-8"), overwrite)


def replace_path(staged: Path, target: Path, overwrite: bool = False) -> Path:
    """Move a complete file or folder `staged` (on the file system of `target`) to `target`. An
    existing target is moved aside first and put back if the move fails."""
    if not target.exists():
        os.replace(staged, target)
        return target
    _refuse_existing(target, overwrite)
    aside = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
    os.replace(target, aside / target.name)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(aside / target.name, target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def remove_path(path: Path) -> None:
    """Rename `path` away (atomic disappearance), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=".removing-", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(parent: Path) -> Iterator[Path]:
    """A private temporary folder in `parent` (for building a package or model folder before
    `replace_path`), always removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
