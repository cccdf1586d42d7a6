"""The module's logic: MRML in, engine process, MRML out. Imports only slicer/vtk (no Qt), so it
runs headless on slicer-core.

One segmentation:
1. check the inputs (InputError: nothing runs, nothing changes);
2. write each input volume to a private temporary folder (storage nodes, uncompressed NRRD);
3. start `python -m unetrpp segment ... --progress json` in a separate process (process.py);
   `SegmentationRun.poll()` relays its events (a GUI timer calls it; `wait()` loops it headless);
4. on success read the engine's `.seg.nrrd` into a private staging scene (segment names, colours,
   terminology and regions come from the one writer, unetrpp.segmentation; its grid is checked
   against the input volume), then copy it into the scene with a table of volumes from the report
   and optionally the probability volume. Any failure removes what was added;
5. cancel or failure: the process is ended, the temporary folder removed, the scene unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import slicer
import vtk

from unetrpp import catalogue
from unetrpp.errors import UnetrppError

from .errors import CancelledByUser, InputError, ModelError, ModuleError, WorkerError
from .modelstore import ModelInfo, model_from_manifest, read_package_manifest
from .process import WorkerProcess, cli_command, engine_environment, signal_status, worker_command
from .state import VolumeInfo, valid_device, volume_problem
from .terminologies import terminology_string  # noqa: F401 - the TerminologyEntry strings (unetrpp.terminology) for callers

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
RESULT_FILE = "result.seg.nrrd"  # the engine writes segments with names, colours, terminology, regions


# Helpers ----------------------------------------------------------------------------------------
def ensure_segmentation_converters() -> None:
    """Slicer's Segmentations module registers the representation converters at start-up; a bare
    slicer-core has none, and copying segmentations then fails. Register them once if missing."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    rules = factory.GetConverterRules()
    if rules:
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


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


def resolve_model(model: ModelInfo | str | os.PathLike[str]) -> ModelInfo:
    if isinstance(model, ModelInfo):
        if not model.installed or model.path is None:
            raise ModelError(
                f"model '{model.name}' is not installed; download it or use Install from file", kind="not-installed"
            )
        return model
    try:
        path = catalogue.resolve_model(model)  # a path, else an installed, else a bundled model
    except UnetrppError:
        raise ModelError(f"model '{model}' is neither a package path nor an installed model", kind="not-installed") from None
    bundled_dir = catalogue.bundled_models_dir()
    bundled = bundled_dir is not None and path.resolve().parent == bundled_dir.resolve()
    try:
        return model_from_manifest(read_package_manifest(path), path, bundled=bundled)
    except (OSError, ValueError, KeyError, TypeError, UnetrppError) as exc:
        raise ModelError(
            f"the model package {path} is unreadable ({exc}); remove it and install it again", kind="corrupt-model"
        ) from None


# Result ---------------------------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    segmentation_node: Any
    table_node: Any | None
    probability_node: Any | None
    report: dict[str, Any]
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)


def classify_failure(proc: WorkerProcess, model_name: str) -> ModuleError:
    """Turn a failed engine process into one specific, actionable message."""
    rc = proc.returncode
    sig = signal_status(rc)  # also through the supervisor and a launcher (128 + N)
    stderr = "\n".join(proc.stderr_tail)
    details = stderr[-2000:]
    err = proc.last_error or {}
    kind, message = str(err.get("kind", "")), str(err.get("message", ""))
    text = f"{message}\n{stderr}".lower()
    oom = (
        kind in ("OutOfMemoryError", "MemoryError")
        or "out of memory" in text
        or "memoryerror" in text
        or "cannot allocate memory" in text
        or sig == getattr(signal, "SIGKILL", 9)
    )
    if oom:
        return WorkerError(
            "The segmentation ran out of memory"
            + (" (the process was killed by the system)" if sig == getattr(signal, "SIGKILL", 9) else "")
            + ". Try Fast mode, the CPU device, a smaller region, or close other programs; then run it again.",
            kind="out-of-memory", details=details,
        )
    if kind == "IntegrityError":
        return ModelError(
            f"The model '{model_name}' failed its integrity check (SHA256 mismatch): its weights are corrupt or "
            f"were altered, so they were not used. Remove the model and install it again. ({message})",
            kind="integrity", details=details,
        )
    if kind in ("ManifestError", "PackageError"):
        return ModelError(
            f"The model package '{model_name}' is damaged or incomplete: {message} Remove it and install it again.",
            kind="corrupt-model", details=details,
        )
    if kind == "InputImageError":
        return InputError(f"The engine cannot use an input volume: {message}", kind="input", details=details)
    if kind:
        return WorkerError(f"The segmentation failed ({kind}): {message}", kind="engine", details=details)
    last = "\n".join(list(proc.stderr_tail)[-5:]) or "(no output)"
    if sig is not None:
        return WorkerError(
            f"The segmentation process crashed (stopped by signal {sig}). Last messages:\n{last}",
            kind="crash", details=details,
        )
    if rc == 0:
        return WorkerError("The segmentation process ended without a result. Last messages:\n" + last,
                           kind="crash", details=details)
    return WorkerError(
        f"The segmentation process crashed (exit code {rc}). Last messages:\n{last}", kind="crash", details=details
    )


