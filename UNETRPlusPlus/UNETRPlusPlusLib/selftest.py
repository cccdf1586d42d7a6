"""The module's self-test as plain functions (no Qt): segment the example CT with the bundled demo
model and compare each segment with the reference labels (Dice). UNETRPlusPlusTest (Reload & Test,
ctest py_UNETRPlusPlus) calls it in Slicer; Testing/slicer/test_selftest.py on slicer-core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from .sampledata import LABELS_FILE, examples_dir

DEMO_MODEL = "demo-abdomen-ct"
# The demo model was trained on this very CT: these organs must be found (docs/training.md).
MIN_DICE = {"liver": 0.75, "spleen": 0.75, "aorta": 0.75}


def read_labelmap(path: Path) -> np.ndarray:
    """A labelmap file as an array (k, j, i), read through Slicer's storage node in a private scene."""
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "reference")
    reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    reader.SetFileName(str(path))
    if not reader.ReadData(node):
        raise OSError(f"cannot read {path}")
    array = slicer.util.arrayFromVolume(node).copy()
    scratch.Clear(1)
    return array


def segment_masks(seg_node: Any, reference: Any) -> dict[str, np.ndarray]:
    """Each segment exported onto the reference volume's grid (private scene)."""
    scratch = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentation = seg_node.GetSegmentation()
    masks = {}
    for i in range(segmentation.GetNumberOfSegments()):
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentation.GetNthSegmentID(i))
        out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        if not logic.ExportSegmentsToLabelmapNode(seg_node, ids, out, reference):
            raise RuntimeError(f"cannot export segment {segmentation.GetNthSegment(i).GetName()}")
        masks[segmentation.GetNthSegment(i).GetName()] = slicer.util.arrayFromVolume(out) > 0
    scratch.Clear(1)
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run(logic: Any, ct_node: Any, timeout: float = 600) -> tuple[Any, dict[str, float]]:
    """Segment `ct_node` with the demo model; returns (result, Dice of every labelled segment)."""
    from .segment import resolve_model

    model = resolve_model(DEMO_MODEL)
    result = logic.segment(DEMO_MODEL, {model.inputs[0].name: ct_node}, fast=True, timeout=timeout)
    folder = examples_dir()
    if folder is None:
        raise FileNotFoundError("the example CT's reference labels are not installed")
    reference = read_labelmap(folder / LABELS_FILE)
    masks = segment_masks(result.segmentation_node, ct_node)
    scores = {label.name: dice(masks[label.name], reference == label.value)
              for label in model.labels if label.name in masks}
    return result, scores
