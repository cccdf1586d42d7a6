"""SHA256 of files and bytes, streamed so large weights never sit in memory twice."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import IntegrityError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(actual: str, expected: str, what: str) -> None:
    if actual.lower() != expected.lower():
        raise IntegrityError(
            f"{what} failed its SHA256 check: expected {expected}, got {actual}. The file is "
            "corrupt or was altered; download or export it again. It has not been used."
        )