# One run ---------------------------------------------------------------------------------------------
class SegmentationRun:
    """A running segmentation. Call `poll()` regularly (GUI timer) or `wait()`; then read `result`
    or `error`. `cancel()` ends the process; the scene is never changed unless the run succeeds."""

    def __init__(self, logic: "SegmentationLogic", model: ModelInfo, inputs: dict[str, Any], reference: Any,
                 output_node: Any | None, workdir: Path, proc: WorkerProcess, on_event: EventCallback | None,
                 want_probabilities: bool, started: float) -> None:
        self.logic, self.model, self.inputs, self.reference = logic, model, inputs, reference
        self.output_node, self.workdir, self.proc, self.on_event = output_node, workdir, proc, on_event
        self.want_probabilities = want_probabilities
        self.started = started
        self.events: list[dict[str, Any]] = []
        self.result: SegmentationResult | None = None
        self.error: ModuleError | None = None
        self.done = False

    @property
    def outputs_dir(self) -> Path:
        return self.workdir / "out"

    def _emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001 - a GUI callback must not break the run
                log.exception("progress callback failed")

    def poll(self) -> bool:
        """Relay new events; when the process has ended, import or record the error. Returns True
        once the run is over."""
        if self.done:
            return True
        for event in self.proc.poll_events():
            self._emit(event)
        if not self.proc.finished():
            return False
        for event in self.proc.poll_events():
            self._emit(event)
        try:
            if self.proc.cancelled:
                raise CancelledByUser("Segmentation cancelled; the scene was not changed.")
            if self.proc.returncode != 0 or self.proc.done_event is None:
                raise classify_failure(self.proc, self.model.name)
            self._emit({"event": "stage", "stage": "import", "message": "loading the result into the scene"})
            self.result = self.logic.import_result(self)
        except ModuleError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported to the user, scene already rolled back
            log.exception("importing the segmentation failed")
            self.error = WorkerError(f"Loading the result into the scene failed: {exc}", kind="import")
        finally:
            self.cleanup()
            self.done = True
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> SegmentationResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise WorkerError(f"the segmentation did not finish within {timeout:.0f} s", kind="timeout")
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def request_cancel(self) -> None:
        """Ask the engine's whole process tree to stop and return at once (the GUI's Cancel);
        `poll()` finishes the run once every process is gone."""
        if not self.done:
            self.proc.request_stop()

    def cancel(self) -> None:
        """Stop the run and wait until its processes are gone (a few seconds at most)."""
        if self.done:
            return
        self.proc.cancel()
        self.poll()

    def cleanup(self) -> None:
        """Remove the temporary folder: only called once the process tree has ended (poll)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


# The logic -----------------------------------------------------------------------------------------
class SegmentationLogic:
    """Headless-testable logic. `scene` defaults to slicer.mrmlScene; `command` is the worker
    command prefix (default `[python, -m, unetrpp.worker]`; e.g. another Python that has CUDA)."""

    def __init__(self, scene: Any | None = None, command: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self._scene = scene
        self.command = list(command) if command else worker_command()
        self.env = env
        ensure_segmentation_converters()

    @property
    def scene(self) -> Any:
        return self._scene if self._scene is not None else slicer.mrmlScene

    # Checks --------------------------------------------------------------------------------------
    def check_inputs(self, model: ModelInfo, inputs: dict[str, Any]) -> Any:
        """Raise InputError naming the problem; return the reference volume (first input)."""
        if not model.inputs:
            raise ModelError(f"model '{model.name}' declares no inputs; its package is damaged", kind="corrupt-model")
        names = [i.name for i in model.inputs]
        given = {k: v for k, v in inputs.items() if v is not None}
        if not given:
            raise InputError(
                "No input volume selected. Load a CT or MRI volume and select it as "
                + " / ".join(f"'{n}'" for n in names) + ".", kind="no-volume")
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InputError(
                f"Model '{model.name}' has no input(s) {', '.join(unknown)}; it takes {len(names)}: {', '.join(names)}.",
                kind="wrong-inputs")
        missing = [n for n in names if n not in given]
        if missing:
            raise InputError(
                f"Model '{model.name}' needs {len(names)} input volume(s) ({', '.join(names)}); "
                f"select a volume for {', '.join(missing)}.", kind="wrong-inputs")
        seen: dict[str, str] = {}
        for spec in model.inputs:
            node = given[spec.name]
            if not node.IsA("vtkMRMLVolumeNode"):
                raise InputError(f"Input '{spec.name}' must be a volume, got a {node.GetClassName()}.", kind="wrong-inputs")
            if node.GetScene() is not self.scene:
                raise InputError(f"Input '{spec.name}' ({node.GetName()}) is not in the scene.", kind="wrong-inputs")
            problem = volume_problem(volume_info(node), spec)
            if problem:
                kind = "not-3d" if ("2D" in problem or "values per voxel" in problem) else "wrong-inputs"
                raise InputError(f"Input '{spec.name}': {problem}.", kind=kind)
            if node.GetID() in seen:
                raise InputError(
                    f"'{node.GetName()}' is selected for both '{seen[node.GetID()]}' and '{spec.name}'; "
                    "each input needs its own volume.", kind="wrong-inputs")
            seen[node.GetID()] = spec.name
        transforms = {given[n].GetTransformNodeID() for n in names}
        if len(transforms) > 1:
            raise InputError("The input volumes are under different transforms; harden the transforms "
                             "(Data module) so that they share one space.", kind="wrong-inputs")
        return given[names[0]]

    # Run -----------------------------------------------------------------------------------------
    def start(
        self,
        model: ModelInfo | str | os.PathLike[str],
        inputs: dict[str, Any],
        output_node: Any | None = None,
        device: str = "auto",
        fast: bool = False,
        probabilities: bool = False,
        on_event: EventCallback | None = None,
    ) -> SegmentationRun:
        """Check, write the inputs, start the engine process. Raises InputError / ModelError before
        anything runs; the scene is not touched here."""
        info = resolve_model(model)
        reference = self.check_inputs(info, inputs)
        if output_node is not None and not output_node.IsA("vtkMRMLSegmentationNode"):
            raise InputError("The output must be a segmentation node.", kind="wrong-output")
        if not valid_device(device):
            raise InputError(f"Unknown device '{device}'; choose auto, GPU (cuda or cuda:N) or CPU.", kind="device")
        started = time.perf_counter()
        workdir = Path(tempfile.mkdtemp(prefix="unetrpp-slicer-"))
        try:
            (workdir / "in").mkdir()
            (workdir / "out").mkdir()
            args = [*self.command, "--model", str(info.path)]
            for spec in info.inputs:
                path = workdir / "in" / f"{spec.name}.nrrd"
                self._write_volume(inputs[spec.name], path)
                args += ["--input", f"{spec.name}={path}"]
            args += ["-o", str(workdir / "out" / RESULT_FILE), "--report", str(workdir / "out" / "report.json"),
                     "--progress", "json", "--device", device, "--overwrite"]
            if fast:
                args.append("--fast")
            if probabilities:
                args += ["--probabilities", str(workdir / "out" / "probabilities.nrrd")]
            proc = WorkerProcess(args, env=self.env or engine_environment())
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return SegmentationRun(self, info, dict(inputs), reference, output_node, workdir, proc, on_event,
                               probabilities, started)

    def segment(self, model: ModelInfo | str | os.PathLike[str], inputs: dict[str, Any], *,
                timeout: float | None = None, **kwargs: Any) -> SegmentationResult:
        """Blocking convenience (scripts, tests): start and wait."""
        return self.start(model, inputs, **kwargs).wait(timeout=timeout)

    @staticmethod
    def _write_volume(node: Any, path: Path) -> None:
        writer = slicer.vtkMRMLVolumeArchetypeStorageNode()
        writer.SetFileName(str(path))
        writer.SetUseCompression(0)
        if not writer.WriteData(node):
            raise InputError(f"Could not write volume '{node.GetName()}' to a temporary file ({path}); "
                             "check free disk space.", kind="write")

    # Import --------------------------------------------------------------------------------------
    def import_result(self, run: SegmentationRun) -> SegmentationResult:
        done = run.proc.done_event or {}
        outputs = done.get("outputs") or {}
        report = done.get("report") or {}
        report_path = Path(outputs.get("report") or run.outputs_dir / "report.json")
        if not report and report_path.is_file():
            report = json.loads(report_path.read_text(encoding="utf-8"))
        seg_path = Path(outputs.get("segmentation") or run.outputs_dir / RESULT_FILE)
        staging = slicer.vtkMRMLScene()
        staged = self._read_segmentation(staging, seg_path, run.reference)
        prob_path = outputs.get("probabilities") or (run.outputs_dir / "probabilities.nrrd")
        added: list[Any] = []
        scene = self.scene
        backup = None
        try:
            name = f"{run.reference.GetName()} {run.model.name}"
            if run.output_node is not None:
                seg_node = run.output_node
                backup = slicer.vtkSegmentation()
                backup.DeepCopy(seg_node.GetSegmentation())
                seg_node.GetSegmentation().DeepCopy(staged.GetSegmentation())
            else:
                seg_node = slicer.vtkMRMLSegmentationNode()
                seg_node.Copy(staged)
                seg_node.SetName(scene.GenerateUniqueName(name))
                scene.AddNode(seg_node)
                added.append(seg_node)
            seg_node.SetReferenceImageGeometryParameterFromVolumeNode(run.reference)
            seg_node.SetNodeReferenceID(seg_node.GetReferenceImageGeometryReferenceRole(), run.reference.GetID())
            seg_node.SetAndObserveTransformNodeID(run.reference.GetTransformNodeID())
            seg_node.SetAttribute("UNETRPlusPlus.model", f"{run.model.name} {run.model.version}".strip())
            if seg_node.GetDisplayNode() is None:
                seg_node.CreateDefaultDisplayNodes()
                if seg_node.GetDisplayNode() is not None:
                    added.append(seg_node.GetDisplayNode())
            table = self._volume_table(scene, seg_node.GetName() + " volumes", report, run.model)
            if table is not None:
                added.append(table)
            prob_node = None
            if run.want_probabilities and Path(prob_path).is_file():
                prob_node = self._read_probabilities(scene, Path(prob_path), seg_node.GetName() + " probabilities",
                                                     run.reference)
                added.extend(n for n in (prob_node, prob_node.GetDisplayNode()) if n is not None)
        except BaseException:
            for node in reversed(added):
                if node.GetScene() is scene:
                    scene.RemoveNode(node)
            if backup is not None and run.output_node is not None:
                run.output_node.GetSegmentation().DeepCopy(backup)
            raise
        finally:
            staging.Clear(1)
        return SegmentationResult(seg_node, table, prob_node, report, time.perf_counter() - run.started,
                                  list(run.events))

    @staticmethod
    def _read_segmentation(staging: Any, path: Path, reference: Any) -> Any:
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

    @staticmethod
    def _volume_table(scene: Any, name: str, report: dict[str, Any], model: ModelInfo) -> Any | None:
        rows = [(str(s.get("name", s.get("value"))), str(s.get("value", "")), int(s.get("voxels", 0)),
                 float(s.get("volume_ml", 0.0))) for s in report.get("segments", [])]
        rows += [(str(r.get("name")), "+".join(map(str, r.get("labels", []))), int(r.get("voxels", 0)),
                  float(r.get("volume_ml", 0.0))) for r in report.get("regions", [])]
        if not rows:
            return None
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
        columns = [vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray()]
        for column, title in zip(columns, ("Segment", "Label", "Voxels", "Volume [mL]")):
            column.SetName(title)
            table.AddColumn(column)
        t = table.GetTable()
        t.SetNumberOfRows(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                t.SetValue(r, c, vtk.vtkVariant(value))
        table.SetAttribute("UNETRPlusPlus.model", model.name)
        table.Modified()
        return table

    @staticmethod
    def _read_probabilities(scene: Any, path: Path, name: str, reference: Any) -> Any:
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

    # Saving ----------------------------------------------------------------------------------------
    @staticmethod
    def save_segmentation(seg_node: Any, path: str | os.PathLike[str], reference: Any | None = None) -> Path:
        """Write a segmentation node to .seg.nrrd (full reference grid, not cropped)."""
        writer = slicer.vtkMRMLSegmentationStorageNode()
        writer.SetFileName(str(path))
        writer.SetCropToMinimumExtent(False)
        if not writer.WriteData(seg_node):
            raise ModuleError(f"could not write {path}")
        return Path(path)


# Model management ---------------------------------------------------------------------------------
class ModelTask:
    """`unetrpp models install ...` in a separate process (download with progress, or install
    from file incl. official checkpoints). poll()/wait()/cancel() as SegmentationRun."""

    def __init__(self, proc: WorkerProcess, what: str, on_event: EventCallback | None = None) -> None:
        self.proc, self.what, self.on_event = proc, what, on_event
        self.events: list[dict[str, Any]] = []
        self.installed_path: Path | None = None
        self.error: ModuleError | None = None
        self.done = False

    def poll(self) -> bool:
        if self.done:
            return True
        finished = self.proc.finished()
        for event in self.proc.poll_events():
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)
        if not finished:
            return False
        self.done = True
        if self.proc.cancelled:
            self.error = CancelledByUser(f"{self.what} cancelled; nothing was installed.")
        elif self.proc.returncode == 0 and self.proc.done_event is not None:
            self.installed_path = Path((self.proc.done_event.get("outputs") or {}).get("model", ""))
        else:
            err = self.proc.last_error or {}
            kind, message = err.get("kind", ""), err.get("message", "")
            if kind == "IntegrityError":
                self.error = ModelError(f"{self.what} failed: the file failed its SHA256 check and was removed. {message}",
                                        kind="integrity")
            elif kind in ("PackageError", "ManifestError", "CheckpointError", "CatalogueError", "OutputExistsError"):
                self.error = ModelError(f"{self.what} failed: {message}", kind="corrupt-model")
            else:
                failure = classify_failure(self.proc, self.what)
                self.error = ModelError(f"{self.what} failed: {failure}", kind=failure.kind, details=failure.details)
        return True

    def wait(self, timeout: float | None = None) -> Path:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        assert self.installed_path is not None
        return self.installed_path

    def cancel(self) -> None:
        self.proc.cancel()
        self.poll()


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
        return self._start([name] + (["--overwrite"] if overwrite else []), f"Downloading model '{name}'", on_event)

    def install_from_file(self, path: str | os.PathLike[str], official_variant: str | None = None,
                          overwrite: bool = False, on_event: EventCallback | None = None) -> ModelTask:
        """A package folder/.zip, or with `official_variant` an official UNETR++ checkpoint."""
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path} does not exist", kind="not-found")
        if official_variant is None and path.is_file() and path.suffix.lower() in (".model", ".pth", ".pt"):
            raise ModelError(
                f"{path.name} looks like an official UNETR++ checkpoint: choose its variant "
                "(synapse, acdc, brats or lung) to import it", kind="needs-variant")
        args = [str(path)] + (["--official", official_variant] if official_variant else [])
        return self._start(args + (["--overwrite"] if overwrite else []), f"Installing {path.name}", on_event)

    @staticmethod
    def remove(name: str) -> Path:
        """Delete an installed model (the engine's `remove_model`: atomic rename, then delete)."""
        try:
            return catalogue.remove_model(name)
        except UnetrppError as exc:
            raise ModelError(str(exc), kind="not-installed") from None
