"""The Widget (UNETRPlusPlus.py) needs Qt, which the headless tests do not have, so what it must do
is checked in its source: scene observers only while the module is entered, a parameter-node
observer, Cancel that never waits, the variant dialog's Cancel honoured, strings translatable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.slicer
SOURCE = Path(__file__).resolve().parents[2] / "UNETRPlusPlus" / "UNETRPlusPlus.py"
TREE = ast.parse(SOURCE.read_text())


def method(cls: str, name: str) -> ast.FunctionDef:
    klass = next(n for n in TREE.body if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name)


def calls(fn: ast.AST, attr: str) -> list[str]:
    """ast.unparse of every call to `.attr(...)` in fn."""
    return [ast.unparse(n) for n in ast.walk(fn)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr]


def test_node_observers_only_while_entered():
    setup = " ".join(calls(method("UNETRPlusPlusWidget", "setup"), "addObserver"))
    assert "NodeAddedEvent" not in setup and "NodeRemovedEvent" not in setup
    assert "StartCloseEvent" in setup and "EndCloseEvent" in setup
    enter = " ".join(calls(method("UNETRPlusPlusWidget", "enter"), "addObserver"))
    exit_ = " ".join(calls(method("UNETRPlusPlusWidget", "exit"), "removeObserver"))
    for event in ("NodeAddedEvent", "NodeRemovedEvent"):
        assert event in enter and event in exit_
    assert calls(method("UNETRPlusPlusWidget", "exit"), "observeParameterNode")
    observe = " ".join(calls(method("UNETRPlusPlusWidget", "observeParameterNode"), "addObserver"))
    assert "ModifiedEvent" in observe and "onParameterNodeModified" in observe


def test_cancel_button_requests_and_never_waits():
    segment = method("UNETRPlusPlusWidget", "onSegmentClicked")
    assert calls(segment, "request_cancel") and not calls(segment, "cancel")
    assert not calls(segment, "processEvents")


def test_variant_dialog_cancel_is_honoured():
    install = method("UNETRPlusPlusWidget", "onInstallFromFile")
    assert not calls(install, "getItem"), "QInputDialog.getItem cannot report Cancel through PythonQt"
    assert calls(install, "exec_") and "official_variant_choice" in ast.unparse(install)


def test_user_visible_strings_are_translatable():
    untranslated = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "errorDisplay", "confirmOkCancelDisplay", "delayDisplay", "tryWithErrorDisplay"):
            for arg in [*node.args[:1], *(k.value for k in node.keywords if k.arg == "windowTitle")]:
                if isinstance(arg, (ast.Constant, ast.JoinedStr)):
                    untranslated.append(ast.unparse(node))
    assert not untranslated, untranslated
    init = ast.unparse(method("UNETRPlusPlus", "__init__"))
    assert 'self.parent.title = _(' in init and "translate('qSlicerAbstractCoreModule'" in init


PANELS = [SOURCE.parent / "UNETRPlusPlusLib" / name for name in ("training_panel.py", "remote_panel.py")]
TEXT_ATTRIBUTES = ("text", "toolTip", "placeholderText", "windowTitle")
TEXT_CALLS = ("QPushButton", "QLabel", "addRow", "addItem", "setHorizontalHeaderLabels", "errorDisplay")


@pytest.mark.parametrize("path", [SOURCE, *PANELS], ids=lambda p: p.name)
def test_panel_texts_are_translatable(path):
    """Every text a user reads in the panels (labels, buttons, tool tips, placeholders, table
    headers, messages) goes through _() (slicer.i18n.tr in Slicer)."""
    tree = ast.parse(path.read_text())
    untranslated = []
    for node in ast.walk(tree):
        values = []
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr in TEXT_ATTRIBUTES
                                                for t in node.targets):
            values = [node.value]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in TEXT_CALLS:
            values = [*node.args[:1], *(e for a in node.args[:1] if isinstance(a, ast.List) for e in a.elts)]
        for value in values:
            if isinstance(value, (ast.Constant, ast.JoinedStr)) and (not isinstance(value, ast.Constant)
                                                                    or (isinstance(value.value, str) and value.value.strip())):
                untranslated.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not untranslated, untranslated
