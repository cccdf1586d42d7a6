"""A real `unetrpp serve` process on 127.0.0.1 for the server and client tests (plain HTTP, or TLS
with a certificate authority and server certificate made at test time: `make_certificates`)."""

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


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A test certificate authority and a server certificate it signed for `hosts` (PEM files:
    ca.pem, server.pem, server.key), made now with `cryptography`, valid for a day; plus
    other-ca.pem, an unrelated authority (a client trusting only it must refuse the server)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def authority(name: str):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = authority("unetrpp test CA")
    _, other_cert = authority("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem", "cert": folder / "server.pem",
             "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["other_ca"].write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


class Server:
    """`python -m unetrpp serve` on a free loopback port; `stop()` ends it (SIGTERM, or SIGKILL).
    With "--certfile" among `extra` it serves https, verified against `ca_file`."""

    def __init__(self, data_dir: Path, token_file: Path, *extra: str, port: int | None = None,
                 ca_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.tls = "--certfile" in extra
        self.ca_file = ca_file
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
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
                if httpx.get(f"{self.url}/v1/models", headers=self.headers(), timeout=2,
                             verify=self.verify()).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_text()}")

    def verify(self):
        """httpx's `verify` for this server: the test CA's context when it serves TLS."""
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else True

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
