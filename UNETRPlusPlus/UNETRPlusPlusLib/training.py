"""Improve a model from corrected cases, from the module (issue 20): "Add to training cases" and
"Fine-tune". Imports only slicer/vtk and torch-free code (no Qt, no torch).

Add to training cases: the current input volume(s) and the (corrected) segmentation become one case
of a named case set in the nnU-Net raw layout, `UNETRPP_HOME/cases/<set>/` (beside the installed
models, `UNETRPP_HOME/models/`), through the training package's one writer
(`unetrpp_train.caseset.add_case`: grids checked, labels matched by name, provenance kept):
- segment names become label values: a segment named like one of the model's labels takes the
  model's value (case, spaces, `_` and `-` ignored); a new name gets the next free value; segments
  named like one of the model's *regions* (derived from the labels, e.g. BraTS "whole tumour") are
  not labels and are left out; where segments overlap, the later one in the list wins;
- the label map is exported on the first input volume's grid (the reference of the segmentation);
- the record keeps the model (name, version, weights SHA256), the volume and segmentation names and
  what was left out.

Fine-tune: `python -m unetrpp_train finetune --from MODEL --data SET --name NEW --progress json` in
the background process machinery (a BackgroundTask: progress, ETA, Cancel, log); its `done` event
names the new model, its installed package and the Dice before and after per structure, which
`FineTuneResult` turns into rows (before, after, change). The command installs the new model beside
its parent, never over it; Cancel stops it after the current step (a checkpoint is kept).
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import vtk

from unetrpp import catalogue
from unetrpp import errors as engine
from unetrpp.errors import UnetrppError

from .errors import InputError, ModelError, ModuleError
from .i18n import _
from .modelstore import ModelInfo
from .process import WorkerProcess, engine_environment, python_executable, supervised
from .scene import write_volume
from .tasks import BackgroundTask, EventCallback

CASES_DIR = "cases"
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_ITERATIONS = 500
STOP_GRACE_S = 60.0  # a cancelled fine-tune finishes its training step and writes a checkpoint


def _caseset() -> Any:
    """The training package's case-set writer (torch-free), with a clear message when the training
    part of UNETR++ is not installed."""
    try:
        from unetrpp_train import caseset  # noqa: PLC0415 - optional part (Training/)
    except ImportError:
        raise ModuleError(_("The training part of UNETR++ (unetrpp_train) is not installed, so cases cannot be "
                            "stored or models fine-tuned here."), kind="no-training",
                          category=engine.ENVIRONMENT) from None
    return caseset


def norm_name(name: str) -> str:
    """How names are matched (the case-set writer's rule): case, spaces, `_` and `-` ignored."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().casefold())


def safe_name(text: str, fallback: str = "case") -> str:
    """A case or set name from free text: letters, digits, '.', '_', '-'; starting with a letter or digit."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text).strip()).strip("._-")
    return (name or fallback)[:64]


# Case sets -------------------------------------------------------------------------------------
def cases_root() -> Path:
    return catalogue.home() / CASES_DIR


def set_folder(set_name: str) -> Path:
    if not SET_NAME.match(set_name or ""):
        raise InputError(_("Case set name '{name}': use letters, digits, '.', '_' or '-' (at most 64).").format(
            name=set_name), kind="set-name")
    return cases_root() / set_name


@dataclass(frozen=True)
class CaseSet:
    name: str
    path: Path
    cases: tuple[str, ...]
    labels: dict[str, int]
    channels: tuple[str, ...]


def case_sets() -> list[CaseSet]:
    """The case sets under UNETRPP_HOME/cases (an unreadable one is skipped)."""
    root = cases_root()
    if not root.is_dir():
        return []
    caseset = _caseset()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and SET_NAME.match(p.name)):
        try:
            data = caseset.read_set(folder)
        except UnetrppError:
            continue
        if data is None:
            continue
        channels = tuple(str(data["channel_names"][k]) for k in sorted(data["channel_names"], key=int))
        labels = {str(k): int(v) for k, v in data["labels"].items() if not isinstance(v, list)}
        out.append(CaseSet(folder.name, folder, tuple(caseset.set_cases(folder)), labels, channels))
    return out


def segment_label_values(segment_names: list[str], model: ModelInfo) -> tuple[dict[str, int], list[str]]:
    """({segment name: label value} in segment order, names left out). See the module docstring."""
    model_values = {norm_name(label.name): int(label.value) for label in model.labels}
    regions = {norm_name(region.name) for region in model.regions}
    values: dict[str, int] = {}
    skipped: list[str] = []
    used = set(model_values.values())
    for name in segment_names:
        key = norm_name(name)
        if key in regions and key not in model_values:
            skipped.append(name)
            continue
        if any(norm_name(n) == key for n in values):
            skipped.append(name)  # two segments of one name: the first is the label
            continue
        if key in model_values:
            values[name] = model_values[key]
        else:
            value = max(used | {0}) + 1
            used.add(value)
            values[name] = value
    return values, skipped


def export_label_file(seg_node: Any, reference: Any, segment_values: dict[str, int], path: Path) -> None:
    """The segments named in `segment_values` as one label map on `reference`'s grid, written to
    `path` (in a private scene: the user's scene gets nothing)."""
    segmentation = seg_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    order: list[int] = []
    for i in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetNthSegment(i).GetName()
        if name in segment_values:
            ids.InsertNextValue(segmentation.GetNthSegmentID(i))
            order.append(segment_values[name])
    # a copy in a private scene: exporting adds colour tables to the segmentation's scene
    scratch = slicer.vtkMRMLScene()
    copy = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    copy.GetSegmentation().DeepCopy(segmentation)
    labelmap = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if ids.GetNumberOfValues() == 0 or not slicer.vtkSlicerSegmentationsModuleLogic().ExportSegmentsToLabelmapNode(
                copy, ids, labelmap, reference):
            raise InputError(_("The segmentation '{name}' has no segments to store.").format(name=seg_node.GetName()),
                             kind="empty-segmentation")
        import numpy as np  # noqa: PLC0415 - Slicer's numpy

        array = slicer.util.arrayFromVolume(labelmap)
        lut = np.zeros(len(order) + 1, dtype=np.uint16)
        lut[1:] = order  # the export numbers the segments 1..n in `ids` order
        array[:] = lut[np.clip(array, 0, len(order))]
        slicer.util.arrayFromVolumeModified(labelmap)
        write_volume(labelmap, path)
    finally:
        scratch.Clear(1)


def _under_one_transform(nodes: list[Any]) -> bool:
    return len({n.GetTransformNodeID() for n in nodes}) <= 1


def add_training_case(model: ModelInfo, inputs: dict[str, Any], seg_node: Any, set_name: str,
                      case_name: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Store the input volumes and the segmentation as one case of the case set `set_name`;
    returns the writer's record (provenance and the paths written)."""
    caseset = _caseset()
    folder = set_folder(set_name)
    if seg_node is None or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(_("Select the (corrected) segmentation to store."), kind="no-segmentation")
    missing = [spec.name for spec in model.inputs if inputs.get(spec.name) is None]
    if not model.inputs or missing:
        raise InputError(_("Select a volume for input(s) {names} of model '{model}'.").format(
            names=", ".join(missing) or "?", model=model.name), kind="wrong-inputs")
    volumes = [inputs[spec.name] for spec in model.inputs]
    if not _under_one_transform([*volumes, seg_node]):
        raise InputError(_("The volumes and the segmentation are under different transforms; harden the "
                           "transforms (Data module) first."), kind="wrong-inputs")
    segmentation = seg_node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    values, skipped = segment_label_values(names, model)
    if not values:
        raise InputError(_("The segmentation '{name}' has no segments to store.").format(name=seg_node.GetName()),
                         kind="empty-segmentation")
    reference = volumes[0]
    case = safe_name(case_name or f"{reference.GetName()}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    work = Path(tempfile.mkdtemp(prefix="unetrpp-case-"))
    try:
        images = {}
        for spec, node in zip(model.inputs, volumes):
            images[spec.name] = work / f"{spec.name}.nrrd"
            write_volume(node, images[spec.name])
        label_path = work / "label.nrrd"
        export_label_file(seg_node, reference, values, label_path)
        weights = model.data.get("weights")
        source = {
            "corrected_in": "3D Slicer (UNETR++ module)",
            "slicer_version": str(getattr(getattr(slicer, "app", None), "applicationVersion", "") or ""),
            "model": model.name, "model_version": model.version,
            "model_weights_sha256": str(weights.get("sha256", "")) if isinstance(weights, dict) else "",
            "segmentation": seg_node.GetName(),
            "volumes": {spec.name: node.GetName() for spec, node in zip(model.inputs, volumes)},
            "segments_left_out": skipped,
        }
        try:
            return caseset.add_case(folder, case, images, label_path, values, name=set_name, source=source,
                                    overwrite=overwrite)
        except UnetrppError as exc:
            category = engine.classify(exc).category
            cls = InputError if category == engine.INPUT else ModuleError
            raise cls(_("The case was not stored: {message}").format(message=exc), kind=category,
                      category=category) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Fine-tune --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StructureScore:
    name: str
    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        return None if self.before is None or self.after is None else self.after - self.before


def _scores(metrics: Any) -> dict[str, float]:
    """{structure: Dice} from {name: x} (or {name: {"dice": x}})."""
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            value = value.get("dice")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out


@dataclass
class FineTuneResult:
    """What `unetrpp-train finetune --progress json` reports in its done event: {"model": NEW,
    "package": installed folder, "parent", "metrics": {"before": {structure: Dice}, "after": {...}},
    "evaluation": {"held_out", "cases", "note"}, "iterations", ...}."""

    model_name: str
    package: Path | None
    parent: str = ""
    scores: list[StructureScore] = field(default_factory=list)
    note: str = ""
    done_event: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_done(cls, done: dict[str, Any], name: str) -> "FineTuneResult":
        metrics = done.get("metrics") if isinstance(done.get("metrics"), dict) else {}
        before, after = _scores(metrics.get("before") or {}), _scores(metrics.get("after") or {})
        names = list(dict.fromkeys([*before, *after]))
        evaluation = done.get("evaluation") if isinstance(done.get("evaluation"), dict) else {}
        package = done.get("package")
        return cls(str(done.get("model") or name), Path(package) if package else None, str(done.get("parent") or ""),
                   [StructureScore(n, before.get(n), after.get(n)) for n in names], str(evaluation.get("note") or ""),
                   dict(done))

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(structure, Dice before, Dice after, change) as text, for the results table."""
        def fmt(x: float | None, sign: bool = False) -> str:
            return "" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")

        return [(s.name, fmt(s.before), fmt(s.after), fmt(s.change, sign=True)) for s in self.scores]


class FineTuneTask(BackgroundTask):
    """`unetrpp-train finetune` in a separate process; `result` is a FineTuneResult."""

    cancelled_message = _("Fine-tuning cancelled; no model was installed and the parent model is unchanged.")
    advice = {
        engine.INPUT: _("Check the case set (its cases, labels and channels) and the new model's name."),
        engine.OUTPUT: _("Choose another name for the new model; the parent model is unchanged."),
        engine.RESOURCE: _("Try fewer iterations, the CPU device, or close other programs."),
        engine.MODEL: _("The parent model cannot be fine-tuned; it is unchanged."),
    }

    def __init__(self, proc: WorkerProcess, name: str, on_event: EventCallback | None = None) -> None:
        super().__init__(proc, on_event)
        self.name = name
        self.what = _("Fine-tuning '{name}'").format(name=name)

    def finish(self, done_event: dict[str, Any]) -> FineTuneResult:
        return FineTuneResult.from_done(done_event, self.name)


def train_command() -> list[str]:
    """`python -m unetrpp_train` under the supervisor (exit status of an out-of-memory kill kept)."""
    return supervised(python_executable(), "-m", "unetrpp_train")


def remote_finetune_command(url: str) -> list[str]:
    """The same fine-tune as a job of a `unetrpp serve --allow-training` server (remote_finetune.py)."""
    return [*supervised(python_executable(), "-m", "UNETRPlusPlusLib.remote_finetune"), "--server", url]


class FineTuner:
    """Starts fine-tunes of an installed model on a case set (the new model is installed here by the
    command; the parent stays). `server` (remote.ServerSettings with Process on: server) sends it to
    the server as a fine-tune job of the model of the same name there."""

    def __init__(self, command: list[str] | None = None, env: dict[str, str] | None = None,
                 server: Any = None) -> None:
        self.remote = server is not None and getattr(server, "remote", False)
        if self.remote:
            from .remote import worker_environment  # noqa: PLC0415

            self.command = list(command) if command else remote_finetune_command(server.url)
            self.env = env or worker_environment(server)
        else:
            self.command = list(command) if command else train_command()
            self.env = env

    def start(self, model: ModelInfo, case_set: str | Path, new_name: str, iterations: int = DEFAULT_ITERATIONS,
              device: str = "auto", on_event: EventCallback | None = None,
              extra_args: list[str] | None = None) -> FineTuneTask:
        if not model.installed or model.path is None:
            raise ModelError(_("Model '{name}' is not installed.").format(name=model.name), kind="not-installed")
        folder = Path(case_set) if isinstance(case_set, Path) else set_folder(case_set)
        if _caseset().read_set(folder) is None or not _caseset().set_cases(folder):
            raise InputError(_("The case set '{name}' holds no cases yet: add a corrected case first.").format(
                name=folder.name), kind="empty-set")
        if not MODEL_NAME.match(new_name or ""):
            raise InputError(_("New model name '{name}': use lower-case letters, digits, '.', '_' or '-'.").format(
                name=new_name), kind="model-name")
        if new_name == model.name:
            raise InputError(_("The new model needs a name of its own; the parent '{name}' stays as it is.").format(
                name=model.name), kind="model-name")
        if int(iterations) < 1:
            raise InputError(_("Iterations must be at least 1."), kind="iterations")
        if self.remote:  # the server's model of that name; its device
            args = [*self.command, "--from", model.name, "--data", str(folder), "--name", new_name,
                    "--iterations", str(int(iterations)), "--progress", "json", *(extra_args or [])]
        else:
            args = [*self.command, "finetune", "--from", str(model.path), "--data", str(folder), "--name", new_name,
                    "--iterations", str(int(iterations)), "--device", device, "--progress", "json",
                    *(extra_args or [])]
        # Cancel: the command stops after the current step and saves a checkpoint (exit 130)
        proc = WorkerProcess(args, env=self.env or engine_environment(), stop_grace_s=STOP_GRACE_S)
        return FineTuneTask(proc, new_name, on_event)
