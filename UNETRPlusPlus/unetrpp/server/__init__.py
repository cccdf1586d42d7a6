"""`unetrpp serve`: a segmentation server (FastAPI + uvicorn) with a persisted job queue and one
worker process per device. `app` holds the HTTP API, `store` the jobs on disk, `workers` the
processes that run the engine. Needs the `[server]` extra."""

from .app import ServerConfig, create_app, read_tokens

__all__ = ["ServerConfig", "create_app", "read_tokens"]
