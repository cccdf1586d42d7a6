"""A real `unetrpp serve` process on 127.0.0.1 for the server and client tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]  # Testing/support/server.py -> repository
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"
#: One torch thread per process: the test machine may be shared, and oversubscribed OpenMP threads
#: make a 1-second segmentation take half a minute.
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TOKENS = ("test-token-alice-0123456789abcdef", "test-token-bob-0123456789abcdef")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tokens(folder: Path) -> tuple[Path, Path]:
    """A server token file with both tokens, and a client token file with the first."""
    server = folder / "tokens.txt"
    server.write_text("# test tokens\n" + "\n".join(TOKENS) + "\n")
    client = folder / "alice.token"
    client.write_text(TOKENS[0] + "\n")
    return server, client


class Server:
    """`python -m unetrpp serve` on a free loopback port; `stop()` ends it (SIGTERM, or SIGKILL)."""

    def __init__(self, data_dir: Path, token_file: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        env = dict(ENV, UNETRPP_HOME=str(data_dir.parent / "home"))
        self.log = open(data_dir.parent / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unetrpp", "serve", "--port", str(self.port), "--token-file", str(token_file),
             "--devices", "cpu", "--threads", "1", "--data-dir", str(data_dir), "--model", str(DEMO_MODEL), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(f"{self.url}/v1/models", headers=self.headers(), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_text()}")

    def headers(self, token: str = TOKENS[0]) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:  # the whole session: server and its workers die at once
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def wait_state(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(f"/v1/jobs/{job_id}").json()
        if st["state"] in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {st}")
