"""Every decision the module's GUI makes, without Qt: which inputs the chosen model needs, which
volume goes to which input (auto-assigned from volume names and DICOM series descriptions),
whether "Segment" is enabled and why not, what the progress line and the model info say.

The Widget only copies this object's answers into its widgets, so everything here is tested
headless (Testing/slicer/test_state.py).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import event_category
from .i18n import _
from .modelstore import ModelInfo, ModelInput, format_size

DEVICES = (("auto", _("Auto (GPU if available)")), ("cuda", _("GPU")), ("cpu", _("CPU")))


def device_choices(gpus: list[str]) -> list[tuple[str, str]]:
    """(value, text) for the device selector: one entry per GPU (cuda:N) when there are several,
    so the user can pick which one; the engine takes the same values (--device)."""
    if len(gpus) <= 1:
        gpu_text = _("GPU") + (f" ({gpus[0]})" if gpus else "")
        return [("auto", DEVICES[0][1]), ("cuda", gpu_text), ("cpu", DEVICES[2][1])]
    return [("auto", DEVICES[0][1]),
            *((f"cuda:{i}", _("GPU {index}: {name}").format(index=i, name=name)) for i, name in enumerate(gpus)),
            ("cpu", DEVICES[2][1])]


def valid_device(value: str) -> bool:
    return value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d{1,2}", value or "") is not None


def official_variant_choice(accepted: bool, text: str, variants: tuple[str, ...]) -> str | None:
    """The "which official network?" dialog's answer: None when it was cancelled (or the text is
    not a variant), so that Cancel never installs anything."""
    return text if accepted and text in variants else None


def link(url: str) -> str:
    """A clickable link in the model info label (rich text), escaped."""
    safe = html.escape(url, quote=True)
    return f'<a href="{safe}">{safe}</a>' if url.startswith(("https://", "http://")) else safe
STAGE_TITLES = {
    "start": _("Starting"),
    "download": _("Downloading model"),
    "install": _("Installing model"),
    "read": _("Reading inputs"),
    "preprocess": _("Preprocessing"),
    "predict": _("Running UNETR++"),
    "postprocess": _("Post-processing"),
    "write": _("Writing result"),
    "import": _("Loading result into the scene"),
    "prepare": _("Preparing the cases"),
    "evaluate-before": _("Evaluating the parent model"),
    "train": _("Fine-tuning"),
    "export": _("Exporting the new model"),
    "evaluate-after": _("Evaluating the new model"),
}
# Share of the overall progress bar per stage (prediction dominates the run time).
STAGE_WEIGHTS = {"start": 2, "read": 5, "preprocess": 8, "predict": 70, "postprocess": 8, "write": 4, "import": 3}
MAX_INPUT_SELECTORS = 4


@dataclass(frozen=True)
class VolumeInfo:
    """What the GUI needs to know about a volume node (built by logic.volume_info)."""

    id: str
    name: str
    series_description: str = ""
    dimensions: tuple[int, ...] = (0, 0, 0)
    components: int = 1
    is_labelmap: bool = False
    modality: str = ""  # from DICOM when known ("CT", "MR", ...)


def tokens(text: str) -> list[str]:
    """Lower-case alphanumeric words of a name: 'BraTS-GLI-00000-000-t1c' -> [..., 't1c']."""
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def alias_score(text: str, model_input: ModelInput) -> int:
    """How well a volume name / series description names this input: the length of the longest
    alias that is one of its words, or several adjacent words run together ('T1 post' -> t1post),
    or (for aliases of 4+ letters) part of a word ('AxialFLAIR'). 0 = no match."""
    words = tokens(text)
    if not words:
        return 0
    joined = {"".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(i + 3, len(words)) + 1)}
    best = 0
    for alias in {*model_input.aliases, model_input.name.lower()}:
        alias = re.sub(r"[^a-z0-9]", "", alias.lower())
        if not alias:
            continue
        if alias in joined or (len(alias) >= 4 and any(alias in w for w in words)):
            best = max(best, len(alias))
    return best


def volume_check(volume: VolumeInfo, model_input: ModelInput | None = None) -> tuple[str, str] | None:
    """(kind, reason) when this volume cannot be an input, else None. Kinds: "labelmap", "not-3d"
    (2D, or several values per voxel), "empty", "modality"."""
    if volume.is_labelmap:
        return "labelmap", f"'{volume.name}' is a labelmap (a segmentation), not an image; choose the scan itself"
    dims = tuple(int(d) for d in volume.dimensions)
    if volume.components != 1:
        return "not-3d", (
            f"'{volume.name}' has {volume.components} values per voxel (a colour, vector or 4D volume); "
            "the model needs a single 3D scalar volume per input"
        )
    if len(dims) != 3 or any(d < 1 for d in dims):
        return "empty", f"'{volume.name}' has no image data"
    if sum(d > 1 for d in dims) < 3:
        return "not-3d", (f"'{volume.name}' is a 2D image ({' x '.join(map(str, dims))} voxels); "
                          "the model needs a 3D volume")
    if model_input is not None and volume.modality and model_input.modality:
        if volume.modality.upper() != model_input.modality.upper() and volume.modality.upper() in ("CT", "MR"):
            return "modality", (
                f"'{volume.name}' is a {volume.modality} scan but input '{model_input.name}' of this model "
                f"expects {model_input.modality}"
            )
    return None


def volume_problem(volume: VolumeInfo, model_input: ModelInput | None = None) -> str | None:
    """Why this volume cannot be an input (None when it can)."""
    found = volume_check(volume, model_input)
    return found[1] if found else None


def auto_assign(
    inputs: tuple[ModelInput, ...] | list[ModelInput],
    volumes: list[VolumeInfo],
    keep: dict[str, str] | None = None,
) -> dict[str, str]:
    """Map input name -> volume id. Choices in `keep` that are still valid stay; the rest are
    matched by name / series description (best alias first, each volume used once). A model with
    a single input takes the best match, else the most recently added usable volume."""
    usable = [v for v in volumes if volume_problem(v) is None]
    by_id = {v.id: v for v in usable}
    result: dict[str, str] = {}
    for name, vid in (keep or {}).items():
        if vid in by_id and any(i.name == name for i in inputs) and vid not in result.values():
            result[name] = vid
    pairs = []
    for inp in inputs:
        if inp.name in result:
            continue
        for v in usable:
            score = max(alias_score(v.name, inp), alias_score(v.series_description, inp))
            if score:
                pairs.append((score, -usable.index(v), inp.name, v.id))
    for score, _order, name, vid in sorted(pairs, reverse=True):
        if name not in result and vid not in result.values():
            result[name] = vid
    if len(inputs) == 1 and inputs[0].name not in result:
        free = [v for v in usable if v.id not in result.values()]
        if free:
            result[inputs[0].name] = free[-1].id
    return result


def finite_number(value: Any) -> float | None:
    """A progress event's number, or None when it is missing or malformed (text, NaN, inf, bool):
    the worker's events are input like any other and must not break the GUI."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def format_duration(seconds: Any) -> str:
    seconds = finite_number(seconds)
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class GuiState:
    models: list[ModelInfo] = field(default_factory=list)
    model_name: str = ""
    volumes: list[VolumeInfo] = field(default_factory=list)
    assignments: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    fast: bool = False
    missing_dependencies: list[str] = field(default_factory=list)
    running: bool = False
    cancelling: bool = False
    stage: str = ""
    stage_message: str = ""
    fraction: float | None = None
    eta_s: float | None = None
    log: list[str] = field(default_factory=list)
    error: str = ""

    # Model ------------------------------------------------------------------------------------
    @property
    def model(self) -> ModelInfo | None:
        return next((m for m in self.models if m.name == self.model_name), None)

    def set_models(self, models: list[ModelInfo]) -> None:
        self.models = list(models)
        if self.model is None:
            installed = [m for m in self.models if m.installed]
            self.model_name = (installed or self.models)[0].name if self.models else ""
        self.assignments = auto_assign(self.required_inputs(), self.volumes, self.assignments)

    def select_model(self, name: str) -> None:
        self.model_name = name
        self.assignments = auto_assign(self.required_inputs(), self.volumes, self.assignments)

    def required_inputs(self) -> tuple[ModelInput, ...]:
        m = self.model
        return m.inputs if m is not None and m.installed else ()

    def input_label(self, model_input: ModelInput) -> str:
        text = model_input.description or model_input.name
        return f"{model_input.name} ({text}):" if text != model_input.name else f"{model_input.name}:"

    def model_info_text(self) -> str:
        """Rich text; every value from a model package is escaped (a package is untrusted input)."""
        m = self.model
        if m is None:
            return _("No model available. Install one from file (a model package or an official UNETR++ checkpoint).")
        e = html.escape
        lines = [f"<b>{e(m.title)}</b>" + (" " + _("(version {version})").format(version=e(m.version)) if m.version else "")]
        if m.description:
            lines.append(e(m.description))
        if m.inputs:
            lines.append(_("Inputs:") + " " + ", ".join(
                e(i.name) + (f" ({e(i.modality)})" if i.modality else "") for i in m.inputs))
        if m.labels:
            names = [e(l.name) for l in m.labels]
            lines.append(_("Labels ({count}):").format(count=len(names)) + " " + ", ".join(names))
        if m.regions:
            lines.append(_("Regions:") + " " + ", ".join(e(r.name) for r in m.regions))
        lines.append(_("Size: {size}").format(size=format_size(m.size)))
        if m.licence:
            lines.append(_("Licence: {licence}").format(licence=e(m.licence)))
        if not m.installed:
            if m.downloadable:
                lines.append(_("Not installed: click <i>Download</i> to fetch it (verified by SHA256)."))
            else:
                lines.append(_(
                    "Not installed, and no verifiable download exists. Download the checkpoint from "
                    "{url} and use <i>Install from file</i> (variant '{variant}')."
                ).format(url=link(m.url or ""), variant=e(m.variant or "")))
        return "<br>".join(lines)

    # Volumes ------------------------------------------------------------------------------------
    def set_volumes(self, volumes: list[VolumeInfo]) -> None:
        self.volumes = list(volumes)
        self.assignments = auto_assign(self.required_inputs(), self.volumes, self.assignments)

    def assign(self, input_name: str, volume_id: str | None) -> None:
        if volume_id:
            self.assignments[input_name] = volume_id
        else:
            self.assignments.pop(input_name, None)

    def volume(self, volume_id: str | None) -> VolumeInfo | None:
        return next((v for v in self.volumes if v.id == volume_id), None)

    # Segment button ---------------------------------------------------------------------------
    def segment_enabled(self) -> tuple[bool, str]:
        """(enabled, reason). While running the button is "Cancel" and stays enabled."""
        if self.running:
            return (not self.cancelling, _("Cancelling...") if self.cancelling else _("Click to cancel the segmentation"))
        m = self.model
        if m is None:
            return False, _("Install a model first (Install from file).")
        if not m.installed:
            how = _("click Download") if m.downloadable else _("use Install from file with the official checkpoint")
            return False, _("Model '{name}' is not installed: {how}.").format(name=m.name, how=how)
        if self.missing_dependencies:
            return False, _("Missing Python packages: {packages} (click Install dependencies).").format(
                packages=", ".join(self.missing_dependencies))
        if len(m.inputs) > MAX_INPUT_SELECTORS:
            return False, _("Model '{name}' needs {count} inputs; this module supports at most {limit}.").format(
                name=m.name, count=len(m.inputs), limit=MAX_INPUT_SELECTORS)
        used: dict[str, str] = {}
        for inp in m.inputs:
            vid = self.assignments.get(inp.name)
            vol = self.volume(vid)
            if vol is None:
                return False, _("Select a volume for input '{name}'").format(name=inp.name) + (
                    f" ({inp.description})." if inp.description else ".")
            problem = volume_problem(vol, inp)
            if problem:
                return False, problem + "."
            if vid in used:
                return False, _("'{volume}' is selected for both '{first}' and '{second}'; each input needs its own volume.").format(
                    volume=vol.name, first=used[vid], second=inp.name)
            used[vid] = inp.name
        return True, _("Segment with {title}").format(title=m.title)

    def button_text(self) -> str:
        if self.running:
            return _("Cancelling...") if self.cancelling else _("Cancel")
        return _("Segment")

    # Progress -----------------------------------------------------------------------------------
    def start_run(self) -> None:
        self.running, self.cancelling, self.error = True, False, ""
        self.stage, self.stage_message, self.fraction, self.eta_s = "start", "", None, None
        self.log.clear()

    def finish_run(self, error: str = "", message: str = "") -> None:
        self.running = self.cancelling = False
        self.error = error
        self.eta_s = None
        if error:
            self.log.append("Error: " + error)
        elif message:
            self.log.append(message)
            self.fraction, self.stage = 1.0, "done"

    def apply_event(self, event: dict[str, Any]) -> None:
        """Update from one JSON-lines progress event of the worker (unetrpp/progress.py)."""
        kind = event.get("event")
        if kind == "stage":
            self.stage = str(event.get("stage") or self.stage)
            self.stage_message = str(event.get("message") or "")
            self.fraction, self.eta_s = None, None
            self.log.append(f"{STAGE_TITLES.get(self.stage, self.stage)}: {self.stage_message}".rstrip(": "))
        elif kind == "progress":
            self.stage = str(event.get("stage") or self.stage)
            frac = finite_number(event.get("fraction"))
            if frac is None:
                done, total = finite_number(event.get("done")), finite_number(event.get("total"))
                frac = done / total if done is not None and total else None
            self.fraction = None if frac is None else min(max(frac, 0.0), 1.0)
            eta = finite_number(event.get("eta_s"))  # every event replaces it: a bad one does not stick
            self.eta_s = eta if eta is not None and eta >= 0 else None
        elif kind == "log":
            level = str(event.get("level") or "info")
            self.log.append(("Warning: " if level == "warning" else "") + str(event.get("message", "")))
        elif kind == "error":
            self.log.append(f"Error ({event_category(event)}): {event.get('message', '')}")

    def overall_percent(self) -> int:
        """0-100 for the progress bar: finished stages plus the current stage's fraction."""
        if self.stage == "done":
            return 100
        order = list(STAGE_WEIGHTS)
        if self.stage not in STAGE_WEIGHTS:
            return int(round(100 * (self.fraction or 0.0)))
        total = sum(STAGE_WEIGHTS.values())
        before = sum(STAGE_WEIGHTS[s] for s in order[: order.index(self.stage)])
        return int(round(100 * (before + STAGE_WEIGHTS[self.stage] * (self.fraction or 0.0)) / total))

    def progress_text(self) -> str:
        if self.cancelling:
            return _("Cancelling...")
        if not self.running:
            if self.error:
                return _("Failed: {error}").format(error=self.error.split("\n", 1)[0])
            return _("Done") if self.stage == "done" else _("Ready")
        text = STAGE_TITLES.get(self.stage, self.stage.capitalize() or _("Working"))
        if self.fraction is not None:
            text += f" {100 * self.fraction:.0f}%"
        eta = format_duration(self.eta_s)
        if eta:
            text += _(", about {eta} left").format(eta=eta)
        return text
