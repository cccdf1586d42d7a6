"""Client of the segmentation server's HTTP API (`unetrpp serve`, API in `unetrpp.server.app`).

Used by `unetrpp segment --server URL` (and through it by the Slicer module's "Process on: server"
choice). No torch: uploads the input files, follows the job with progress events (the same
`unetrpp.progress` events as a local run), downloads the segmentation and its report atomically,
and cancels the job on the server when the local run is cancelled.

A DICOM series folder is sent as a zip of its DICOM files. The token comes from a token file (first
token in it) or the environment variable UNETRPP_SERVER_TOKEN (not visible in process lists).

TLS: an https:// URL is verified against the system's certificate authorities, or against a CA
file (`ca_file`, `segment --ca-file`, or $UNETRPP_SERVER_CA_FILE) for a department's own CA or a
self-signed certificate. The token never crosses a network in clear text: http:// is refused for
any host but this machine's loopback. A server's error comes back with its category
(`unetrpp.errors`): the client raises it in that category, so the exit code is the local one's.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .errors import CATEGORIES, ENVIRONMENT, INPUT, INTERNAL, RESOURCE, CancelledError, UnetrppError
from .progress import CancelToken, Event, ProgressSink, null_sink

log = logging.getLogger(__name__)

TOKEN_ENV = "UNETRPP_SERVER_TOKEN"
CA_FILE_ENV = "UNETRPP_SERVER_CA_FILE"
#: Largest JSON answer the client parses (reports are a few kB; the bounded reader refuses more).
MAX_ANSWER_BYTES = 16 << 20
#: The category of an HTTP error from a server that does not send one (before categories).
_STATUS_CATEGORY = {401: ENVIRONMENT, 413: RESOURCE, 429: RESOURCE}
#: Seconds between status requests while a job runs.
POLL_INTERVAL_S = 0.5


class ServerError(UnetrppError):
    """The server is unreachable, refused the request, or the job failed there. `category` is the
    server's category of the error when it sent one (a bad input stays an input error)."""

    category = ENVIRONMENT

    def __init__(self, message: str, category: str | None = None) -> None:
        super().__init__(message)
        if category in CATEGORIES:
            self.category = category


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only: `localhost` or a loopback address.
    The one rule for both sides: the server refuses a network address without TLS, the client sends
    no token over plain HTTP to anything else."""
    import ipaddress

    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return is_loopback_host(urlsplit(url).hostname or "")


def tls_context(ca_file: str | os.PathLike[str] | None = None):
    """The SSL context that verifies an https server: against `ca_file` (PEM, one or more CA
    certificates) when given, else $UNETRPP_SERVER_CA_FILE, else the system's trusted authorities
    (certifi's where Python finds none, as on some macOS installs)."""
    import ssl

    ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
    if ca_file:
        try:
            return ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ServerError(f"cannot use the CA file {ca_file} ({exc}); give a PEM file with the certificate of "
                              "the authority that signed the server's certificate", INPUT) from None
    context = ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    if not context.cert_store_stats().get("x509_ca") and not (paths.capath and os.path.isdir(paths.capath)):
        try:
            import certifi

            context.load_verify_locations(certifi.where())
        except (ImportError, OSError, ssl.SSLError):
            pass
    return context


def _answer_json(response: Any, what: str) -> Any:
    """A JSON answer of the server through the one bounded JSON reader."""
    from .manifest import load_json

    return load_json(response.content, what, error=ServerError, max_bytes=MAX_ANSWER_BYTES)


def read_token(token_file: str | os.PathLike[str] | None) -> str:
    """The first token of `token_file`, else $UNETRPP_SERVER_TOKEN; a message when neither has one."""
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServerError(f"cannot read the token file {token_file}: {exc}", INPUT) from None
        tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not tokens:
            raise ServerError(f"the token file {token_file} holds no token", INPUT)
        return tokens[0]
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ServerError(f"give --token-file FILE (or set {TOKEN_ENV}) with a token the server accepts", INPUT)
    return token


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _zip_folder(folder: Path, into: Path) -> Path:
    """A zip of the DICOM files directly in `folder` (a DICOM series; other files are left out, as
    a local run ignores them), stored uncompressed (DICOM pixel data rarely compresses and the
    server unpacks faster)."""
    archive = into / f"{folder.name or 'series'}.zip"
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p))
    if not files:
        raise UnetrppError(f"input folder {folder} holds no DICOM files; give a DICOM series folder or an image file")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, f.name)
    return archive


