"""Extension packaging: CMake lists every script and resource the module ships (module, logic
library and engine), the widget names the code uses exist in the .ui file, extension metadata and
the ExtensionsIndex entry are complete and consistent, the logic library stays free of Qt/torch."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.slicer

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "UNETRPlusPlus"


def _cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, f"{variable} is not set"
    return [item.replace("${MODULE_NAME}", "UNETRPlusPlus") for item in m.group(1).split()]


def _module_files(suffixes: tuple[str, ...], under: Path = MODULE) -> set[str]:
    return {
        p.relative_to(MODULE).as_posix()
        for p in under.rglob("*")
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts
    }


def test_every_python_file_and_resource_is_in_cmake():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    py_files = _module_files((".py",))
    assert py_files - set(scripts) == set(), (
        f"add these to MODULE_PYTHON_SCRIPTS in UNETRPlusPlus/CMakeLists.txt (python Utilities/update_module_cmake.py): "
        f"{sorted(py_files - set(scripts))}")
    assert set(scripts) - py_files == set(), f"listed but missing: {sorted(set(scripts) - py_files)}"
    shipped = {p for p in _module_files((".png", ".ui", ".json", ".svg"), MODULE / "Resources")}
    shipped |= _module_files((".json",), MODULE / "unetrpp")
    assert shipped - set(resources) == set(), f"add to MODULE_PYTHON_RESOURCES: {sorted(shipped - set(resources))}"
    assert set(resources) - shipped == set(), f"listed but missing: {sorted(set(resources) - shipped)}"
    assert "slicerMacroBuildScriptedModule" in text
    assert "../Resources/models.json" in text and (REPO / "Resources" / "models.json").is_file()
    # the bundled demo model is installed as a whole folder beside the catalogue
    assert "../Resources/models)" in text and "install(DIRECTORY ${_bundled_models}" in text
    assert (REPO / "Resources" / "models" / "demo-abdomen-ct" / "model.json").is_file()
    # the training package (case sets, fine-tune) is installed beside the engine, on the module's path
    assert "../Training/unetrpp_train)" in text and "install(DIRECTORY ${_training}" in text
    assert (REPO / "Training" / "unetrpp_train" / "caseset.py").is_file()


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r"cmake_minimum_required\(", text) and "project(UNETRPlusPlus)" in text
    values = dict(re.findall(r'set\((EXTENSION_[A-Z_]+)\s+"([^"]*)"\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert values.get(f"EXTENSION_{key}"), f"EXTENSION_{key} missing"
    assert values["EXTENSION_CATEGORY"] == "Segmentation" and values["EXTENSION_DEPENDS"] == "PyTorch"
    assert values["EXTENSION_ICONURL"].endswith("Resources/UNETRPlusPlus.png")
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                      "add_subdirectory(UNETRPlusPlus)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                      "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)
    entry = json.loads((REPO / "docs" / "UNETRPlusPlus.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier", "enabled"}
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    assert entry["category"] == values["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == values["EXTENSION_DEPENDS"].split()


@pytest.mark.parametrize("icon", ["Resources/UNETRPlusPlus.png", "UNETRPlusPlus/Resources/Icons/UNETRPlusPlus.png"])
def test_icons_are_128px_png(icon):
    data = (REPO / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def _ui_object_names() -> dict[str, str]:
    root = ET.parse(MODULE / "Resources" / "UI" / "UNETRPlusPlus.ui").getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_widget_names_used_by_the_code_exist_in_the_ui():
    names = _ui_object_names()
    tree = ast.parse((MODULE / "UNETRPlusPlus.py").read_text())
    used: set[str] = set()
    for node in ast.walk(tree):
        # self.ui.NAME
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            used.add(node.attr)
        # getattr(self.ui, f"NAME{i}") for i in range(MAX_INPUT_SELECTORS)
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and len(node.args) >= 2
                and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "ui"
                and isinstance(node.args[1], ast.JoinedStr)):
            prefix = "".join(v.value for v in node.args[1].values if isinstance(v, ast.Constant))
            from UNETRPlusPlusLib.state import MAX_INPUT_SELECTORS

            used |= {f"{prefix}{i}" for i in range(MAX_INPUT_SELECTORS)}
    assert len(used) > 15
    missing = sorted(used - set(names))
    assert not missing, f"the code uses widgets the .ui file does not define: {missing}"
    assert names["segmentButton"] == "QPushButton" and names["progressBar"] == "QProgressBar"
    assert names["outputSelector"] == "qMRMLNodeComboBox" and names["statusLog"] == "QPlainTextEdit"


def test_module_sources_compile_and_lib_imports_without_qt_or_torch():
    # The library uses the engine's torch-free contracts (unetrpp.manifest, catalogue, terminology).
    for path in [MODULE / "UNETRPlusPlus.py", *sorted((MODULE / "UNETRPlusPlusLib").glob("*.py"))]:
        compile(path.read_text(), str(path), "exec")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import UNETRPlusPlusLib.logic, UNETRPlusPlusLib.state, UNETRPlusPlusLib.parameters,"
        " UNETRPlusPlusLib.dependencies, UNETRPlusPlusLib.modelstore, UNETRPlusPlusLib.process,"
        " UNETRPlusPlusLib.scene, UNETRPlusPlusLib.tasks, UNETRPlusPlusLib.segment, UNETRPlusPlusLib.modeltasks,"
        " UNETRPlusPlusLib.terminologies;"
        "bad = [m for m in ('qt', 'ctk', 'torch', 'jsonschema', 'safetensors', 'unetrpp.package', 'PythonQt')"
        " if m in sys.modules];"
        "bad += [m for m in ('unetrpp.manifest', 'unetrpp.catalogue', 'unetrpp.terminology') if m not in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
