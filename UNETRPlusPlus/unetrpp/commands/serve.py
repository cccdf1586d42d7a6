"""`unetrpp serve`: run the segmentation server (HTTP API in `unetrpp.server.app`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import EnvironmentProblem, UnetrppError
from .segment import add_backend_argument

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  python -c "import secrets; print(secrets.token_urlsafe(32))" > tokens.txt
  unetrpp serve --token-file tokens.txt                       # 127.0.0.1:8890, all GPUs (else CPU)
  unetrpp serve --host 0.0.0.0 --token-file tokens.txt --certfile server.pem --keyfile server.key \
      --devices cuda:0,cuda:1 --data-dir /srv/unetrpp         # the department server, over TLS

Tokens never cross a network in clear text: a --host other than loopback needs --certfile/--keyfile
(TLS), or --behind-tls-proxy when a TLS proxy in front of the server (nginx, Caddy, a Kubernetes
ingress) terminates TLS and the server is reachable only through it.

Clients: `unetrpp segment --server https://HOST:8890 --token-file tokens.txt [--ca-file ca.pem] ...`,
the Slicer module ("Process on: server"), or any HTTP client (API in README "Segment on a server").
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="run a segmentation server (HTTP API, bearer tokens, job queue)",
        description="Serve the installed models over HTTP: jobs are queued, run by one worker process per "
        "device that keeps its models loaded, and kept on disk until the retention time ends.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8890, help="TCP port (default 8890)")
    p.add_argument("--token-file", type=Path, help="file with the accepted bearer tokens, one per line")
    p.add_argument("--certfile", type=Path, metavar="PEM",
                   help="serve HTTPS with this certificate (PEM; the chain may follow it; the key too if no --keyfile)")
    p.add_argument("--keyfile", type=Path, metavar="PEM", help="the private key of --certfile (PEM)")
    p.add_argument("--behind-tls-proxy", action="store_true",
                   help="serve plain HTTP on a non-loopback --host because a TLS proxy in front of the server "
                        "terminates TLS (clients then use the proxy's https:// URL)")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="accept requests without a token (only allowed on a loopback address)")
    p.add_argument("--devices", default="auto",
                   help="comma-separated devices, one worker each: cpu, cuda:0,cuda:1 ... (default auto: every GPU, else cpu)")
    p.add_argument("--workers", type=int, default=1, help="worker processes per device (default 1)")
    add_backend_argument(p)  # the default of jobs that name no backend; a job's own option wins
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per worker (default: the cores shared among the CPU workers)")
    p.add_argument("--data-dir", type=Path, help="where jobs and results are kept (default: <unetrpp home>/server)")
    p.add_argument("--model", dest="models", action="append", metavar="NAME",
                   help="serve only this installed model (repeat; default: every installed and bundled model)")
    p.add_argument("--max-upload-mb", type=float, default=1024, help="largest request body in MiB (default 1024)")
    p.add_argument("--max-jobs-per-token", type=int, default=4,
                   help="queued + running jobs one token may have at once (default 4)")
    p.add_argument("--allow-training", action="store_true",
                   help="accept fine-tune jobs (POST /v1/finetune: a case set in the nnU-Net layout -> a new model "
                        "package, as `unetrpp-train finetune`); needs unetrpp[train] on the server")
    p.add_argument("--max-train-iterations", type=int, default=2000,
                   help="with --allow-training: most iterations one fine-tune job may ask for (default 2000)")
    p.add_argument("--retention-hours", type=float, default=24,
                   help="finished jobs and their results are deleted this long after they finish (default 24)")
    p.set_defaults(func=run)


def _devices(text: str) -> list[str]:
    from ..predict import select_device

    if text.strip().lower() == "auto":
        import torch

        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise UnetrppError("--devices: give at least one device (cpu, cuda:0, ...)")
    for d in devices:
        select_device(d)  # raises with a message when the device is missing
    return devices


def _models(names: list[str] | None) -> dict[str, Path]:
    from ..catalogue import bundled_models, installed_models, resolve_model

    if names:
        return {Path(n).name if Path(n).exists() else n: resolve_model(n) for n in names}
    found = {m.name: m.path for m in bundled_models()}
    found.update({m.name: m.path for m in installed_models()})  # installed ones take precedence
    if not found:
        raise UnetrppError("no model is installed; install one with `unetrpp models install` first")
    return found


def _is_loopback(host: str) -> bool:
    from ..client import is_loopback_host

    return is_loopback_host(host)


def check_transport(host: str, certfile: Path | None, keyfile: Path | None, behind_tls_proxy: bool):
    """The TLS settings of `serve`, checked before anything starts: a non-loopback host without TLS
    only behind a TLS proxy; the certificate and key readable and matching (loaded once here, so
    uvicorn does not fail later with a traceback). Returns the SSLContext, or None for plain HTTP."""
    import ssl

    if keyfile is not None and certfile is None:
        raise UnetrppError("--keyfile needs --certfile (the certificate of that key)")
    if certfile is None:
        if not _is_loopback(host) and not behind_tls_proxy:
            raise UnetrppError(
                f"--host {host} is reachable from the network, and without TLS the tokens and scans would cross it "
                "in clear text: give --certfile CERT.pem --keyfile KEY.pem (see README 'Segment on a server'), or "
                "--behind-tls-proxy when a TLS proxy in front of the server terminates TLS")
        return None
    if behind_tls_proxy:
        raise UnetrppError("--behind-tls-proxy and --certfile exclude each other: either this server or the proxy "
                           "in front of it terminates TLS")
    for flag, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None and not Path(path).is_file():
            raise UnetrppError(f"{flag} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise UnetrppError(f"cannot use --certfile {certfile}" + (f" with --keyfile {keyfile}" if keyfile else "")
                           + f" ({exc}); give a PEM certificate and its matching unencrypted PEM private key") from None
    return context


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server import ServerConfig, create_app, read_tokens
    except ModuleNotFoundError as exc:
        raise UnetrppError(f"the server needs {exc.name}: pip install 'unetrpp[server]'") from None
    from ..catalogue import home

    if args.token_file is None and not args.insecure_no_auth:
        raise UnetrppError("give --token-file FILE (one token per line); the server does not run without "
                           "authentication (except --insecure-no-auth on 127.0.0.1)")
    if args.insecure_no_auth and not _is_loopback(args.host):
        raise UnetrppError(f"--insecure-no-auth is only allowed on a loopback address, not {args.host}; "
                           "use --token-file")
    check_transport(args.host, args.certfile, args.keyfile, args.behind_tls_proxy)
    for name, value, low in (("--workers", args.workers, 1), ("--max-jobs-per-token", args.max_jobs_per_token, 1),
                             ("--max-upload-mb", args.max_upload_mb, 1e-3), ("--retention-hours", args.retention_hours, 1e-4),
                             ("--port", args.port, 1), ("--threads", args.threads or 1, 1),
                             ("--max-train-iterations", args.max_train_iterations, 1)):
        if value < low:
            raise UnetrppError(f"{name} must be at least {low}, not {value}")
    if args.allow_training:
        import importlib.util

        if importlib.util.find_spec("unetrpp_train") is None:
            raise EnvironmentProblem("--allow-training needs the training package on the server: pip install 'unetrpp[train]'")
    tokens = read_tokens(args.token_file) if args.token_file else []
    devices = _devices(args.devices)
    data_dir = args.data_dir or home() / "server"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnetrppError(f"cannot create the data folder {data_dir}: {exc}") from None
    from ..server.workers import default_threads

    config = ServerConfig(
        data_dir=data_dir, tokens=tokens, models=_models(args.models), devices=devices,
        workers_per_device=args.workers,
        threads=args.threads or default_threads(devices, args.workers),
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_jobs_per_token=args.max_jobs_per_token,
        retention_s=args.retention_hours * 3600,
        allow_training=args.allow_training, max_train_iterations=args.max_train_iterations, backend=args.backend,
        precision=args.precision,
    )
    if not tokens:
        log.warning("no authentication (--insecure-no-auth): anyone on this machine can use the server")
    scheme = "https" if args.certfile else "http"
    print(f"unetrpp server on {scheme}://{args.host}:{args.port}/v1 with model(s) {', '.join(sorted(config.models))}; "
          f"workers on {', '.join(devices)}; data in {data_dir}"
          + ("; plain HTTP behind a TLS proxy" if args.behind_tls_proxy else ""), flush=True)
    tls = {"ssl_certfile": str(args.certfile), "ssl_keyfile": None if args.keyfile is None else str(args.keyfile)} \
        if args.certfile else {}
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                timeout_graceful_shutdown=10, **tls)
    return 0