class ServerClient:
    """One server at `url` (e.g. https://gpu-host:8890) with one bearer token; `ca_file` verifies
    an https server's certificate (see `tls_context`)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0,
                 ca_file: str | os.PathLike[str] | None = None) -> None:
        try:
            import httpx
        except ModuleNotFoundError:
            raise ServerError("the server client needs the Python package httpx: pip install 'httpx>=0.27,<1' "
                              "(in Slicer: slicer.util.pip_install('httpx'))") from None

        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ServerError(f"server URL {url!r} must start with https:// (or http:// on this machine)", INPUT)
        if self.url.startswith("http://") and not _is_loopback_url(self.url):
            raise ServerError(f"server URL {url!r}: the token would cross the network in clear text; use https:// "
                              "(`unetrpp serve --certfile ... --keyfile ...`, or the TLS proxy in front of the server)",
                              INPUT)
        self.tls = self.url.startswith("https://")
        self._http = httpx.Client(base_url=f"{self.url}/v1", timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"},
                                  verify=tls_context(ca_file) if self.tls else True)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ServerClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Requests ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.status_code == 401:
            raise ServerError(f"the server at {self.url} refused the token (401); check --token-file "
                              f"(or {TOKEN_ENV})", ENVIRONMENT)
        if response.status_code >= 400:
            category = _STATUS_CATEGORY.get(response.status_code, INTERNAL if response.status_code >= 500 else INPUT)
            try:
                body = _answer_json(response, "the server's error")
                message = body["error"]
                category = body.get("category") or category
            except (UnetrppError, KeyError, TypeError, AttributeError):
                message = f"HTTP {response.status_code} (not a unetrpp server at {self.url}?)"
            raise ServerError(f"server: {message}", category)
        return response

    def _transport_error(self, exc: Exception) -> ServerError:
        """What a failed connection means, in the user's words (environment: the network or setup)."""
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return ServerError(f"the certificate of the server at {self.url} is not trusted ({text}); if the server "
                               "uses its own or a department certificate authority, give its certificate with "
                               f"--ca-file (or {CA_FILE_ENV})", ENVIRONMENT)
        if self.tls and ("WRONG_VERSION_NUMBER" in text or "record layer" in text or "UNEXPECTED_EOF" in text.upper()):
            return ServerError(f"cannot reach the server at {self.url} over TLS ({text}); does it serve http:// "
                               "instead (no --certfile)?", ENVIRONMENT)
        hint = " (if it serves TLS, use https://)" if not self.tls else ""
        return ServerError(f"cannot reach the server at {self.url} ({type(exc).__name__}: {exc}); check the URL "
                           f"and that `unetrpp serve` runs there{hint}", ENVIRONMENT)

    def models(self) -> list[dict[str, Any]]:
        return _answer_json(self._request("GET", "/models"), "the server's model list")["models"]

    def submit(self, model: str, inputs: Mapping[str, str | os.PathLike[str]], *,
               options: Mapping[str, Any] | None = None, output_format: str = ".seg.nrrd") -> str:
        """Upload the inputs (name -> file or DICOM folder) and queue a job; returns its id."""
        with tempfile.TemporaryDirectory(prefix="unetrpp-upload-") as tmp, ExitStack() as files:
            upload = {}
            for name, value in inputs.items():
                path = Path(value)
                if not path.exists():
                    raise UnetrppError(f"input {path} does not exist; check the path")
                if path.is_dir():
                    path = _zip_folder(path, Path(tmp))
                upload[name] = (path.name, files.enter_context(open(path, "rb")), "application/octet-stream")
            data = {"model": model, "options": json.dumps(dict(options or {})), "output_format": output_format}
            return _answer_json(self._request("POST", "/jobs", data=data, files=upload), "the server's answer")["id"]

    def finetune(self, model: str, cases: str | os.PathLike[str], name: str, *,
                 options: Mapping[str, Any] | None = None) -> str:
        """Queue a fine-tune of `model` on a case set folder in the nnU-Net raw layout (dataset.json,
        imagesTr/, labelsTr/; sent as a zip of those files) into a new model `name` (a server started
        with --allow-training); returns the job id. Its result (`download`) is the package as a zip."""
        folder = Path(cases)
        if not (folder / "dataset.json").is_file():
            raise UnetrppError(f"{folder} is not a case set: it has no dataset.json (nnU-Net raw layout)")
        with tempfile.TemporaryDirectory(prefix="unetrpp-upload-") as tmp:
            archive = Path(tmp) / f"{folder.name or 'cases'}.zip"
            with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.write(folder / "dataset.json", "dataset.json")
                for sub in ("imagesTr", "labelsTr"):
                    for f in sorted((folder / sub).glob("*")) if (folder / sub).is_dir() else []:
                        if f.is_file() and not f.name.startswith("."):
                            zf.write(f, f"{sub}/{f.name}")
            data = {"model": model, "name": name, "options": json.dumps(dict(options or {}))}
            with open(archive, "rb") as fh:
                answer = self._request("POST", "/finetune", data=data,
                                       files={"data": (archive.name, fh, "application/zip")})
        return _answer_json(answer, "the server's answer")["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return _answer_json(self._request("GET", f"/jobs/{job_id}"), "the job status")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return _answer_json(self._request("DELETE", f"/jobs/{job_id}"), "the server's answer")

    def report(self, job_id: str) -> dict[str, Any]:
        return _answer_json(self._request("GET", f"/jobs/{job_id}/report"), "the job's report")

    def download(self, job_id: str, path: str | os.PathLike[str], overwrite: bool = True) -> Path:
        """The result file, written beside `path` and renamed into place (without `overwrite`,
        only if nothing is there: see `atomic.place`)."""
        import httpx

        from .atomic import staged_file

        path = Path(path)
        try:
            with self._http.stream("GET", f"/jobs/{job_id}/result") as response:
                if response.status_code >= 400:
                    response.read()
                    self._request("GET", f"/jobs/{job_id}/result")  # raises with the server's message
                with staged_file(path, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        f.write(chunk)
        except httpx.TransportError as exc:
            raise ServerError(f"the download of job {job_id} from {self.url} broke off ({exc})", ENVIRONMENT) from None
        return path

    def wait(self, job_id: str, *, sink: ProgressSink = null_sink, cancel: CancelToken | None = None,
             poll: float = POLL_INTERVAL_S) -> dict[str, Any]:
        """Follow the job until it finishes, relaying its stage and progress as events; on a local
        cancel, cancel it on the server and raise CancelledError. Returns the last status."""
        stage = None
        while True:
            if cancel is not None and cancel.is_set():
                try:
                    self.cancel(job_id)
                except ServerError as exc:
                    log.warning("could not cancel job %s on the server: %s", job_id, exc)
                raise CancelledError("segmentation cancelled by the user (the server job was cancelled)")
            st = self.status(job_id)
            state = st["state"]
            if state == "queued" and stage != "queued":
                stage = "queued"
                sink(Event("stage", stage="queued", message=f"queued on {self.url} (position {st.get('queue_position')})"))
            elif state == "running":
                if st.get("stage") and st["stage"] != stage:
                    stage = st["stage"]
                    sink(Event("stage", stage=stage, message=f"{st.get('message') or ''} (on the server, {st.get('device')})"))
                if st.get("total"):
                    sink(Event("progress", stage=stage, done=st["done"], total=st["total"], fraction=st["fraction"],
                               eta_s=st.get("eta_s")))
            elif state == "done":
                return st
            elif state == "failed":  # in the category the server classified it (an input error stays one)
                raise ServerError(f"the job failed on the server: {st.get('error')}", st.get("category") or INPUT)
            elif state == "cancelled":
                raise CancelledError("the job was cancelled on the server")
            time.sleep(poll)


def segment_on_server(url: str, token: str, model: str, inputs: Mapping[str, str | os.PathLike[str]],
                      output: str | os.PathLike[str], *, report: str | os.PathLike[str] | None = None,
                      options: Mapping[str, Any] | None = None, sink: ProgressSink = null_sink,
                      cancel: CancelToken | None = None, overwrite: bool = True,
                      ca_file: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Run one segmentation on the server; write `output` and its report as a local run would.
    Returns (report, {"segmentation": path, "report": path})."""
    from .atomic import write_text
    from .formats import image_suffix
    from .outputs import default_report_path

    output = Path(output)
    report_path = Path(report) if report else default_report_path(output)
    with ServerClient(url, token, ca_file=ca_file) as client:
        job_id = client.submit(model, inputs, options=options, output_format=image_suffix(output))
        log.info("job %s submitted to %s", job_id, url)
        try:
            client.wait(job_id, sink=sink, cancel=cancel)
        except KeyboardInterrupt:
            client.cancel(job_id)
            raise
        sink(Event("stage", stage="write", message=f"downloading the result to {output}"))
        result = client.report(job_id)
        client.download(job_id, output, overwrite=overwrite)
        write_text(report_path, json.dumps(result, indent=2) + "\n", overwrite=overwrite)
    outputs = {"segmentation": str(output), "report": str(report_path)}
    sink(Event("done", outputs=outputs, report=result))
    return result, outputs


# `unetrpp segment --server` ------------------------------------------------------------------------
class RemoteResult:
    """What the CLI prints after a run, as for a local `SegmentationResult`."""

    def __init__(self, report: dict[str, Any], outputs: dict[str, str]) -> None:
        self.report, self.outputs = report, outputs
        self.warnings = list(report.get("warnings", []))


def _server_model(client: ServerClient, model: str) -> dict[str, Any]:
    """The server's description of `model` (a name, or a local package whose name is looked up)."""
    package = Path(model) / "model.json"
    if package.is_file():
        from .errors import ManifestError
        from .manifest import load_json

        data = load_json(package.read_bytes(), str(package), error=ManifestError)
        name = data.get("name", model) if isinstance(data, dict) else model
    else:
        name = model
    models = {m["name"]: m for m in client.models()}
    if name not in models:
        raise ServerError(f"model {name!r} is not on the server {client.url}; it has: {', '.join(sorted(models)) or 'none'}",
                          "model")
    return models[name]


def _local_package(model: str) -> Path:
    """The package on this computer that `model` (a path, or an installed or bundled model's name)
    names: the server runs its own copy, but the local one is no place for an output either, as
    for a local run (a name alone would protect nothing: `--report <installed>/model.json`)."""
    from .catalogue import resolve_model

    try:
        return resolve_model(model)
    except UnetrppError:  # not on this computer: only on the server
        return Path(model)


def run_segment_command(args: Any, inputs: Any, roi: Any, sink: ProgressSink, cancel: CancelToken | None) -> RemoteResult:
    """`unetrpp segment --server URL ...`: the same options and outputs as a local run. `inputs`
    is the positional INPUT or {NAME: PATH} as the CLI parsed them."""
    from .outputs import OutputPlan, protected_sources

    if args.probabilities:
        raise UnetrppError("--probabilities is not available with --server (the server returns the segmentation "
                           "and its report); run locally for a confidence map")
    if args.device not in ("auto", None):
        log.warning("--device %s is ignored with --server: the server chooses its devices", args.device)
    # the local run's output rules: existing files, inputs and unwritable folders refused before any work
    plan = OutputPlan.create(args.output, args.report, overwrite=args.overwrite,
                             protected=protected_sources(inputs, _local_package(args.model)))
    report_path = plan.report
    token = read_token(args.token_file)
    ca_file = getattr(args, "ca_file", None)
    with ServerClient(args.server, token, ca_file=ca_file) as client:
        described = _server_model(client, args.model)
    names = [i["name"] for i in described["inputs"]]
    if not isinstance(inputs, Mapping):
        if len(names) != 1:
            raise UnetrppError(f"model {described['name']!r} takes {len(names)} inputs; give each as --input NAME=PATH "
                               f"with NAME in: {', '.join(names)}")
        inputs = {names[0]: inputs}
    if not inputs:
        raise UnetrppError(f"no input given; model {described['name']!r} takes: {', '.join(names)}")
    options = {"fast": bool(args.fast), "overlap": args.overlap, "series_uid": args.series_uid,
               "roi": None if roi is None else [list(roi[0]), list(roi[1])]}
    if getattr(args, "strict", False):  # sent only when set: a server before these options refuses them
        options["strict"] = True
    if getattr(args, "backend", None) not in (None, "auto"):
        options["backend"] = args.backend
    if getattr(args, "precision", None) not in (None, "auto"):
        options["precision"] = args.precision
    report, outputs = segment_on_server(args.server, token, described["name"], inputs, args.output,
                                        report=report_path, options=options, sink=sink, cancel=cancel,
                                        overwrite=args.overwrite, ca_file=ca_file)
    return RemoteResult(report, outputs)
