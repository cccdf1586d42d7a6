""""Process on: this computer / a server": run the segmentation on a `unetrpp serve` server.

Remote runs reuse everything of local runs: the Logic starts the same worker process
(`python -m unetrpp.worker ...`, JSON-lines progress, Cancel = stop the process) with
`--server URL` added; the worker uploads the inputs, relays the server's stage, progress and ETA,
cancels the server job when it is stopped, and downloads the result to the path the Logic then
loads. So progress, Cancel and error messages behave as for a local run.

The URL and token are application settings (`qt.QSettings`, passed in as `settings` so this module
needs no Qt), never stored in the scene; the token reaches the worker through its environment
(`UNETRPP_SERVER_TOKEN`), not its command line (visible to other users in process lists).
No torch, no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .process import engine_environment, worker_command

#: Application settings keys (qt.QSettings), not scene parameters: the token must not be saved
#: with a scene that may be shared.
SETTINGS_PROCESS_ON = "UNETRPlusPlus/ProcessOn"  # "local" or "server"
SETTINGS_URL = "UNETRPlusPlus/ServerURL"
SETTINGS_TOKEN = "UNETRPlusPlus/ServerToken"
TOKEN_ENV = "UNETRPP_SERVER_TOKEN"  # read by unetrpp.client


@dataclass(frozen=True)
class ServerSettings:
    process_on: str = "local"  # "local" | "server"
    url: str = ""
    token: str = ""

    @property
    def remote(self) -> bool:
        return self.process_on == "server"


def load_settings(settings: Any) -> ServerSettings:
    """From a `qt.QSettings` (or anything with `value(key, default)`)."""
    def text(key: str, default: str = "") -> str:
        value = settings.value(key, default)
        return str(value) if value is not None else default

    return ServerSettings(text(SETTINGS_PROCESS_ON, "local"), text(SETTINGS_URL).strip(), text(SETTINGS_TOKEN).strip())


def save_settings(settings: Any, server: ServerSettings) -> None:
    settings.setValue(SETTINGS_PROCESS_ON, server.process_on)
    settings.setValue(SETTINGS_URL, server.url)
    settings.setValue(SETTINGS_TOKEN, server.token)


def settings_problem(server: ServerSettings) -> str:
    """What keeps a remote run from starting ('' when nothing), phrased for the user."""
    if not server.remote:
        return ""
    url = urlparse(server.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        return "Enter the server address, e.g. http://gpu-server:8890 (Process on: server)."
    if not server.token:
        return "Enter the access token the server administrator gave you (Process on: server)."
    return ""


def worker_command_for(server: ServerSettings) -> list[str]:
    """The worker command prefix for `SegmentationLogic(command=...)`."""
    return [*worker_command(), "--server", server.url] if server.remote else worker_command()


def worker_environment(server: ServerSettings) -> dict[str, str]:
    """The worker environment for `SegmentationLogic(env=...)`: the token only for remote runs."""
    return engine_environment({TOKEN_ENV: server.token} if server.remote else None)


def server_models(server: ServerSettings, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The models the server offers ("Test connection"); raises `unetrpp.client.ServerError` with
    a message for an unreachable server or a refused token."""
    from unetrpp.client import ServerClient

    with ServerClient(server.url, server.token, timeout=timeout) as client:
        return client.models()
