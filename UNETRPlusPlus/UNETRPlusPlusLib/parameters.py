"""Module settings in a parameter node (vtkMRMLScriptedModuleNode), so a saved scene remembers
them: model name, device, fast mode, probabilities, the volume for each model input and the
output segmentation (node references)."""

from __future__ import annotations

from typing import Any

from .state import valid_device

MODULE_NAME = "UNETRPlusPlus"
INPUT_ROLE = "input:"
OUTPUT_ROLE = "outputSegmentation"
DEFAULTS = {"Model": "", "Device": "auto", "Fast": "false", "Probabilities": "false"}


def parameter_node(scene: Any) -> Any:
    """The module's singleton parameter node in `scene` (created with defaults if missing)."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(MODULE_NAME)
        node.SetName(MODULE_NAME)
        node.SetAttribute("ModuleName", MODULE_NAME)
        node = scene.AddNode(node)
    for key, value in DEFAULTS.items():
        if not node.GetParameter(key):
            node.SetParameter(key, value)
    return node


class Parameters:
    def __init__(self, node: Any) -> None:
        self.node = node

    def _get(self, key: str) -> str:
        return self.node.GetParameter(key) or DEFAULTS.get(key, "")

    @property
    def model(self) -> str:
        return self._get("Model")

    @model.setter
    def model(self, value: str) -> None:
        self.node.SetParameter("Model", value or "")

    @property
    def device(self) -> str:
        return self._get("Device")

    @device.setter
    def device(self, value: str) -> None:
        self.node.SetParameter("Device", value if valid_device(value) else "auto")  # auto, cpu, cuda, cuda:N

    @property
    def fast(self) -> bool:
        return self._get("Fast") == "true"

    @fast.setter
    def fast(self, value: bool) -> None:
        self.node.SetParameter("Fast", "true" if value else "false")

    @property
    def probabilities(self) -> bool:
        return self._get("Probabilities") == "true"

    @probabilities.setter
    def probabilities(self, value: bool) -> None:
        self.node.SetParameter("Probabilities", "true" if value else "false")

    def set_input_node(self, name: str, node: Any | None) -> None:
        self.node.SetNodeReferenceID(INPUT_ROLE + name, node.GetID() if node is not None else None)

    def input_ids(self) -> dict[str, str]:
        out = {}
        for i in range(self.node.GetNumberOfNodeReferenceRoles()):
            role = self.node.GetNthNodeReferenceRole(i)
            if role.startswith(INPUT_ROLE) and self.node.GetNodeReferenceID(role):
                out[role[len(INPUT_ROLE):]] = self.node.GetNodeReferenceID(role)
        return out

    @property
    def output_node(self) -> Any:
        return self.node.GetNodeReference(OUTPUT_ROLE)

    @output_node.setter
    def output_node(self, node: Any | None) -> None:
        self.node.SetNodeReferenceID(OUTPUT_ROLE, node.GetID() if node is not None else None)
