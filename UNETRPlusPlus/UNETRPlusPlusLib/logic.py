"""The module's logic, by name: what UNETRPlusPlus.py, the self-test and scripts use. Each job
lives in its own file:

- scene.py       MRML helpers: the scene's volumes, writing inputs, reading and checking results
- tasks.py       BackgroundTask: an engine command in a separate process, its events, Cancel,
                 and its failure keyed on the engine's error category
- segment.py     SegmentationLogic / SegmentationRun: one segmentation, MRML in and out
- modeltasks.py  ModelManager / ModelTask: download, install from file, remove models

Imports only slicer/vtk (no Qt, no torch), so all of it runs headless on slicer-core.
"""

from __future__ import annotations

from .modeltasks import ModelManager, ModelTask
from .scene import (
    ensure_segmentation_converters,
    save_segmentation,
    scene_snapshot,
    scene_volumes,
    volume_info,
)
from .segment import RESULT_FILE, SegmentationLogic, SegmentationResult, SegmentationRun, resolve_model
from .tasks import BackgroundTask, process_failure

__all__ = [
    "BackgroundTask", "ModelManager", "ModelTask", "RESULT_FILE", "SegmentationLogic", "SegmentationResult",
    "SegmentationRun", "ensure_segmentation_converters", "process_failure", "resolve_model", "save_segmentation",
    "scene_snapshot", "scene_volumes", "volume_info",
]
