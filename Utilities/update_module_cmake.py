"""Rewrite the file lists of UNETRPlusPlus/CMakeLists.txt from the tree: every Python file of the
module, its logic library and the engine (unetrpp), and every resource (icons, .ui, engine JSON).
Run after adding or removing a file: python Utilities/update_module_cmake.py
(Testing/slicer/test_packaging.py fails until the lists match the tree)."""

from __future__ import annotations

import re
from pathlib import Path

MODULE = Path(__file__).resolve().parents[1] / "UNETRPlusPlus"


def _files(folder: str, suffixes: set[str]) -> list[str]:
    return sorted(
        p.relative_to(MODULE).as_posix()
        for p in (MODULE / folder).rglob("*")
        if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts
    )


def main() -> None:
    scripts = ["${MODULE_NAME}.py", *_files("UNETRPlusPlusLib", {".py"}), *_files("unetrpp", {".py"})]
    resources = [p.replace("UNETRPlusPlus.", "${MODULE_NAME}.") for p in _files("Resources", {".png", ".ui", ".json", ".svg"})]
    resources += _files("unetrpp", {".json"})
    path = MODULE / "CMakeLists.txt"
    text = path.read_text()
    for var, items in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        body = "".join(f"  {item}\n" for item in items)
        text = re.sub(rf"set\({var}\n.*?  \)", f"set({var}\n{body}  )", text, flags=re.S)
    path.write_text(text)
    print(f"{path}: {len(scripts)} scripts, {len(resources)} resources")


if __name__ == "__main__":
    main()
