"""UNETR++ for 3D Slicer: segment CT and MRI volumes with UNETR++ models.

Thin Slicer classes. The logic, GUI decisions and model management live in UNETRPlusPlusLib/
(no Qt there, tested headless); the engine (UNETRPlusPlus/unetrpp) runs in a separate process.
"""

from __future__ import annotations

import logging
import os

import ctk  # noqa: F401 - registers ctk widgets used by the .ui
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.util import VTKObservationMixin

from UNETRPlusPlusLib import dependencies, modelstore, sampledata, selftest
from UNETRPlusPlusLib.errors import ModuleError
from UNETRPlusPlusLib.modeltasks import ModelManager
from UNETRPlusPlusLib.scene import scene_volumes
from UNETRPlusPlusLib.segment import SegmentationLogic, resolve_model
from UNETRPlusPlusLib.parameters import Parameters, parameter_node
from UNETRPlusPlusLib.process import GpuProbe
from UNETRPlusPlusLib.remote_panel import ServerPanel
from UNETRPlusPlusLib.results import overall_quality, result_rows
from UNETRPlusPlusLib.state import MAX_INPUT_SELECTORS, GuiState, device_choices, official_variant_choice
from UNETRPlusPlusLib.terminologies import load_terminology
from UNETRPlusPlusLib.training_panel import TrainingPanel

CITATION = (
    "Shaker A, Maaz M, Rasheed H, Khan S, Yang M-H, Khan FS. UNETR++: Delving into Efficient and "
    "Accurate 3D Medical Image Segmentation. arXiv:2212.04497 (2022)."
)
OFFICIAL_VARIANTS = ("synapse", "acdc", "brats", "lung")


