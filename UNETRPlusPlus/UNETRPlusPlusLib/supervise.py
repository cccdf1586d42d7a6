"""`python -m UNETRPlusPlusLib.supervise ARGS`: run `<this interpreter> ARGS` as a direct child and
exit with its status, a death by signal N as 128 + N (the shell convention).

Why: inside Slicer, `python` is the PythonSlicer launcher, which runs the real Python as its child
and turns any death by a signal into exit code 1 ("exit abnormally"). The module could then not
tell an out-of-memory kill (SIGKILL) from a crash. This supervisor runs inside the real Python
(already in the launcher's environment) and starts the worker with that same interpreter; as the
worker's parent it sees the exact status and passes it on through the launcher, which keeps normal
exit codes. Standard library only (psutil when Slicer has it); no Qt, no torch.

SIGTERM/SIGINT reaching the supervisor are forwarded to the worker (its cooperative stop: the
engine stops at the next sliding window) and the supervisor keeps waiting for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def interpreter() -> str:
    """The running interpreter. If `sys.executable` names a launcher (Slicer sets it to
    PythonSlicer), the binary actually running (psutil); a venv's python stays as it is."""
    exe = sys.executable
    if os.path.splitext(os.path.basename(exe))[0].lower() != "pythonslicer":
        return exe
    try:
        import psutil  # noqa: PLC0415 - Slicer ships it

        return psutil.Process().exe() or exe
    except Exception:  # noqa: BLE001 - psutil missing or denied: keep the launcher
        return exe


def exit_status(returncode: int) -> int:
    """subprocess returncode -> process exit code (-N, killed by signal N -> 128 + N)."""
    return 128 + (-returncode) if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m UNETRPlusPlusLib.supervise -m MODULE ARGS...", file=sys.stderr)
        return 2
    child = subprocess.Popen([interpreter(), *args])

    def forward(signum, frame):  # noqa: ARG001 - signal handler signature
        if child.poll() is None:
            child.send_signal(signum)

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    while True:
        try:
            return exit_status(child.wait())
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is forwarded, keep waiting
            continue


if __name__ == "__main__":
    sys.exit(main())
