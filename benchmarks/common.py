"""Helpers shared by the benchmark scripts: replacing one section of docs/benchmarks.md, the
full-size synapse package with deterministic weights, the machine description, and memory probes
(peak resident set size) for Linux."""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the Markdown section whose heading line is exactly `section` (e.g.
    "## Training") with `text` (which starts with that heading), up to the next "## " heading;
    append it when the file has no such section. Every other section is kept as it is. The file
    is replaced atomically."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = old.splitlines(keepends=True)
    text = text.rstrip("\n") + "\n"
    start = next((i for i, line in enumerate(lines) if line.strip() == section), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" if end < len(lines) else "") + "".join(lines[end:])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def synapse_package(dst: Path) -> Path:
    """The full-size synapse network (official architecture) with deterministic weights, saved as
    a model package with the official synapse manifest: real compute, meaningless output."""
    from unetrpp import save_package
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import set_deterministic_weights
    from unetrpp.official_models import official_manifest

    network = set_deterministic_weights(build_network("synapse").float())
    manifest = official_manifest("synapse", name="synapse-deterministic")
    manifest["provenance"] = {"source": "deterministic-weights", "notes": "benchmark only: the output is meaningless"}
    return save_package(network, manifest, dst)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# Memory -----------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process (VmRSS), MB."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (VmHWM), MB."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def trim_heap() -> None:
    """Give glibc's free heap memory back to the system (malloc_trim), so that the resident set
    is what is in use; a no-op where glibc is not there."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the peak (VmHWM) to the current resident set: `5` written to /proc/self/clear_refs
    (Linux 4.0 and later). Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
