"""The "Improve the model" section of the module panel (Qt): "Add to training cases" and "Fine-tune".
The work is in training.py (tested headless); this only binds widgets to it. The fine-tune runs as
the widget's background task (progress, ETA, Cancel and log as for a segmentation); its result is
shown as a table of Dice before/after per structure and the new model is selected in the model list
(the parent model stays)."""

from __future__ import annotations

from typing import Any

from . import remote, training
from .errors import ModuleError
from .i18n import _


def default_new_name(parent: str, taken: set[str]) -> str:
    """`<parent>-ft1`, `<parent>-ft2`, ... the first name not taken (model names are lower case)."""
    base = training.safe_name(parent.lower(), "model").lower()[:58]
    n = 1
    while f"{base}-ft{n}" in taken:
        n += 1
    return f"{base}-ft{n}"


def add_case_problem(model: Any, inputs: dict[str, Any], seg_node: Any) -> str:
    """Why "Add to training cases" cannot run now ('' when it can)."""
    if model is None or not model.installed:
        return _("Choose an installed model first.")
    if any(inputs.get(spec.name) is None for spec in model.inputs):
        return _("Select the input volume(s) of the model above.")
    if seg_node is None:
        return _("Select the corrected segmentation.")
    return ""


def finetune_problem(model: Any, case_set: training.CaseSet | None, running: bool) -> str:
    """Why "Fine-tune" cannot start now ('' when it can)."""
    if running:
        return _("Another task is running.")
    if model is None or not model.installed:
        return _("Choose an installed model first.")
    if case_set is None or not case_set.cases:
        return _("Add at least one corrected case to the case set first.")
    return ""


