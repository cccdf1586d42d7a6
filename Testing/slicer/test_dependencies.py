"""What the module asks Slicer's Python to install: exactly the third-party packages inference
imports (found by running a real segmentation in a process where MONAI cannot be imported), in the
same version ranges as pyproject.toml, and an installed torch outside the range counts as missing."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from UNETRPlusPlusLib import dependencies
from UNETRPlusPlusLib.process import engine_environment

pytestmark = pytest.mark.slicer
REPO = Path(__file__).resolve().parents[2]

# Runs `python -m unetrpp.worker` in-process with monai (and the training packages) unimportable,
# then reports which top-level modules it loaded.
PROBE = """
import json, sys
for blocked in ("monai", "tensorboard", "nibabel", "unetrpp_train"):
    sys.modules[blocked] = None  # import fails like a package that is not installed
from unetrpp.worker import main
rc = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name, module in sys.modules.items() if module is not None})
print(json.dumps({"rc": rc, "loaded": loaded}), file=sys.stderr)
"""


def _closure(dists: set[str]) -> set[str]:
    """The distributions `dists` need, transitively (their installed metadata, markers ignored)."""
    import importlib.metadata as md
    import re

    seen: set[str] = set()
    todo = [d.lower().replace("_", "-") for d in dists]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return seen


@pytest.mark.slow
def test_inference_runs_without_monai_and_needs_only_the_listed_packages(tmp_path):
    import importlib.metadata as md

    out = tmp_path / "result.seg.nrrd"  # the Slicer segmentation the module loads (slicerio)
    args = ["--model", str(REPO / "Resources" / "models" / "demo-abdomen-ct"),
            "--input", f"ct={REPO / 'Resources' / 'examples' / 'example_ct_sm.nii.gz'}",
            "-o", str(out), "--progress", "json", "--fast", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=600,
                       env=engine_environment())
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert report["rc"] == 0 and out.is_file(), r.stderr[-2000:]
    owners = md.packages_distributions()
    loaded_dists = {d.lower().replace("_", "-") for m in report["loaded"] for d in owners.get(m, [])}
    loaded_dists -= {"unetrpp"}
    allowed = _closure(set(dependencies.REQUIREMENTS) | set(dependencies.PROTECTED) - {"vtk"})
    assert loaded_dists <= allowed, f"inference imports packages the module does not install: {loaded_dists - allowed}"
    # every package the module installs is really used by inference
    assert {d.lower() for d in dependencies.REQUIREMENTS} <= loaded_dists
    assert "monai" not in loaded_dists and "monai" not in dependencies.REQUIREMENTS


def test_ranges_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("<")[0].split("=")[0].strip(): d.replace(" ", "") for d in project["dependencies"]}
    for name, requirement in dependencies.requirements(remote=True).items():
        assert core.get(name) == requirement, (name, core.get(name), requirement)
    assert "monai" not in core
    assert any(d.startswith("monai") for d in project["optional-dependencies"]["train"])
    train = {d.split(">")[0].strip(): d.split("#")[0].replace(" ", "") for d in project["optional-dependencies"]["train"]}
    for name, requirement in dependencies.TRAINING_REQUIREMENTS.items():  # asked for only to fine-tune
        assert train.get(name) == requirement, (name, train.get(name), requirement)
        assert name not in dependencies.requirements(remote=True) and name in dependencies.requirements(training=True)


def test_an_installed_torch_outside_the_range_counts_as_missing():
    import torch

    installed = torch.__version__.split("+")[0]
    assert dependencies.version_problem("torch") == ""  # this environment's torch is in range
    old = dependencies.version_problem("torch", version=lambda name: "2.0.1")
    assert old == "torch 2.0.1 is installed; UNETR++ needs <2.15,>=2.1"
    assert dependencies.version_problem("torch", version=lambda name: installed) == ""
    found = lambda name: object()  # noqa: E731 - every package importable
    assert dependencies.missing_packages(found) == []
    plan = dependencies.plan_install(["torch"], have_pytorchutils=False)
    assert plan.pip_requirements == ["torch>=2.1,<2.15"]


def test_processing_on_a_server_also_needs_httpx():
    """The worker of a remote run imports httpx (unetrpp.client); a local run does not need it."""
    without_httpx = lambda name: None if name == "httpx" else object()  # noqa: E731
    assert dependencies.missing_packages(without_httpx) == []
    assert dependencies.missing_packages(without_httpx, remote=True) == ["httpx"]
    plan = dependencies.plan_install(["httpx"], have_pytorchutils=True)
    assert plan.pip_requirements == ["httpx>=0.27,<1"]


def test_fine_tuning_also_needs_monai():
    """Only the module's Fine-tune asks for MONAI (the trainer's transforms and losses)."""
    without_monai = lambda name: None if name == "monai" else object()  # noqa: E731
    assert dependencies.missing_packages(without_monai) == []
    assert dependencies.missing_packages(without_monai, training=True) == ["monai"]
    assert dependencies.plan_install(["monai"], have_pytorchutils=True).pip_requirements == ["monai>=1.3,<1.7"]
