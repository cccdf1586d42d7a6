"""One segmentation: MRML in, engine process, MRML out. Imports only slicer/vtk (no Qt), so it runs
headless on slicer-core.

1. check the inputs (InputError: nothing runs, nothing changes);
2. write each input volume to a private temporary folder (storage nodes, uncompressed NRRD);
3. start `python -m unetrpp.worker ... --progress json` (a BackgroundTask, tasks.py): its events
   reach the GUI through `poll()` (a GUI timer calls it; `wait()` loops it headless);
4. on success read the engine's `.seg.nrrd` into a private staging scene (segment names, colours,
   terminology and regions come from the one writer, unetrpp.segmentation; its grid is checked
   against the input volume), then copy it into the scene with a table of volumes from the report
   and optionally the probability volume. Any failure removes what was added;
5. cancel or failure (keyed on the engine's error category): the process is ended, the temporary
   folder removed, the scene unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from unetrpp import catalogue
from unetrpp import errors as engine
from unetrpp.errors import UnetrppError

from .errors import InputError, ModelError
from .i18n import _
from .modelstore import ModelInfo, model_from_manifest, read_package_manifest
from .process import WorkerProcess, engine_environment, worker_command
from .scene import (
    ensure_segmentation_converters,
    read_probabilities,
    read_segmentation,
    remove_nodes,
    save_segmentation,
    volume_info,
    volume_table,
    write_volume,
)
from .state import valid_device, volume_check
from .tasks import BackgroundTask, EventCallback

RESULT_FILE = "result.seg.nrrd"  # the engine writes segments with names, colours, terminology, regions


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


@dataclass
class SegmentationResult:
    segmentation_node: Any
    table_node: Any | None
    probability_node: Any | None
    report: dict[str, Any]
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)


class SegmentationRun(BackgroundTask):
    """A running segmentation. Call `poll()` regularly (GUI timer) or `wait()`; then read `result`
    or `error`. `cancel()` ends the process; the scene is never changed unless the run succeeds."""

    what = _("The segmentation")
    cancelled_message = _("Segmentation cancelled; the scene was not changed.")

    def __init__(self, logic: "SegmentationLogic", model: ModelInfo, inputs: dict[str, Any], reference: Any,
                 output_node: Any | None, workdir: Path, proc: WorkerProcess, on_event: EventCallback | None,
                 want_probabilities: bool) -> None:
        super().__init__(proc, on_event, workdir)
        self.logic, self.model, self.inputs, self.reference = logic, model, inputs, reference
        self.output_node, self.want_probabilities = output_node, want_probabilities
        # a model the engine refuses: the module's own advice names it
        self.advice = {engine.MODEL: _("Remove the model '{name}' and install it again.").format(name=model.name)}

    @property
    def outputs_dir(self) -> Path:
        return self.workdir / "out"

    def finish(self, done_event: dict[str, Any]) -> SegmentationResult:
        self.emit({"event": "stage", "stage": "import", "message": "loading the result into the scene"})
        return self.logic.import_result(self, done_event)


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
            problem = volume_check(volume_info(node), spec)
            if problem:
                kind, reason = problem
                raise InputError(f"Input '{spec.name}': {reason}.", kind="not-3d" if kind == "not-3d" else "wrong-inputs")
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
        workdir = Path(tempfile.mkdtemp(prefix="unetrpp-slicer-"))
        try:
            (workdir / "in").mkdir()
            (workdir / "out").mkdir()
            args = [*self.command, "--model", str(info.path)]
            for spec in info.inputs:
                path = workdir / "in" / f"{spec.name}.nrrd"
                write_volume(inputs[spec.name], path)
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
                               probabilities)

    def segment(self, model: ModelInfo | str | os.PathLike[str], inputs: dict[str, Any], *,
                timeout: float | None = None, **kwargs: Any) -> SegmentationResult:
        """Blocking convenience (scripts, tests): start and wait."""
        return self.start(model, inputs, **kwargs).wait(timeout=timeout)

    # Import --------------------------------------------------------------------------------------
    def import_result(self, run: SegmentationRun, done: dict[str, Any]) -> SegmentationResult:
        outputs = done.get("outputs") or {}
        report = done.get("report") or {}
        report_path = Path(outputs.get("report") or run.outputs_dir / "report.json")
        if not report and report_path.is_file():
            report = json.loads(report_path.read_text(encoding="utf-8"))
        seg_path = Path(outputs.get("segmentation") or run.outputs_dir / RESULT_FILE)
        staging = slicer.vtkMRMLScene()
        staged = read_segmentation(staging, seg_path, run.reference)
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
            table = volume_table(scene, seg_node.GetName() + " volumes", report, run.model.name)
            if table is not None:
                added.append(table)
            prob_node = None
            if run.want_probabilities and Path(prob_path).is_file():
                prob_node = read_probabilities(scene, Path(prob_path), seg_node.GetName() + " probabilities",
                                               run.reference)
                added.extend(n for n in (prob_node, prob_node.GetDisplayNode()) if n is not None)
        except BaseException:
            remove_nodes(scene, added)
            if backup is not None and run.output_node is not None:
                run.output_node.GetSegmentation().DeepCopy(backup)
            raise
        finally:
            staging.Clear(1)
        return SegmentationResult(seg_node, table, prob_node, report, time.perf_counter() - run.started,
                                  list(run.events))

    save_segmentation = staticmethod(save_segmentation)  # scripts call it on the logic
