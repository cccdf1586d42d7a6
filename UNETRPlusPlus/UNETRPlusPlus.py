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
import vtk  # noqa: F401
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from UNETRPlusPlusLib import dependencies, modelstore
from UNETRPlusPlusLib.errors import ModuleError
from UNETRPlusPlusLib.logic import ModelManager, SegmentationLogic, scene_volumes
from UNETRPlusPlusLib.parameters import Parameters, parameter_node
from UNETRPlusPlusLib.state import DEVICES, MAX_INPUT_SELECTORS, GuiState

CITATION = (
    "Shaker A, Maaz M, Rasheed H, Khan S, Yang M-H, Khan FS. UNETR++: Delving into Efficient and "
    "Accurate 3D Medical Image Segmentation. arXiv:2212.04497 (2022)."
)
OFFICIAL_VARIANTS = ("synapse", "acdc", "brats", "lung")


class UNETRPlusPlus(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "UNETR++"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["UNETR++ for 3D Slicer developers (Independent)"]
        self.parent.helpText = (
            "Segment CT and MRI volumes with UNETR++ models: choose a model, select the input "
            "volume(s), click <b>Segment</b>. The segmentation gets the model's segment names, "
            "colours and terminology, and a table with the volume of each segment.<br>"
            "Models: install a model package or an official UNETR++ checkpoint with "
            "<i>Install from file</i>. Each model has its own licence, shown under the model "
            "selector; the official weights are Apache-2.0 and the training data's terms also apply.<br>"
            "<b>Not a medical device: research use only.</b><br>"
            f"If you use UNETR++, cite: {CITATION}"
        )
        self.parent.acknowledgementText = (
            "UNETR++ was developed by Abdelrahman Shaker et al. (github.com/Amshaker/unetr_plus_plus). "
            "This module packages it for 3D Slicer; it uses PyTorch, MONAI and SimpleITK."
        )


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
        self._updating = False
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.connect("timeout()", self.onTimer)

    # Setup ------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui_widget = slicer.util.loadUI(self.resourcePath("UI/UNETRPlusPlus.ui"))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = UNETRPlusPlusLogic()
        self.models = ModelManager()
        self.inputLabels = [getattr(self.ui, f"inputLabel{i}") for i in range(MAX_INPUT_SELECTORS)]
        self.inputSelectors = [getattr(self.ui, f"inputSelector{i}") for i in range(MAX_INPUT_SELECTORS)]
        for value, text in DEVICES:
            self.ui.deviceSelector.addItem(text, value)

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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onSceneNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onSceneNodesChanged)
        self.state.missing_dependencies = dependencies.missing_packages()
        self.initializeParameterNode()
        self.refreshModels()

    def cleanup(self):
        self.timer.stop()
        if self.run is not None and not self.run.done:
            self.run.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event):
        if self.run is not None and not self.run.done:
            self.run.cancel()
        self.params = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.params = Parameters(parameter_node(slicer.mrmlScene))
        self.state.model_name = self.params.model or self.state.model_name
        self.state.assignments = self.params.input_ids()
        self.state.device, self.state.fast = self.params.device, self.params.fast
        self.updateGUI()

    # State -> widgets ----------------------------------------------------------------------------
    def refreshModels(self, *_):
        self.state.set_models(modelstore.available_models())
        self._updating = True
        self.ui.modelSelector.clear()
        for m in self.state.models:
            self.ui.modelSelector.addItem(m.title + ("" if m.installed else "  (not installed)"), m.name)
        index = self.ui.modelSelector.findData(self.state.model_name)
        self.ui.modelSelector.setCurrentIndex(max(index, 0))
        self._updating = False
        self.onSceneNodesChanged()

    def onSceneNodesChanged(self, *_):
        if self.params is None:
            return
        self.state.set_volumes(scene_volumes(slicer.mrmlScene))
        self.storeAssignments()
        self.updateGUI()

    def storeAssignments(self):
        if self.params is None:
            return
        for spec in self.state.required_inputs():
            node_id = self.state.assignments.get(spec.name)
            self.params.set_input_node(spec.name, slicer.mrmlScene.GetNodeByID(node_id) if node_id else None)

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
            self.ui.dependenciesLabel.text = ("Missing Python packages: " + ", ".join(missing)) if missing else ""
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
            self.params.model = self.state.model_name
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
            self.params.output_node = node

    def onSettingsChanged(self, *_):
        if self._updating or self.params is None:
            return
        self.state.device = self.ui.deviceSelector.currentData or "auto"
        self.state.fast = self.ui.fastModeCheckBox.checked
        self.params.device, self.params.fast = self.state.device, self.state.fast
        self.params.probabilities = self.ui.probabilitiesCheckBox.checked
        self.updateGUI()

    # Segment / cancel ------------------------------------------------------------------------------
    def onSegmentClicked(self):
        if self.run is not None and not self.run.done:
            self.state.cancelling = True
            self.updateGUI()
            slicer.app.processEvents()
            self.run.cancel()
            self.onTimer()
            return
        inputs = {spec.name: slicer.mrmlScene.GetNodeByID(self.state.assignments.get(spec.name, ""))
                  for spec in self.state.required_inputs()}
        self.state.start_run()
        try:
            self.run = self.logic.start(
                self.state.model, inputs, output_node=self.ui.outputSelector.currentNode(),
                device=self.state.device, fast=self.state.fast,
                probabilities=self.ui.probabilitiesCheckBox.checked, on_event=self.state.apply_event,
            )
        except ModuleError as exc:
            self.state.finish_run(error=str(exc))
            self.updateGUI()
            self.appendLog()
            slicer.util.errorDisplay(str(exc), windowTitle="UNETR++")
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
                if run.error.kind != "cancelled":
                    slicer.util.errorDisplay(str(run.error), windowTitle="UNETR++", detailedText=run.error.details or None)
            else:
                result = run.result
                self.state.finish_run(message=f"Done in {result.seconds:.1f} s: {result.segmentation_node.GetName()}")
                self.ui.outputSelector.setCurrentNode(result.segmentation_node)
                slicer.util.setSliceViewerLayers(background=run.reference, fit=False)
        self.updateGUI()
        self.appendLog()

    # Models -----------------------------------------------------------------------------------------
    def _startTask(self, task):
        self.task = task
        self.state.start_run()
        self.timer.start()
        self.updateGUI()

    def pollTask(self):
        task = self.task
        if not task.poll():
            return
        self.task = None
        if task.error is not None:
            self.state.finish_run(error=str(task.error))
            if task.error.kind != "cancelled":
                slicer.util.errorDisplay(str(task.error), windowTitle="UNETR++")
        else:
            self.state.finish_run(message=f"Installed model at {task.installed_path}")
            if task.installed_path:
                self.state.model_name = task.installed_path.name
            self.refreshModels()
        self.updateGUI()
        self.appendLog()

    def onDownloadModel(self):
        model = self.state.model
        if model is None or self.task is not None:
            return
        self._startTask(self.models.download(model.name, on_event=self.state.apply_event))

    def onInstallFromFile(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), "Install UNETR++ model",
            "", "Model package or official checkpoint (*.zip model.json *.model *.pth *.pt);;All files (*)")
        if not path:
            return
        variant = None
        if path.endswith("model.json"):
            path = os.path.dirname(path)
        elif os.path.splitext(path)[1].lower() in (".model", ".pth", ".pt"):
            variant = qt.QInputDialog.getItem(
                slicer.util.mainWindow(), "Official UNETR++ checkpoint",
                "Which official network is this checkpoint?", list(OFFICIAL_VARIANTS), 0, False)
            if not variant:  # dialog cancelled
                return
        try:
            self._startTask(self.models.install_from_file(path, official_variant=variant, on_event=self.state.apply_event))
        except ModuleError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="UNETR++")

    def onRemoveModel(self):
        model = self.state.model
        if model is None or not model.installed:
            return
        if not slicer.util.confirmOkCancelDisplay(f"Remove model '{model.name}' ({model.path})?", windowTitle="UNETR++"):
            return
        try:
            self.models.remove(model.name)
        except ModuleError as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="UNETR++")
        self.state.model_name = ""
        self.refreshModels()

    def onInstallDependencies(self):
        missing = dependencies.missing_packages()
        plan = dependencies.plan_install(missing, dependencies.pytorchutils_available())
        if not missing:
            self.state.missing_dependencies = []
            self.updateGUI()
            return
        if not slicer.util.confirmOkCancelDisplay(
                "UNETR++ needs these Python packages, which will be installed now (this can take several "
                f"minutes and needs internet access):\n{plan.describe()}\n\nSlicer's own numpy, SimpleITK "
                "and VTK are not changed.", windowTitle="UNETR++"):
            return
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            dependencies.install(missing, confirmed=True)
        self.state.missing_dependencies = dependencies.missing_packages()
        self.updateGUI()


class UNETRPlusPlusLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """The module logic (see UNETRPlusPlusLib/logic.py for the implementation)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self)

    def getParameterNode(self):
        return parameter_node(slicer.mrmlScene)


class UNETRPlusPlusTest(ScriptedLoadableModuleTest):
    """In-Slicer smoke test (the full suite runs headless with pytest: Testing/slicer/)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_state_and_bad_input()

    def test_state_and_bad_input(self):
        from UNETRPlusPlusLib.errors import InputError
        from UNETRPlusPlusLib.modelstore import ModelInfo, ModelInput

        self.delayDisplay("UNETR++: checking input validation")
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
        logging.info("UNETR++ smoke test passed")
        self.delayDisplay("Test passed")
