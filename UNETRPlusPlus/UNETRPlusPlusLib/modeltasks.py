"""Model management from the module: download a catalogue model, install a package file or an
official UNETR++ checkpoint (`unetrpp models install ... --progress json`, a BackgroundTask in a
separate process, so no torch in Slicer's process), remove an installed model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unetrpp import catalogue
from unetrpp import errors as engine
from unetrpp.errors import UnetrppError

from .errors import ModelError
from .i18n import _
from .process import WorkerProcess, cli_command, engine_environment
from .tasks import BackgroundTask, EventCallback

OFFICIAL_SUFFIXES = (".model", ".pth", ".pt")


class ModelTask(BackgroundTask):
    """`unetrpp models install ...` in a separate process; `result` (`installed_path`) is the
    installed package's folder."""

    cancelled_message = _("Cancelled; nothing was installed.")
    advice = {
        engine.MODEL: _("Nothing was installed."),
        engine.OUTPUT: _("Nothing was installed."),
        engine.INPUT: _("Nothing was installed."),
    }

    def __init__(self, proc: WorkerProcess, what: str, on_event: EventCallback | None = None) -> None:
        super().__init__(proc, on_event)
        self.what = what

    def finish(self, done_event: dict[str, Any]) -> Path:
        return Path((done_event.get("outputs") or {}).get("model", ""))

    @property
    def installed_path(self) -> Path | None:
        return self.result


class ModelManager:
    """Install (download / package file / official checkpoint) and remove models in UNETRPP_HOME."""

    def __init__(self, command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.command = list(command) if command else cli_command()
        self.env = env

    def _start(self, args: list[str], what: str, on_event: EventCallback | None) -> ModelTask:
        proc = WorkerProcess([*self.command, "models", "install", *args, "--progress", "json"],
                             env=self.env or engine_environment())
        return ModelTask(proc, what, on_event)

    def download(self, name: str, overwrite: bool = False, on_event: EventCallback | None = None) -> ModelTask:
        return self._start([name] + (["--overwrite"] if overwrite else []),
                           _("Downloading model '{name}'").format(name=name), on_event)

    def install_from_file(self, path: str | os.PathLike[str], official_variant: str | None = None,
                          overwrite: bool = False, on_event: EventCallback | None = None) -> ModelTask:
        """A package folder/.zip, or with `official_variant` an official UNETR++ checkpoint."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path} does not exist", kind="not-found")
        if official_variant is None and path.is_file() and path.suffix.lower() in OFFICIAL_SUFFIXES:
            raise ModelError(
                f"{path.name} looks like an official UNETR++ checkpoint: choose its variant "
                "(synapse, acdc, brats or lung) to import it", kind="needs-variant")
        args = [str(path)] + (["--official", official_variant] if official_variant else [])
        return self._start(args + (["--overwrite"] if overwrite else []),
                           _("Installing {file}").format(file=path.name), on_event)

    @staticmethod
    def remove(name: str) -> Path:
        """Delete an installed model (the engine's `remove_model`: atomic rename, then delete)."""
        try:
            return catalogue.remove_model(name)
        except UnetrppError as exc:
            raise ModelError(str(exc), kind="not-installed") from None
