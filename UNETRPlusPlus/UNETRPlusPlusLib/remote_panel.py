"""The "Process on: this computer / server" section of the module panel (Qt; the logic behind it is
`remote.py`, tested headless). The URL and token are kept in Slicer's application settings
(qt.QSettings), never in the scene; the token field hides what is typed."""

from __future__ import annotations

from typing import Any

from . import remote
from .errors import ModuleError
from .i18n import _


class ServerPanel:
    """A collapsible section added to `parent_layout`; `apply_to(logic)` before each run."""

    def __init__(self, parent_layout: Any, on_change: Any = None) -> None:
        import ctk
        import qt

        self._qt = qt
        self._on_change = on_change  # the widget re-checks what remote runs need (httpx)
        box = ctk.ctkCollapsibleButton()
        box.text = _("Process on")
        box.collapsed = True
        parent_layout.addWidget(box)
        form = qt.QFormLayout(box)
        self.mode = qt.QComboBox()
        self.mode.addItem(_("this computer"), "local")
        self.mode.addItem(_("a segmentation server"), "server")
        self.url = qt.QLineEdit()
        self.url.placeholderText = _("http://gpu-server:8890")
        self.token = qt.QLineEdit()
        self.token.echoMode = qt.QLineEdit.Password
        self.token.placeholderText = _("access token from the server administrator")
        self.testButton = qt.QPushButton(_("Test connection"))
        self.status = qt.QLabel("")
        self.status.wordWrap = True
        form.addRow(_("Process on:"), self.mode)
        form.addRow(_("Server URL:"), self.url)
        form.addRow(_("Token:"), self.token)
        form.addRow(self.testButton, self.status)

        saved = remote.load_settings(qt.QSettings())
        self.mode.setCurrentIndex(1 if saved.remote else 0)
        self.url.text = saved.url
        self.token.text = saved.token
        self._enable()
        self.mode.connect("currentIndexChanged(int)", self._changed)
        self.url.connect("editingFinished()", self._changed)
        self.token.connect("editingFinished()", self._changed)
        self.testButton.connect("clicked(bool)", self._test)

    def settings(self) -> remote.ServerSettings:
        return remote.ServerSettings(self.mode.currentData or "local", self.url.text.strip(), self.token.text.strip())

    def apply_to(self, logic: Any) -> None:
        """Point the logic's worker at this computer or the server; a message when incomplete."""
        server = self.settings()
        problem = remote.settings_problem(server)
        if problem:
            raise ModuleError(problem, kind="server-settings")
        logic.command = remote.worker_command_for(server)
        logic.env = remote.worker_environment(server)

    def _enable(self) -> None:
        on_server = self.settings().remote
        for widget in (self.url, self.token, self.testButton):
            widget.enabled = on_server

    def _changed(self, *args: Any) -> None:
        remote.save_settings(self._qt.QSettings(), self.settings())
        self._enable()
        self.status.text = ""
        if self._on_change is not None:
            self._on_change()

    def _test(self, *args: Any) -> None:
        server = self.settings()
        problem = remote.settings_problem(server)
        if problem:
            self.status.text = problem
            return
        try:
            names = [m["name"] for m in remote.server_models(server)]
        except Exception as exc:  # unreachable, refused token, httpx missing: say so in the panel
            self.status.text = str(exc)
            return
        self.status.text = _("Connected; models on the server: {names}").format(names=", ".join(names) or _("none"))