class UNETRPlusPlus(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("UNETR++")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["UNETR++ for 3D Slicer developers (Independent)"]
        self.parent.helpText = _(
            "Segment CT and MRI volumes with UNETR++ models: choose a model, select the input "
            "volume(s), click <b>Segment</b>. The segmentation gets the model's segment names, "
            "colours and terminology, and a table with the volume of each segment.<br>"
            "Try it: <i>Sample Data</i> module, category UNETR++, then Segment with the demo model.<br>"
            "Models: install a model package or an official UNETR++ checkpoint with "
            "<i>Install from file</i>. Each model has its own licence, shown under the model "
            "selector; the official weights are Apache-2.0 and the training data's terms also apply.<br>"
            "<b>Not a medical device: research use only.</b><br>"
            "If you use UNETR++, cite: {citation}"
        ).format(citation=CITATION)
        self.parent.acknowledgementText = _(
            "UNETR++ was developed by Abdelrahman Shaker et al. (github.com/Amshaker/unetr_plus_plus). "
            "This module packages it for 3D Slicer; it uses PyTorch, safetensors and SimpleITK."
        )
        # After start-up, when the SampleData and Terminologies modules exist
        slicer.app.connect("startupCompleted()", registerResources)


def registerResources():
    """The example CT in the Sample Data module (category UNETR++, from the installed file:
    offline) and the UNETR++ terminology context (entries Slicer's default lists lack)."""
    try:
        import SampleData

        sampledata.register(SampleData.SampleDataLogic)
    except Exception:  # noqa: BLE001 - a missing sample must not stop the module from loading
        logging.exception("UNETR++: could not register the sample data")
    try:
        load_terminology(slicer.util.getModuleLogic("Terminologies"))
    except Exception:  # noqa: BLE001 - segments then keep their codes, only the picker lacks the entry
        logging.exception("UNETR++: could not load the terminology")


class UNETRPlusPlusWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui widgets to GuiState (UNETRPlusPlusLib/state.py) and the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.models = None
        self.state = GuiState()
        self.params = None
        self.run = None
        self.task = None
        self.taskDone = None  # what to do with the task's result
        self._updating = False
        self._observingParams = None
        self._writingParams = False  # our own writes to the parameter node are not news to us
        self.gpuProbe = None
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)

    # Setup ------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/UNETRPlusPlus.ui"))
        self.layout.addWidget(ui_widget)
        # Process on: this computer / server (remote_panel.py); a server run also needs httpx
        self.serverPanel = ServerPanel(self.layout, on_change=self.onProcessOnChanged)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        # "Improve the model": add corrected cases, fine-tune (training_panel.py, logic in training.py)
        self.trainingPanel = None
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNETRPlusPlusLogic()
        self.models = ModelManager()
        self.inputLabels = [getattr(self.ui, f"inputLabel{i}") for i in range(MAX_INPUT_SELECTORS)]
        self.inputSelectors = [getattr(self.ui, f"inputSelector{i}") for i in range(MAX_INPUT_SELECTORS)]
        self.setDeviceChoices([])
        self.gpuProbe = GpuProbe()  # which GPUs the engine sees, without torch in Slicer's process
        qt.QTimer.singleShot(500, self.checkGpuProbe)
        # the official checkpoints' links are clickable (openExternalLinks in the .ui)
        self.ui.modelInfoLabel.setTextInteractionFlags(qt.Qt.TextBrowserInteraction)

        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        for index, selector in enumerate(self.inputSelectors):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, i=index: self.onInputChanged(i, node))
        self.ui.outputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onSettingsChanged)
        self.ui.fastModeCheckBox.connect("toggled(bool)", self.onSettingsChanged)
        self.ui.probabilitiesCheckBox.connect("toggled(bool)", self.onSettingsChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentClicked)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self.ui.installFromFileButton.connect("clicked(bool)", self.onInstallFromFile)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModel)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)

        # Scene close: always (a run must stop with its scene). Node added/removed and the parameter
        # node: only while the module is shown (enter/exit), as Slicer's module template does.
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.state.missing_dependencies = dependencies.missing_packages(remote=self.serverPanel.settings().remote)
        self.refreshModels()
        self.trainingPanel = TrainingPanel(self.layout, self)

    def cleanup(self):
        self.timer.stop()
        if self.run is not None and not self.run.done:
            self.run.cancel()
        if self.task is not None and not self.task.done:
            self.task.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self.onSceneNodesChanged()

    def exit(self):
        self.removeObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.removeObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self.observeParameterNode(None)

    def onSceneStartClose(self, caller, event):
        if self.run is not None and not self.run.done:
            self.run.cancel()
        self.observeParameterNode(None)
        self.params = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.params = Parameters(parameter_node(slicer.mrmlScene))
        self.observeParameterNode(self.params.node)
        self.onParameterNodeModified()

    def observeParameterNode(self, node):
        if self._observingParams is not None:
            self.removeObserver(self._observingParams, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._observingParams = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onParameterNodeModified(self, *_args):
        """The parameter node changed (a loaded scene, a script, undo): the GUI follows it."""
        if self.params is None or self._updating or self._writingParams:
            return
        self.state.model_name = self.params.model or self.state.model_name
        self.state.assignments = self.params.input_ids()
        self.state.device, self.state.fast = self.params.device, self.params.fast
        self.updateGUI()

    def setDeviceChoices(self, gpus):
        self._updating = True
        try:
            self.ui.deviceSelector.clear()
            for value, text in device_choices(gpus):
                self.ui.deviceSelector.addItem(text, value)
        finally:
            self._updating = False
        self.updateGUI()

    def checkGpuProbe(self):
        gpus = self.gpuProbe.result() if self.gpuProbe is not None else []
        if gpus is None:
            qt.QTimer.singleShot(500, self.checkGpuProbe)
            return
        self.gpuProbe = None
        if gpus:
            self.setDeviceChoices(gpus)

    # State -> widgets ----------------------------------------------------------------------------
    def refreshModels(self, *args, select=None):
        if select:
            self.state.model_name = select
        self.state.set_models(modelstore.available_models())
        self._updating = True
        self.ui.modelSelector.clear()
        for m in self.state.models:
            self.ui.modelSelector.addItem(m.title + ("" if m.installed else "  " + _("(not installed)")), m.name)
        index = self.ui.modelSelector.findData(self.state.model_name)
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self._updating = False
        self.onSceneNodesChanged()

    def onSceneNodesChanged(self, *args):
        if self.params is None:
            return
        self.state.set_volumes(scene_volumes(slicer.mrmlScene))
        self.storeAssignments()
        self.updateGUI()

    def storeAssignments(self):
        if self.params is None:
            return
        self._writingParams = True
        try:
            for spec in self.state.required_inputs():
                node_id = self.state.assignments.get(spec.name)
                self.params.set_input_node(spec.name, slicer.mrmlScene.GetNodeByID(node_id) if node_id else None)
        finally:
            self._writingParams = False

    def updateGUI(self):
        if self.params is None or not hasattr(self, "ui"):
            return
        self._updating = True
        try:
            model = self.state.model
            self.ui.modelInfoLabel.text = self.state.model_info_text()
            self.ui.downloadModelButton.visible = bool(model and not model.installed and model.downloadable)
            self.ui.removeModelButton.enabled = (bool(model and model.installed and not model.bundled)
                                                 and not self.state.running)
            inputs = self.state.required_inputs()
            for i, (label, selector) in enumerate(zip(self.inputLabels, self.inputSelectors)):
                shown = i < len(inputs)
                label.visible = selector.visible = shown
                if shown:
                    label.text = self.state.input_label(inputs[i])
                    node_id = self.state.assignments.get(inputs[i].name)
                    selector.setCurrentNode(slicer.mrmlScene.GetNodeByID(node_id) if node_id else None)
            self.ui.deviceSelector.setCurrentIndex(max(self.ui.deviceSelector.findData(self.state.device), 0))
            self.ui.fastModeCheckBox.checked = self.state.fast
            self.ui.probabilitiesCheckBox.checked = self.params.probabilities
            missing = self.state.missing_dependencies
            self.ui.installDependenciesButton.visible = bool(missing)
            self.ui.dependenciesLabel.visible = bool(missing)
            self.ui.dependenciesLabel.text = (
                _("Missing Python packages: {packages}").format(packages=dependencies.describe_missing(missing))
                if missing else "")
            enabled, reason = self.state.segment_enabled()
            self.ui.segmentButton.text = self.state.button_text()
            self.ui.segmentButton.enabled = enabled
            self.ui.segmentButton.toolTip = reason
            self.ui.progressBar.value = self.state.overall_percent()
            self.ui.progressBar.visible = self.state.running or self.state.stage == "done"
            self.ui.statusLabel.text = self.state.progress_text() if (self.state.running or self.state.error or self.state.stage == "done") else reason
            for w in (self.ui.modelSelector, self.ui.installFromFileButton, self.ui.outputSelector):
                w.enabled = not self.state.running
        finally:
            self._updating = False
        if self.trainingPanel is not None:
            self.trainingPanel.update()

    def currentInputs(self):
        """The volume node chosen for each input of the current model."""
        return {spec.name: slicer.mrmlScene.GetNodeByID(self.state.assignments.get(spec.name, ""))
                for spec in self.state.required_inputs()}

    def taskRunning(self):
        return self.task is not None or (self.run is not None and not self.run.done)

    def showResults(self, report):
        """The results table: volume per structure, its quality status coloured, the reasons on
        hover, a volume cut by the field of view marked as a lower bound (UNETRPlusPlusLib/results.py)."""
        rows = result_rows(report)
        table = self.ui.resultsTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            cells = [row.name, row.volume_text, row.status_text]
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row.tooltip)
                if c == 2 and row.colour:
                    item.setBackground(qt.QBrush(qt.QColor(row.colour)))
                if c == 1 and row.partial:
                    item.setForeground(qt.QBrush(qt.QColor("#8a4b00")))
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        table.visible = bool(rows)
        status, text = overall_quality(report)
        self.ui.qualityLabel.text = text
        self.ui.qualityLabel.visible = bool(text)
        if status in ("review", "fail"):
            self.state.log.append(text)

    def appendLog(self):
        text = "\n".join(self.state.log)
        if self.ui.statusLog.toPlainText() != text:
            self.ui.statusLog.setPlainText(text)
            self.ui.statusLog.verticalScrollBar().setValue(self.ui.statusLog.verticalScrollBar().maximum)

    # Widgets -> state ------------------------------------------------------------------------------
    def onModelChanged(self, index):
        if self._updating or index < 0:
            return
        self.state.select_model(self.ui.modelSelector.itemData(index))
        if self.params is not None:
            self._writingParams = True
            self.params.model = self.state.model_name
            self._writingParams = False
        self.storeAssignments()
        self.updateGUI()

    def onInputChanged(self, index, node):
        if self._updating:
            return
        inputs = self.state.required_inputs()
        if index < len(inputs):
            self.state.assign(inputs[index].name, node.GetID() if node else None)
            self.storeAssignments()
        self.updateGUI()

    def onOutputChanged(self, node):
        if not self._updating and self.params is not None:
            self._writingParams = True
            self.params.output_node = node
            self._writingParams = False

    def onSettingsChanged(self, *args):
        if self._updating or self.params is None:
            return
        self.state.device = self.ui.deviceSelector.currentData or "auto"
        self.state.fast = self.ui.fastModeCheckBox.checked
        self._writingParams = True
        self.params.device, self.params.fast = self.state.device, self.state.fast
        self.params.probabilities = self.ui.probabilitiesCheckBox.checked
        self._writingParams = False
        self.updateGUI()

    # Segment / cancel ------------------------------------------------------------------------------
    def onSegmentClicked(self):
        if self.task is not None:  # the button reads "Cancel" while a download or fine-tune runs
            self.state.cancelling = True
            self.task.request_cancel()
            self.updateGUI()
            return
        if self.run is not None and not self.run.done:
            # ask the engine's whole process tree to stop; the timer finishes the run once every
            # process is gone (within about a second), the GUI never waits for it
            self.state.cancelling = True
            self.run.request_cancel()
            self.updateGUI()
            return
        inputs = self.currentInputs()
        self.state.start_run()
        self.ui.resultsTable.visible = self.ui.qualityLabel.visible = False
        try:
            self.serverPanel.apply_to(self.logic)  # local worker, or the same worker with --server
            self.run = self.logic.start(
                self.state.model, inputs, output_node=self.ui.outputSelector.currentNode(),
                device=self.state.device, fast=self.state.fast,
                probabilities=self.ui.probabilitiesCheckBox.checked, on_event=self.state.apply_event,
            )
        except ModuleError as exc:
            self.state.finish_run(error=str(exc))
            self.updateGUI()
            self.appendLog()
            slicer.util.errorDisplay(str(exc), windowTitle=_("UNETR++"))
            return
        self.timer.start()
        self.updateGUI()

    def onTimer(self):
        if self.task is not None:
            self.pollTask()
        if self.run is None:
            if self.task is None:
                self.timer.stop()
            return
        finished = self.run.poll()
        if finished:
            if self.task is None:
                self.timer.stop()
            run, self.run = self.run, None
            if run.error is not None:
                self.state.finish_run(error=str(run.error))
                if run.error.category != "cancelled":
                    slicer.util.errorDisplay(str(run.error), windowTitle=_("UNETR++"), detailedText=run.error.details or None)
            else:
                result = run.result
                self.state.finish_run(message=_("Done in {seconds} s: {name}").format(
                    seconds=f"{result.seconds:.1f}", name=result.segmentation_node.GetName()))
                self.ui.outputSelector.setCurrentNode(result.segmentation_node)
                self.showResults(result.report)
                self.trainingPanel.segmentationSelector.setCurrentNode(result.segmentation_node)
                slicer.util.setSliceViewerLayers(background=run.reference, fit=False)
        self.updateGUI()
        self.appendLog()

    # Background tasks (model install, fine-tune) ------------------------------------------------------
    def startTask(self, task, on_done):
        """Run a BackgroundTask (UNETRPlusPlusLib/tasks.py) with the shared progress, log and timer;
        `on_done(result)` when it succeeds."""
        self.task, self.taskDone = task, on_done
        self.state.start_run()
        self.timer.start()
        self.updateGUI()

    def pollTask(self):
        task, on_done = self.task, self.taskDone
        if not task.poll():
            return
        self.task = self.taskDone = None
        if task.error is not None:
            self.state.finish_run(error=str(task.error))
            if task.error.category != "cancelled":
                slicer.util.errorDisplay(str(task.error), windowTitle=_("UNETR++"), detailedText=task.error.details or None)
        else:
            self.state.finish_run(message=_("{what}: done in {seconds} s").format(
                what=task.what, seconds=f"{task.seconds:.0f}"))
            on_done(task.result)
        self.updateGUI()
        self.appendLog()

    def onInstalled(self, path):
        self.state.log.append(_("Installed model at {path}").format(path=path))
        self.refreshModels(select=path.name if path else None)

    def onDownloadModel(self):
        model = self.state.model
        if model is None or self.task is not None:
            return
        self.startTask(self.models.download(model.name, on_event=self.state.apply_event), self.onInstalled)

    def onInstallFromFile(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Install UNETR++ model"),
            "", _("Model package or official checkpoint") + " (*.zip model.json *.model *.pth *.pt);;"
            + _("All files") + " (*)")
        if not path:
            return
        variant = None
        if path.endswith("model.json"):
            path = os.path.dirname(path)
        elif os.path.splitext(path)[1].lower() in (".model", ".pth", ".pt"):
            # A dialog object, not QInputDialog.getItem: through PythonQt getItem cannot report
            # Cancel (its `ok` is an output pointer) and returns the first item instead.
            dialog = qt.QInputDialog(slicer.util.mainWindow())
            dialog.setWindowTitle(_("Official UNETR++ checkpoint"))
            dialog.setLabelText(_("Which official network is this checkpoint?"))
            dialog.setComboBoxItems(list(OFFICIAL_VARIANTS))
            dialog.setComboBoxEditable(False)
            accepted = bool(dialog.exec_())
            variant = official_variant_choice(accepted, dialog.textValue(), OFFICIAL_VARIANTS)
            dialog.deleteLater()
            if variant is None:  # cancelled: nothing is installed
                return
        try:
            self.startTask(self.models.install_from_file(path, official_variant=variant, on_event=self.state.apply_event),
                           self.onInstalled)
        except ModuleError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("UNETR++"))

    def onRemoveModel(self):
        model = self.state.model
        if model is None or not model.installed:
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("Remove model '{name}' ({path})?").format(name=model.name, path=model.path), windowTitle=_("UNETR++")):
            return
        try:
            self.models.remove(model.name)
        except ModuleError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle=_("UNETR++"))
        self.state.model_name = ""
        self.refreshModels()

    def onProcessOnChanged(self):
        self.state.missing_dependencies = dependencies.missing_packages(remote=self.serverPanel.settings().remote)
        self.updateGUI()

    def onInstallDependencies(self):
        missing = dependencies.missing_packages(remote=self.serverPanel.settings().remote)
        plan = dependencies.plan_install(missing, dependencies.pytorchutils_available())
        if not missing:
            self.state.missing_dependencies = []
            self.updateGUI()
            return
        if not slicer.util.confirmOkCancelDisplay(
                _("UNETR++ needs these Python packages, which will be installed now (this can take several "
                  "minutes and needs internet access):\n{plan}\n\nSlicer's own numpy, SimpleITK "
                  "and VTK are not changed.").format(plan=plan.describe()), windowTitle=_("UNETR++")):
            return
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            dependencies.install(missing, confirmed=True)
        self.state.missing_dependencies = dependencies.missing_packages(remote=self.serverPanel.settings().remote)
        self.updateGUI()


class UNETRPlusPlusLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """The module logic (UNETRPlusPlusLib/segment.py; scene helpers in scene.py, background tasks in tasks.py)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self)

    def getParameterNode(self):
        return parameter_node(slicer.mrmlScene)


class UNETRPlusPlusTest(ScriptedLoadableModuleTest):
    """Reload & Test, and ctest `py_UNETRPlusPlus`: input validation, then a real segmentation of
    the sample CT (from the Sample Data module) with the bundled demo model, checking segment names
    and Dice against the reference labels (UNETRPlusPlusLib/selftest.py; the same check runs
    headless in Testing/slicer/test_selftest.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_state_and_bad_input()
        self.setUp()
        self.test_segment_sample_with_demo_model()

    def test_state_and_bad_input(self):
        from UNETRPlusPlusLib.errors import InputError
        from UNETRPlusPlusLib.modelstore import ModelInfo, ModelInput

        self.delayDisplay(_("UNETR++: checking input validation"))
        model = ModelInfo(name="demo", title="demo", installed=True, path=None,
                          inputs=(ModelInput("ct", "CT"),))
        logic = UNETRPlusPlusLogic()
        try:
            logic.check_inputs(model, {})
        except InputError as exc:
            self.assertEqual(exc.kind, "no-volume")
        else:
            self.fail("no input volume was accepted")
        state = GuiState()
        state.set_models([model])
        self.assertFalse(state.segment_enabled()[0])

    def test_segment_sample_with_demo_model(self):
        import SampleData

        self.delayDisplay(_("UNETR++: segmenting the sample CT with the demo model"))
        registerResources()
        ct = SampleData.downloadSample(sampledata.SAMPLE_NAME)
        self.assertIsNotNone(ct)
        logic = UNETRPlusPlusLogic()
        result, scores = selftest.run(logic, ct, timeout=600)
        segmentation = result.segmentation_node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [label.name for label in resolve_model(selftest.DEMO_MODEL).labels])
        for organ, minimum in selftest.MIN_DICE.items():
            self.assertGreater(scores[organ], minimum, f"{organ}: Dice {scores[organ]:.3f}")
        rows = {row.name: row for row in result_rows(result.report)}  # what the results table shows
        self.assertTrue(set(selftest.MIN_DICE) <= set(rows))
        logging.info("UNETR++ self-test: quality %s", {k: rows[k].status for k in selftest.MIN_DICE})
        logging.info("UNETR++ self-test: Dice %s", {k: round(v, 3) for k, v in scores.items()})
        self.delayDisplay(_("Test passed"))
