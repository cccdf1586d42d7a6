"""The HTTP API (FastAPI), version 1. Every route needs `Authorization: Bearer <token>`.

    GET    /v1/models              models this server runs (name, version, inputs, labels)
    POST   /v1/jobs                multipart: `model`, one file per model input (named by the input's
                                   name; a DICOM series as a .zip), optional `options` (JSON) and
                                   `output_format` (.seg.nrrd default, .nii.gz, .nii, .nrrd, .dcm)
                                   -> 202 {"id", "state"}
    GET    /v1/jobs/{id}           state queued|running|done|failed|cancelled, stage, progress, ETA
    GET    /v1/jobs/{id}/result    the segmentation file (when done)
    GET    /v1/jobs/{id}/report    the report (JSON, when done)
    DELETE /v1/jobs/{id}           cancel a queued or running job
    POST   /v1/finetune            (serve --allow-training) multipart: `model` (the parent), `name` (the
                                   new model), `data` (a zip of a case set in the nnU-Net raw layout),
                                   optional `options` (JSON: iterations, val, unannotated) -> 202
                                   {"id", "state"}; the job's result is the new package as a zip

Every error is `{"error": message, "category": category}` with a 4xx/5xx status (the category of
`unetrpp.errors`: input, model, output, environment, resource, internal); a failed job's status has
the same two fields. Tracebacks go to the server log only. Jobs belong to the token that created
them; another token sees 404.

Uploads are self-contained or refused (400) before anything reads them (`uploads`): no header that
names another file for its voxels, a DICOM series only as a zip of DICOM files.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (ENVIRONMENT, INPUT, INTERNAL, MODEL, OUTPUT, RESOURCE, InputImageError, RequestError,
                      UnetrppError)
from ..jsonio import load_json
from ..manifest import Manifest, read_manifest
from ..formats import OUTPUT_SUFFIXES
from ..request import SegmentRequest, options_from_json
from .store import ACTIVE, JobStore
from .training import DEFAULT_MAX_ITERATIONS, check_model_name, extract_case_set, finetune_options
from .uploads import check_self_contained, extract_dicom_zip, suffix_of
from .workers import WorkerPool, public_message

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
#: Bounds on the job options (form field `options`, JSON): a few hundred bytes in practice.
MAX_OPTIONS_BYTES = 1 << 16
#: The request options a job may set (`unetrpp.request`; the server chooses the device, and
#: returns the segmentation and its report only, so no confidence map).
JOB_OPTIONS = ("fast", "overlap", "roi", "series_uid", "backend", "precision", "strict")
_CHUNK = 1 << 20
#: The category of an HTTP error when the route does not name one.
_STATUS_CATEGORY = {401: ENVIRONMENT, 413: RESOURCE, 429: RESOURCE}


@dataclass
class ServerConfig:
    data_dir: Path
    tokens: list[str]  # empty: no authentication (loopback only, --insecure-no-auth)
    models: dict[str, Path]  # name -> package folder
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    workers_per_device: int = 1
    threads: int | None = None
    max_upload_bytes: int = 1 << 30
    max_jobs_per_token: int = 4
    retention_s: float = 24 * 3600.0
    allow_training: bool = False  # POST /v1/finetune (serve --allow-training)
    backend: str = "auto"  # serve --backend: what runs the network for a job that names none
    precision: str = "auto"  # serve --precision: likewise
    max_train_iterations: int = DEFAULT_MAX_ITERATIONS


class ApiError(HTTPException):
    """An HTTP error with the category of `unetrpp.errors` it stands for."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None,
                 category: str | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.category = category or _STATUS_CATEGORY.get(status_code, INTERNAL if status_code >= 500 else INPUT)


def _error(status: int, message: str, category: str | None = None) -> ApiError:
    return ApiError(status, message, category=category)


def _body(message: str, category: str) -> dict[str, str]:
    return {"error": message, "category": category}


