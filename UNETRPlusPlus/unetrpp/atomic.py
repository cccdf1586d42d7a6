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
- `durable=True` (any of the above): each file is flushed to disk (fsync) before it is moved into place
  and its folder after, so a crash or power loss leaves the old or the new file, never an empty one
  (training checkpoints).
- `replace_path(staged, target, overwrite)`: move a complete file or folder (a model package) into
  place; an existing target is only replaced with `overwrite`, and is restored if the move fails.
- `remove_path(path)`: make a file or folder disappear atomically, then delete it.

Refusing to overwrite (`OutputExistsError`) is checked by callers before any work starts (see
`unetrpp.outputs.OutputPlan`) and enforced by the final placement itself (`place`): without
`overwrite` a file is put in place with a hard link (`os.link` fails if the name exists) and a
folder by reserving its name with `os.mkdir` and renaming onto that empty folder, so of two runs
writing the same output at the same time exactly one succeeds; the other gets OutputExistsError
and leaves nothing. Missing parent folders of a target are created when the output is staged and
removed again if it is never committed.
"""

from __future__ import annotations

import contextlib
import errno
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


def _appeared(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{target} already exists (it appeared while this run was writing: another run writing the same "
        "output?); choose another path or allow overwriting. Nothing was written"
    )


def place(staged: Path, target: Path, overwrite: bool = False) -> None:
    """Move the complete file or folder `staged` (in `target`'s folder) onto `target` in one step.
    With `overwrite` an existing file is replaced (`os.replace`); without, the placement fails
    with OutputExistsError if `target` exists, atomically: no check-then-rename window."""
    if overwrite:
        os.replace(staged, target)
        return
    if staged.is_dir():
        if os.name == "nt":  # Windows' rename never replaces an existing name
            try:
                os.rename(staged, target)
            except FileExistsError:
                raise _appeared(target) from None
            return
        try:
            os.mkdir(target)  # reserve the name; fails if anything holds it
        except FileExistsError:
            raise _appeared(target) from None
        try:
            os.rename(staged, target)  # POSIX rename replaces our own empty folder
        except OSError:
            os.rmdir(target)
            raise
        return
    try:
        os.link(staged, target)  # fails if the name exists
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as exc:  # a file system without hard links: reserve the name, then replace it
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise _appeared(target) from None
        os.replace(staged, target)
        return
    os.unlink(staged)


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; folders are skipped where the OS cannot open them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing ancestors; return the created ones, deepest first."""
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # deepest first; only if still empty
        try:
            folder.rmdir()
        except OSError:
            break


class StagedOutputs:
    """Files written beside their targets under temporary names, moved into place on `commit`."""

    def __init__(self, overwrite: bool = False, durable: bool = False) -> None:
        self.overwrite = overwrite
        self.durable = durable
        self._dirs: dict[Path, Path] = {}
        self._files: list[tuple[Path, Path]] = []
        self._created: list[Path] = []
        self._committed = False

    def path_for(self, target: str | os.PathLike[str]) -> Path:
        """A temporary path (same file name, in a private folder beside `target`) to write to."""
        target = Path(target)
        self._created[:0] = _make_parents(target.parent)
        parent = target.parent.resolve()
        if parent not in self._dirs:
            self._dirs[parent] = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        staged = self._dirs[parent] / target.name
        self._files.append((staged, target))
        return staged

    def commit(self) -> None:
        """Move every staged file into place: all of them, or (on any failure, such as a target
        that another run created meanwhile) none."""
        for staged, target in self._files:
            if not staged.exists():
                raise RuntimeError(f"the writer did not create {staged}")
            _refuse_existing(target, self.overwrite)
            if self.durable:
                _fsync(staged)
        placed: list[tuple[Path, os.stat_result]] = []
        try:
            for staged, target in self._files:
                ours = staged.stat()
                place(staged, target, self.overwrite)
                placed.append((target, ours))
            if self.durable:
                for folder in {target.parent for _, target in self._files}:
                    _fsync(folder)
        except BaseException:
            if not self.overwrite:  # take back what this run placed (never a file another run wrote)
                for target, ours in placed:
                    with contextlib.suppress(OSError):
                        if os.path.samestat(target.stat(), ours):
                            target.unlink()
            raise
        self._committed = True

    def cleanup(self) -> None:
        for d in self._dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()
        if not self._committed:
            _remove_created(self._created)

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.cleanup()


@contextlib.contextmanager
def staged_file(target: str | os.PathLike[str], overwrite: bool = True, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path with `target`'s file name (so writers that choose the format by
    suffix work), in a private folder beside it; on success it is placed onto `target` (see
    `place`), on failure removed."""
    with StagedOutputs(overwrite=overwrite, durable=durable) as staging:
        yield staging.path_for(target)


def write_bytes(target: str | os.PathLike[str], data: bytes, overwrite: bool = True, durable: bool = False) -> Path:
    with staged_file(target, overwrite, durable) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], text: str, overwrite: bool = True, durable: bool = False) -> Path:
    return write_bytes(target, text.encode("utf-8"), overwrite, durable)


def replace_path(staged: Path, target: Path, overwrite: bool = False) -> Path:
    """Move a complete file or folder `staged` (on the file system of `target`) to `target`. Without
    `overwrite` an existing target is refused atomically (`place`); with it, an existing target is
    moved aside first and put back if the move fails."""
    if not overwrite or not target.exists():
        place(staged, target, overwrite=False)
        return target
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
