"""Python packages the engine needs inside Slicer, and how to install them without breaking Slicer.

Only what inference imports (the engine's import graph; Testing/slicer/test_dependencies.py runs a
real segmentation with MONAI blocked): MONAI and the training/benchmark packages stay optional, so
a failed MONAI install never keeps a user from segmenting. An installed package whose version is
outside the range (e.g. an old torch) counts as missing.

- torch comes from the PyTorch extension (`PyTorchUtils`), which picks the build for the GPU/CUDA
  version; only without that extension is it installed with pip (CPU build from PyPI).
- the others are installed with `slicer.util.pip_install`, constrained so that Slicer's own
  packages (numpy, SimpleITK, vtk) are never upgraded or replaced.
Installing happens only after the user agreed (the Widget asks; `install` takes that answer).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

# import name -> pip requirement (same ranges as pyproject.toml; numpy and SimpleITK: PROTECTED)
REQUIREMENTS = {
    "torch": "torch>=2.1,<2.15",
    "safetensors": "safetensors>=0.4,<1",
    "jsonschema": "jsonschema>=4.18,<5",
    "scipy": "scipy>=1.10,<2",
    "tqdm": "tqdm>=4.60,<5",
    "slicerio": "slicerio>=1.1,<2",
}
# Remote runs ("Process on: a segmentation server", remote.py): the worker talks HTTP to the server.
REMOTE_REQUIREMENTS = {"httpx": "httpx>=0.27,<1"}
# Fine-tuning from the module (training.py: `unetrpp-train finetune`): the training transforms and
# losses. Asked for only when the user fine-tunes; segmenting never needs it.
TRAINING_REQUIREMENTS = {"monai": "monai>=1.3,<1.7"}
# Bundled with Slicer: never installed, upgraded or replaced by this module.
PROTECTED = ("numpy", "SimpleITK", "vtk")


def requirements(remote: bool = False, training: bool = False) -> dict[str, str]:
    """What the module needs: inference, plus the HTTP client when it processes on a server, plus
    MONAI when it fine-tunes."""
    return {**REQUIREMENTS, **(REMOTE_REQUIREMENTS if remote else {}), **(TRAINING_REQUIREMENTS if training else {})}


def version_problem(name: str, version: Callable[[str], str] = importlib.metadata.version) -> str:
    """Why the installed `name` does not satisfy its requirement ('' when it does, or when its
    version cannot be read: then it is trusted)."""
    try:
        from packaging.requirements import Requirement  # noqa: PLC0415 - pip's own parser (in Slicer)
        from packaging.version import InvalidVersion, Version  # noqa: PLC0415
    except ImportError:
        return ""
    requirement = Requirement(requirements(remote=True, training=True)[name])
    try:
        installed = version(requirement.name)
        if Version(installed) in requirement.specifier:
            return ""
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return ""
    return f"{requirement.name} {installed} is installed; UNETR++ needs {requirement.specifier}"


def missing_packages(find_spec: Callable[[str], Any] = importlib.util.find_spec, remote: bool = False,
                     training: bool = False) -> list[str]:
    """Packages to install: not importable, or installed in a version outside the range."""
    return [name for name in requirements(remote, training) if find_spec(name) is None or version_problem(name)]


def describe_missing(missing: list[str]) -> str:
    """'torch (2.0.1 installed, needs >=2.1,<2.15), scipy' for the GUI."""
    parts = []
    for name in missing:
        problem = version_problem(name) if importlib.util.find_spec(name) is not None else ""
        parts.append(f"{name} ({problem})" if problem else name)
    return ", ".join(parts)


def constraints_text() -> str:
    """pip constraints pinning Slicer's bundled packages to the installed versions."""
    lines = []
    for dist in PROTECTED:
        try:
            lines.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


@dataclass
class InstallPlan:
    torch_via_pytorchutils: bool
    pip_requirements: list[str]

    def describe(self) -> str:
        parts = []
        if self.torch_via_pytorchutils:
            parts.append("PyTorch through the PyTorch extension (build matching your GPU/CUDA)")
        if self.pip_requirements:
            parts.append("pip: " + ", ".join(self.pip_requirements))
        return "; ".join(parts) or "nothing"


def plan_install(missing: list[str], have_pytorchutils: bool) -> InstallPlan:
    torch_utils = "torch" in missing and have_pytorchutils
    reqs = [requirements(remote=True, training=True)[m] for m in missing if not (m == "torch" and torch_utils)]
    return InstallPlan(torch_utils, reqs)


def pytorchutils_available() -> bool:
    return importlib.util.find_spec("PyTorchUtils") is not None


def install(missing: list[str], confirmed: bool) -> None:
    """Install `missing` in Slicer's Python. `confirmed` must be the user's answer to a dialog
    that listed `plan_install(...).describe()`; without it nothing is installed."""
    if not missing:
        return
    if not confirmed:
        raise RuntimeError("installing Python packages needs the user's consent")
    import slicer  # noqa: PLC0415 - desktop Slicer only
    from packaging.requirements import Requirement  # noqa: PLC0415 - in Slicer

    plan = plan_install(missing, pytorchutils_available())
    if plan.torch_via_pytorchutils:
        import PyTorchUtils  # noqa: PLC0415 - provided by the PyTorch extension

        torch_range = str(Requirement(REQUIREMENTS["torch"]).specifier)
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=torch_range)
        if torch is None:
            raise RuntimeError("PyTorch could not be installed by the PyTorch extension")
    if plan.pip_requirements:
        with tempfile.TemporaryDirectory() as tmp:
            constraints = Path(tmp) / "slicer-constraints.txt"
            constraints.write_text(constraints_text())
            args = " ".join(f'"{r}"' for r in plan.pip_requirements) + f' -c "{constraints}"'
            log.info("pip install %s", args)
            slicer.util.pip_install(args)