# Authentication ----------------------------------------------------------------------------------
def _owner_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def _authenticator(tokens: list[str]):
    owners = [(t.encode(), _owner_of(t)) for t in tokens]

    def authenticate(request: Request) -> str:
        if not owners:
            return "anonymous"
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            for token, owner in owners:  # constant-time comparison against every token
                if hmac.compare_digest(token, given.strip().encode()):
                    return owner
        raise ApiError(401, "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                            "with a token from the server's token file", headers={"WWW-Authenticate": "Bearer"})

    return authenticate


# Upload size ------------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, counting as they arrive
    (Content-Length can be absent or wrong), before anything is written to disk beyond the limit."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"upload too large: the server accepts at most {self.limit / 2**20:.0f} MiB per request "
                   "(serve --max-upload-mb)")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await JSONResponse(_body(message, RESOURCE), status_code=413)(scope, receive, send)
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracked_send(msg: dict) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await JSONResponse(_body(message, RESOURCE), status_code=413)(scope, receive, send)


# Inputs -----------------------------------------------------------------------------------------
def _check_image(path: Path, what: str) -> None:
    """Refuse a file that is not an image (header only: cheap), or a folder without a DICOM series."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        if path.is_dir():
            if not sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
                raise RequestError(f"{what}: the zip holds no DICOM series")
            return
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError:
        raise RequestError(f"{what} is not an image the server can read (NIfTI, NRRD, MHA, or a zip of a "
                           "DICOM series)") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _save_inputs(given: dict[str, Any], folder: Path, limit: int) -> dict[str, str]:
    """Write each upload as `<input name><suffix>` (a DICOM zip unpacked into `<input name>/`),
    refuse it unless it is self-contained (`uploads`: before anything else reads it), check it is
    an image, and return input name -> its name in `folder`."""
    inputs: dict[str, str] = {}
    for name, upload in given.items():
        what = f"input {name!r} ({upload.filename!r})"
        try:
            suffix = suffix_of(upload.filename or "")
        except UnetrppError as exc:
            raise type(exc)(f"{what}: {exc}") from None
        target = folder / f"{name}{suffix}"
        with open(target, "wb") as dst:
            shutil.copyfileobj(upload.file, dst, _CHUNK)
        try:
            if suffix == ".zip":
                extract_dicom_zip(target, folder / name, limit)
                target.unlink()
                target = folder / name
            else:
                check_self_contained(target, suffix)
        except UnetrppError as exc:
            raise type(exc)(f"{what}{' ' if str(exc).startswith(('is ', 'has ')) else ': '}{exc}") from None
        _check_image(target, what)
        inputs[name] = target.name
    return inputs


def _describe_model(name: str, manifest: Manifest) -> dict[str, Any]:
    manifest = manifest.data
    return {
        "name": name, "version": manifest.get("version"), "title": manifest.get("title"),
        "inputs": [{"name": i["name"], "modality": i.get("modality"), "description": i.get("description", ""),
                    "aliases": i.get("aliases", [])} for i in manifest.get("inputs", [])],
        "labels": [{"value": l["value"], "name": l["name"]} for l in manifest.get("labels", [])],
    }


# The application ---------------------------------------------------------------------------------
def create_app(config: ServerConfig) -> FastAPI:
    store = JobStore(config.data_dir)
    pool = WorkerPool(store, config.devices, config.workers_per_device, config.threads)
    manifests = {name: read_manifest(path) for name, path in config.models.items()}
    stop = threading.Event()
    retention_hours = config.retention_s / 3600

    def expire_loop() -> None:
        while not stop.wait(min(60.0, max(1.0, config.retention_s / 4))):
            store.expire(config.retention_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        requeue = store.recover()
        store.expire(config.retention_s)
        pool.start()
        for job_id in requeue:
            pool.submit(store.get(job_id))
        log.info("serving %d model(s) on %s; data in %s; %d job(s) queued again",
                 len(manifests), ", ".join(pool.slots), config.data_dir, len(requeue))
        expirer = threading.Thread(target=expire_loop, name="unetrpp-retention", daemon=True)
        expirer.start()
        yield
        stop.set()
        pool.stop()

    app = FastAPI(title="UNETR++ segmentation server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)  # no unauthenticated route at all
    app.add_middleware(BodyLimit, limit=config.max_upload_bytes)
    authenticate = _authenticator(config.tokens)
    app.state.store, app.state.pool = store, pool

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        category = getattr(exc, "category", None) or _STATUS_CATEGORY.get(exc.status_code, INPUT)
        return JSONResponse(_body(str(exc.detail), category), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse(_body(f"bad request: {where}", INPUT), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(_body("internal server error; the server log has the details", INTERNAL), status_code=500)

    def owned_job(job_id: str, owner: str) -> dict[str, Any]:
        job = store.get(job_id)
        if job is None or job["owner"] != owner:
            raise _error(404, f"no job {job_id!r} for this token (finished jobs are deleted "
                              f"{retention_hours:g} h after they finish)")
        return job

    @app.get(f"{API_PREFIX}/models")
    def list_models(owner: str = Depends(authenticate)) -> dict[str, Any]:
        return {"models": [_describe_model(n, m) for n, m in sorted(manifests.items())]}

    @app.post(f"{API_PREFIX}/jobs", status_code=202)
    async def submit(request: Request, owner: str = Depends(authenticate)) -> dict[str, Any]:
        try:
            return await _submit(request, owner)
        finally:
            form = getattr(request, "_form", None)
            if form is not None:
                await form.close()  # the uploads' temporary files

    async def read_form(request: Request, owner: str) -> tuple[Any, str, Any]:
        """(form, model, parsed options) of a job request, after the per-token limit."""
        if store.active_count(owner) >= config.max_jobs_per_token:
            raise _error(429, f"this token already has {config.max_jobs_per_token} job(s) queued or running "
                              "(the server's per-token limit, serve --max-jobs-per-token); wait for one to finish")
        try:
            form = await request.form(max_files=16, max_fields=16)
        except _TooLarge:
            raise
        except Exception as exc:  # malformed multipart body
            raise _error(400, f"the request is not a valid multipart form ({exc})") from None
        model = form.get("model")
        if not isinstance(model, str) or not model:
            raise _error(422, "the form needs a field 'model' with a model name (GET /v1/models lists them)")
        if model not in manifests:
            raise _error(404, f"model {model!r} is not on this server; it has: {', '.join(sorted(manifests)) or 'none'}",
                         MODEL)
        raw_options = form.get("options") or "{}"
        if not isinstance(raw_options, str):
            raise _error(400, "the form field 'options' must be JSON text, not a file")
        try:  # the one bounded JSON reader: size and nesting checked before parsing (400)
            parsed = load_json(raw_options, "the form field 'options'", error=RequestError,
                               max_bytes=MAX_OPTIONS_BYTES)
        except UnetrppError as exc:
            raise _error(400, str(exc)) from None
        return form, model, parsed

    async def _submit(request: Request, owner: str) -> dict[str, Any]:
        form, model, parsed = await read_form(request, owner)
        try:  # the one check of request options (422: JSON, but not valid options)
            options = options_from_json(parsed, allowed=JOB_OPTIONS)
        except UnetrppError as exc:
            raise _error(422, f"options: {exc}") from None
        if isinstance(parsed, dict) and parsed.get("backend") is None:
            options["backend"] = config.backend  # the server's choice (serve --backend) for a job that names none
        if isinstance(parsed, dict) and parsed.get("precision") is None:
            options["precision"] = config.precision  # likewise (serve --precision)
        output_suffix = str(form.get("output_format") or ".seg.nrrd")
        if output_suffix not in OUTPUT_SUFFIXES:
            raise _error(422, f"output_format {output_suffix!r}: use one of {', '.join(OUTPUT_SUFFIXES)}")
        manifest = manifests[model]
        lookup = manifest.input_lookup()  # the one input name/alias table
        files = [(key, value) for key, value in form.multi_items() if key not in ("model", "options", "output_format")]
        for key, value in files:
            if isinstance(value, str) or key.lower() not in lookup:
                raise _error(422, f"unexpected form field {key!r}; model {model!r} takes one file per input: "
                                  f"{manifest.inputs_help()}")
        if len({k for k, _ in files}) != len(files):
            raise _error(422, f"a form field was given twice; model {model!r} takes one file per input: "
                              f"{manifest.inputs_help()}")
        try:  # the one resolution of input names: unknown, twice, missing
            names = manifest.resolve_inputs([k for k, _ in files])
        except UnetrppError as exc:
            raise _error(422, str(exc)) from None
        given = {names[k]: v for k, v in files}

        job_id, job_dir = store.new_job_dir()
        try:
            # file copies, unzipping and header checks: off the event loop, other requests go on
            inputs = await run_in_threadpool(_save_inputs, given, job_dir / "inputs", config.max_upload_bytes)
            if output_suffix == ".dcm" and not all((job_dir / "inputs" / r).is_dir() for r in inputs.values()):
                # an input problem, as `unetrpp segment` says (dicom_seg.check_dicom_source)
                raise InputImageError("DICOM SEG output (.dcm) needs a DICOM series input (send it as a zip); "
                                      "choose .seg.nrrd or .nii.gz for image files")
            # the request, validated once (the worker rebuilds it from these checked values)
            request = SegmentRequest.build(manifest, {n: job_dir / "inputs" / r for n, r in inputs.items()}, **options)
        except UnetrppError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise _error(413 if exc.category == RESOURCE else 400, public_message(str(exc), job_dir),
                         exc.category) from None
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        job = store.add({"id": job_id, "owner": owner, "model": model, "model_path": str(config.models[model]),
                         "inputs": inputs, "options": {k: v for k, v in request.options_json().items() if k in JOB_OPTIONS},
                         "output_suffix": output_suffix})
        pool.submit(job)
        log.info("job %s queued: model %s, inputs %s", job_id, model, ", ".join(inputs))
        return {"id": job_id, "state": job["state"]}

    @app.post(f"{API_PREFIX}/finetune", status_code=202)
    async def submit_finetune(request: Request, owner: str = Depends(authenticate)) -> dict[str, Any]:
        if not config.allow_training:
            raise _error(403, "this server does not fine-tune models; its operator can allow it with "
                              "`unetrpp serve --allow-training`", ENVIRONMENT)
        try:
            return await _submit_finetune(request, owner)
        finally:
            form = getattr(request, "_form", None)
            if form is not None:
                await form.close()

    async def _submit_finetune(request: Request, owner: str) -> dict[str, Any]:
        form, model, parsed = await read_form(request, owner)
        try:
            options = finetune_options(parsed, config.max_train_iterations)
            name = check_model_name(form.get("name"))
        except UnetrppError as exc:
            raise _error(422, f"{exc}") from None
        if name in manifests:
            raise _error(409, f"name {name!r}: a model of that name is on this server; choose a new name", OUTPUT)
        extra = sorted(k for k in form.keys() if k not in ("model", "name", "options", "data"))
        upload = form.get("data")
        if extra or upload is None or isinstance(upload, str):
            raise _error(422, "the form takes 'model', 'name', 'data' (a zip of the case set: dataset.json, imagesTr/, "
                              "labelsTr/) and optional 'options'" + (f"; unexpected: {', '.join(extra)}" if extra else ""))
        if not (upload.filename or "").lower().endswith(".zip"):
            raise _error(400, f"data ({upload.filename!r}): send the case set folder as a .zip")

        def save(folder: Path) -> None:
            archive = folder / "cases.zip"
            with open(archive, "wb") as dst:
                shutil.copyfileobj(upload.file, dst, _CHUNK)
            try:
                extract_case_set(archive, folder / "cases", config.max_upload_bytes)
            finally:
                archive.unlink(missing_ok=True)

        job_id, job_dir = store.new_job_dir()
        try:
            await run_in_threadpool(save, job_dir / "inputs")
        except UnetrppError as exc:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise _error(413 if exc.category == RESOURCE else 400, f"data ({upload.filename!r}): {exc}",
                         exc.category) from None
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        job = store.add({"id": job_id, "owner": owner, "kind": "finetune", "model": model, "name": name,
                         "model_path": str(config.models[model]), "inputs": {"cases": "cases"}, "options": options,
                         "output_suffix": ".zip"})
        pool.submit(job)
        log.info("job %s queued: fine-tune %s into %s, %d iteration(s)", job_id, model, name, options["iterations"])
        return {"id": job_id, "state": job["state"]}

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}")
    def job_status(job_id: str, owner: str = Depends(authenticate)) -> dict[str, Any]:
        job = owned_job(job_id, owner)
        out = {k: job.get(k) for k in ("id", "state", "model", "created", "started", "finished", "device", "error",
                                        "category", "output_suffix")}
        out["kind"] = job.get("kind", "segment")
        progress = pool.progress.get(job_id) if job["state"] == "running" else None
        out.update({"stage": None, "message": None, "done": None, "total": None, "fraction": None, "eta_s": None})
        out.update(progress or {})
        if job["state"] == "queued":
            queued = store.queued_ids()
            out["queue_position"] = queued.index(job_id) + 1 if job_id in queued else None
        if job["state"] == "done":
            out.update(fraction=1.0, eta_s=0.0, timing_s=job.get("timing_s"))
        return out

    def finished_file(job_id: str, owner: str, report: bool) -> Path:
        job = owned_job(job_id, owner)
        if job["state"] != "done":
            detail = f": {job['error']}" if job.get("error") else ""
            raise _error(409, f"job {job_id} is {job['state']}{detail}; its result exists only once it is done")
        path = store.report_path(job) if report else store.result_path(job)
        if not path.is_file():
            raise _error(410, f"the result of job {job_id} is no longer on the server")
        return path

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/result")
    def job_result(job_id: str, owner: str = Depends(authenticate)) -> FileResponse:
        path = finished_file(job_id, owner, report=False)
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/report")
    def job_report(job_id: str, owner: str = Depends(authenticate)) -> JSONResponse:
        return JSONResponse(json.loads(finished_file(job_id, owner, report=True).read_text()))

    @app.delete(f"{API_PREFIX}/jobs/{{job_id}}", status_code=202)
    def cancel(job_id: str, owner: str = Depends(authenticate)) -> dict[str, Any]:
        job = owned_job(job_id, owner)
        if job["state"] not in ACTIVE:
            raise _error(409, f"job {job_id} is already {job['state']}; there is nothing to cancel")
        store.cancel_flag(job_id).touch()
        if job["state"] == "queued":
            job = store.update(job_id, state="cancelled", finished=time.time()) or job
        return {"id": job_id, "state": job["state"], "cancel_requested": True}

    return app


def read_tokens(path: Path) -> list[str]:
    """Tokens of a token file: one per line; blank lines and lines starting with # are ignored.
    Short tokens are refused: a guessable token is no protection."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UnetrppError(f"cannot read the token file {path}: {exc}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise UnetrppError(f"the token file {path} holds no token (one per line); create one with e.g. "
                           "`python -c \"import secrets; print(secrets.token_urlsafe(32))\" > tokens.txt`")
    short = [i for i, t in enumerate(tokens, 1) if len(t) < 16 or re.search(r"\s", t)]
    if short:
        raise UnetrppError(f"token(s) {', '.join(map(str, short))} in {path} are shorter than 16 characters or hold "
                           "spaces; use long random tokens (secrets.token_urlsafe(32))")
    return tokens