class TrainingPanel:
    """A collapsible section added to `parent_layout`. `host` is the module widget: it gives the
    model (`host.state.model`), the input volumes (`host.currentInputs()`), starts background tasks
    (`host.startTask(task, on_done)`) and refreshes the model list (`host.refreshModels()`)."""

    def __init__(self, parent_layout: Any, host: Any) -> None:
        import ctk
        import qt
        import slicer

        self._qt, self._slicer, self.host = qt, slicer, host
        self.task = None
        self.sets: list[training.CaseSet] = []  # read by refreshSets, not on every GUI update
        box = ctk.ctkCollapsibleButton()
        box.text = _("Improve the model with corrected cases")
        box.collapsed = True
        parent_layout.addWidget(box)
        form = qt.QFormLayout(box)
        self.segmentationSelector = slicer.qMRMLNodeComboBox()
        self.segmentationSelector.nodeTypes = ["vtkMRMLSegmentationNode"]
        self.segmentationSelector.addEnabled = False
        self.segmentationSelector.removeEnabled = False
        self.segmentationSelector.noneEnabled = True
        self.segmentationSelector.setMRMLScene(slicer.mrmlScene)
        self.segmentationSelector.toolTip = _("The segmentation, corrected in the Segment Editor, to store as a case")
        self.caseSet = qt.QComboBox()
        self.caseSet.editable = True
        self.caseSet.toolTip = _("Cases are stored in the nnU-Net layout under {folder}").format(
            folder=str(training.cases_root()))
        self.caseName = qt.QLineEdit()
        self.caseName.placeholderText = _("automatic (volume name and time)")
        self.addButton = qt.QPushButton(_("Add to training cases"))
        self.newName = qt.QLineEdit()
        self.iterations = qt.QSpinBox()
        self.iterations.setRange(1, 100000)
        self.iterations.value = training.DEFAULT_ITERATIONS
        self.finetuneButton = qt.QPushButton(_("Fine-tune"))
        self.status = qt.QLabel("")
        self.status.wordWrap = True
        self.results = qt.QTableWidget()
        self.results.setColumnCount(4)
        self.results.setHorizontalHeaderLabels([_("Structure"), _("Dice before"), _("Dice after"), _("Change")])
        self.results.visible = False
        form.addRow(_("Segmentation:"), self.segmentationSelector)
        form.addRow(_("Case set:"), self.caseSet)
        form.addRow(_("Case name:"), self.caseName)
        form.addRow(self.addButton)
        form.addRow(_("New model name:"), self.newName)
        form.addRow(_("Iterations:"), self.iterations)
        form.addRow(self.finetuneButton)
        form.addRow(self.status)
        form.addRow(self.results)
        self.addButton.connect("clicked(bool)", self.onAddCase)
        self.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.caseSet.connect("currentIndexChanged(int)", lambda *_a: self.update())
        self.refreshSets()

    # State -> widgets -------------------------------------------------------------------------------
    def _sets(self) -> list[training.CaseSet]:
        try:
            return training.case_sets()
        except ModuleError:
            return []

    def refreshSets(self) -> None:
        current = self.caseSet.currentText
        self.caseSet.clear()
        self.sets = sets = self._sets()
        for s in sets:
            self.caseSet.addItem(s.name)
        model = self.host.state.model
        default = current or (training.safe_name(model.name) + "-cases" if model is not None else "cases")
        index = self.caseSet.findText(default)
        if index >= 0:
            self.caseSet.setCurrentIndex(index)
        else:
            self.caseSet.setEditText(default)
        self.update()

    def currentSet(self) -> training.CaseSet | None:
        name = self.caseSet.currentText.strip()
        return next((s for s in self.sets if s.name == name), None)

    def update(self) -> None:
        model = self.host.state.model
        running = self.host.taskRunning()
        problem = add_case_problem(model, self.host.currentInputs(), self.segmentationSelector.currentNode())
        self.addButton.enabled = not problem and not running
        self.addButton.toolTip = problem or _("Store the input volume(s) and this segmentation as one training case")
        if model is not None and not self.newName.text:
            self.newName.text = default_new_name(model.name, {m.name for m in self.host.state.models})
        if self.task is not None and not self.task.done:
            self.finetuneButton.text = _("Cancel")
            self.finetuneButton.enabled = True
            self.finetuneButton.toolTip = _("Stop the fine-tune; no model is installed")
        else:
            self.finetuneButton.text = _("Fine-tune")
            case_set = self.currentSet()
            problem = finetune_problem(model, case_set, running)
            self.finetuneButton.enabled = not problem
            self.finetuneButton.toolTip = problem or _("Fine-tune '{model}' on the {count} case(s) of '{set}'").format(
                model=model.name, count=len(case_set.cases), set=case_set.name)

    # Actions ------------------------------------------------------------------------------------------
    def onAddCase(self) -> None:
        model = self.host.state.model
        try:
            record = training.add_training_case(model, self.host.currentInputs(),
                                                self.segmentationSelector.currentNode(),
                                                self.caseSet.currentText.strip(), self.caseName.text.strip())
        except ModuleError as exc:
            self._slicer.util.errorDisplay(str(exc), windowTitle=_("UNETR++"))
            return
        self.status.text = _("Stored case '{case}' in '{set}' ({labels}).").format(
            case=record["case"], set=self.caseSet.currentText.strip(), labels=", ".join(record.get("labels_present", [])))
        self.caseName.text = ""
        self.refreshSets()

    def onFinetune(self) -> None:
        if self.task is not None and not self.task.done:
            self.task.request_cancel()
            self.finetuneButton.enabled = False
            return
        model, case_set = self.host.state.model, self.currentSet()
        try:
            server = self.host.serverPanel.settings()  # Process on: this computer / a server
            problem = remote.settings_problem(server)
            if problem:
                raise ModuleError(problem, kind="server-settings")
            if not server.remote and not self.ensureTrainingPackages():
                return
            self.task = training.FineTuner(server=server).start(model, case_set.path if case_set else self.caseSet.currentText,
                                                   self.newName.text.strip(), int(self.iterations.value),
                                                   device=self.host.state.device,
                                                   on_event=self.host.state.apply_event)
        except ModuleError as exc:
            self._slicer.util.errorDisplay(str(exc), windowTitle=_("UNETR++"))
            return
        self.results.visible = False
        self.status.text = _("Fine-tuning '{model}' on '{set}'...").format(model=model.name, set=case_set.name)
        self.host.startTask(self.task, self.onFinetuneDone)
        self.update()

    def ensureTrainingPackages(self) -> bool:
        """Fine-tuning here needs MONAI (dependencies.TRAINING_REQUIREMENTS): offer to install it."""
        from . import dependencies

        missing = dependencies.missing_packages(training=True)
        if not missing:
            return True
        plan = dependencies.plan_install(missing, dependencies.pytorchutils_available())
        if not self._slicer.util.confirmOkCancelDisplay(
                _("Fine-tuning needs these Python packages, which will be installed now (this can take several "
                  "minutes and needs internet access):\n{plan}").format(plan=plan.describe()), windowTitle=_("UNETR++")):
            return False
        with self._slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            dependencies.install(missing, confirmed=True)
        return not dependencies.missing_packages(training=True)

    def onFinetuneDone(self, result: training.FineTuneResult) -> None:
        rows = result.rows()
        self.results.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.results.setItem(r, c, self._qt.QTableWidgetItem(text))
        self.results.visible = bool(rows)
        self.status.text = _("New model '{name}' installed and selected; '{parent}' is unchanged.").format(
            name=result.model_name, parent=result.parent or self.host.state.model_name) + (
            "\n" + result.note if result.note else "")
        self.host.refreshModels(select=result.model_name)
        self.newName.text = ""
        self.update()

    def taskFinished(self) -> None:
        """The host's task ended (any outcome): buttons back to their idle state."""
        self.update()

