"""MRML scene helpers of the module: what volumes the scene holds, writing a volume for the engine,
reading the engine's results (segmentation checked against the input grid, probability map) and
the table of volumes. Imports only slicer/vtk (no Qt), so it runs headless on slicer-core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import slicer
import vtk

from .errors import InputError, ModuleError, WorkerError
from .results import result_rows
from .state import VolumeInfo


def ensure_segmentation_converters() -> None:
    """Slicer's Segmentations module registers the representation converters at start-up; a bare
    slicer-core has none, and copying segmentations then fails. Register them once if missing."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


# What the scene holds ---------------------------------------------------------------------------
def _dicom_value(node: Any, tag: str) -> str:
    """A DICOM tag of the series a volume was loaded from (desktop Slicer's DICOM database)."""
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    db = getattr(slicer, "dicomDatabase", None)
    if not uids or db is None:
        return ""
    try:
        return str(db.fileValue(db.fileForInstance(uids[0]), tag) or "")
    except Exception:  # noqa: BLE001 - the database is optional; a failed lookup just means "unknown"
        return ""


def volume_info(node: Any) -> VolumeInfo:
    image = node.GetImageData() if node is not None else None
    dims = tuple(image.GetDimensions()) if image is not None else (0, 0, 0)
    comps = image.GetNumberOfScalarComponents() if image is not None else 1
    series = node.GetAttribute("DICOM.SeriesDescription") or _dicom_value(node, "0008,103E")
    modality = node.GetAttribute("DICOM.Modality") or _dicom_value(node, "0008,0060")
    return VolumeInfo(
        id=node.GetID() or "", name=node.GetName() or "", series_description=series or "",
        dimensions=dims, components=comps, is_labelmap=node.IsA("vtkMRMLLabelMapVolumeNode"),
        modality=modality or "",
    )


def scene_volumes(scene: Any) -> list[VolumeInfo]:
    nodes = scene.GetNodesByClass("vtkMRMLVolumeNode")
    out = []
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetHideFromEditors():
            continue
        out.append(volume_info(node))
    return out


def scene_snapshot(scene: Any) -> list[tuple[str, str, str]]:
    """(id, class, name) of every node: tests compare it before/after to prove nothing changed."""
    return [
        (scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName() or "")
        for i in range(scene.GetNumberOfNodes())
    ]


def ijk_to_ras(node: Any) -> list[list[float]]:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return [[m.GetElement(r, c) for c in range(4)] for r in range(4)]


# Files -------------------------------------------------------------------------------------------
def write_volume(node: Any, path: Path) -> None:
    """A volume node to a file (uncompressed when the format allows it: quicker)."""
    writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
    writer.SetFileName(str(path))
    writer.SetUseCompression(0)
    if not writer.WriteData(node):
        raise InputError(f"Could not write volume '{node.GetName()}' to a file ({path}); "
                         "check free disk space.", kind="write")


def segment_labelmap(seg_node: Any, reference: Any) -> Any:
    """All segments of a segmentation node as one labelmap on `reference`'s grid, in a private
    scene (the caller's scene gets nothing). Label value = the segment's position + 1."""
    scratch = slicer.vtkMRMLScene()
    out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    seg_node.GetSegmentation().GetSegmentIDs(ids)
    if not slicer.vtkSlicerSegmentationsModuleLogic().ExportSegmentsToLabelmapNode(seg_node, ids, out, reference):
        raise ModuleError(f"could not export the segments of {seg_node.GetName()} onto {reference.GetName()}")
    return out


def read_segmentation(staging: Any, path: Path, reference: Any) -> Any:
    """The engine's .seg.nrrd in a private scene, after checking that every segment lies on the
    input volume's grid (same voxel-to-world matrix, inside its extent)."""
    seg = staging.AddNewNodeByClass("vtkMRMLSegmentationNode", "staged")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    if not path.is_file() or not reader.ReadData(seg):
        raise WorkerError(f"The engine reported success but its result {path.name} is unreadable.", kind="import")
    expected = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(expected)
    dims = reference.GetImageData().GetDimensions()
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        labelmap = segmentation.GetNthSegment(i).GetRepresentation("Binary labelmap")
        if labelmap is None:
            raise WorkerError(f"The result {path.name} holds a segment without voxels.", kind="import")
        got = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(got)
        extent = labelmap.GetExtent()
        off_grid = any(abs(got.GetElement(r, c) - expected.GetElement(r, c)) > 1e-3
                       for r in range(3) for c in range(4))
        outside = extent[0] <= extent[1] and any(
            extent[2 * a] < 0 or extent[2 * a + 1] >= dims[a] for a in range(3))
        if off_grid or outside:
            raise WorkerError(f"The result grid of {path.name} does not match the input volume "
                              f"{reference.GetName()} {tuple(dims)}.", kind="import")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    return seg


def read_probabilities(scene: Any, path: Path, name: str, reference: Any) -> Any:
    probe = slicer.vtkMRMLVolumeArchetypeStorageNode()
    probe.SetFileName(str(path))
    node = slicer.vtkMRMLScalarVolumeNode()
    if not probe.ReadData(node):
        raise WorkerError(f"The probability map {path.name} is unreadable.", kind="import")
    if node.GetImageData().GetNumberOfScalarComponents() > 1:
        node = slicer.vtkMRMLVectorVolumeNode()
        probe.ReadData(node)
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())
    node.CreateDefaultDisplayNodes()
    return node


def save_segmentation(seg_node: Any, path: str | os.PathLike[str], reference: Any | None = None) -> Path:
    """Write a segmentation node to .seg.nrrd (full reference grid, not cropped)."""
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    writer.SetCropToMinimumExtent(False)
    if not writer.WriteData(seg_node):
        raise ModuleError(f"could not write {path}")
    return Path(path)


def remove_nodes(scene: Any, nodes: list[Any]) -> None:
    """Roll back: remove `nodes` (newest first) that are still in `scene`."""
    for node in reversed(nodes):
        if node is not None and node.GetScene() is scene:
            scene.RemoveNode(node)


# The table of volumes ----------------------------------------------------------------------------
def volume_table(scene: Any, name: str, report: dict[str, Any], model_name: str) -> Any | None:
    """A table node with one row per segment and region of the engine's report (results.py): volume,
    and where the report has them the quality status, whether the volume is a lower bound (cut by
    the field of view) and the reasons for doubt."""
    rows = result_rows(report)
    if not rows:
        return None
    with_quality = any(r.status for r in rows)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    columns = [vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray()]
    titles = ["Segment", "Label", "Voxels", "Volume [mL]"]
    if with_quality:
        columns += [vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkStringArray()]
        titles += ["Quality", "Volume is", "Reasons"]
    for column, title in zip(columns, titles):
        column.SetName(title)
        table.AddColumn(column)
    t = table.GetTable()
    t.SetNumberOfRows(len(rows))
    for r, row in enumerate(rows):
        values: list[Any] = [row.name, row.label, row.voxels, row.volume_ml]
        if with_quality:
            values += [row.status_text, "lower bound (cut by the field of view)" if row.partial else "",
                       "; ".join(row.reasons)]
        for c, value in enumerate(values):
            t.SetValue(r, c, vtk.vtkVariant(value))
    table.SetAttribute("UNETRPlusPlus.model", model_name)
    status = (report.get("quality") or {}).get("status") if isinstance(report.get("quality"), dict) else None
    if status:
        table.SetAttribute("UNETRPlusPlus.quality", str(status))
    table.Modified()
    return table
