"""The one background-task base class (UNETRPlusPlusLib/tasks.py) that segmentations, model installs
and fine-tunes share: a failure is keyed on the category of the engine's error event
(unetrpp.errors.classify), never on class names or words in the message; a process that sent no
event is judged by how it ended. Real processes send the engine's own events."""

from __future__ import annotations

import json
import sys

import pytest

from unetrpp import errors as engine
from UNETRPlusPlusLib.errors import (
    CancelledByUser, InputError, ModelError, ModuleError, WorkerError, event_category, from_engine)
from UNETRPlusPlusLib.process import WorkerProcess, engine_environment
from UNETRPlusPlusLib.tasks import BackgroundTask

pytestmark = pytest.mark.slicer

# one engine exception per category, as the engine raises them
EXCEPTIONS = {
    "input": "InputImageError('the scan is 2D: one slice')",
    "model": "IntegrityError('weights failed its SHA256 check')",
    "output": "OutputError('cannot write a 2D result there')",
    "environment": "EnvironmentProblem('CUDA was asked for but is not available')",
    "resource": "MemoryError()",
    "quality": "QualityRefusedError('input check failed: MR intensities in a CT model')",
    "cancelled": "CancelledError('cancelled')",
    "internal": "ZeroDivisionError('division by zero')",
}
CLASSES = {"input": InputError, "model": ModelError, "cancelled": CancelledByUser}


def engine_process(exception: str) -> WorkerProcess:
    """A process that fails as the worker does: the classified exception as its last JSON event."""
    code = ("import json, sys; from unetrpp.errors import *; from unetrpp.errors import classify; "
            f"c = classify({exception}); "
            "print(json.dumps({'event': 'stage', 'stage': 'read', 'message': 'x'}), flush=True); "
            "print(json.dumps({'event': 'error', 'kind': 'Whatever', **c.as_json()}), flush=True); "
            "sys.exit(c.exit_code)")
    return WorkerProcess([sys.executable, "-c", code], env=engine_environment())


@pytest.mark.parametrize("category", engine.CATEGORIES)
def test_failure_is_keyed_on_the_engine_category(category):
    events = []
    task = BackgroundTask(engine_process(EXCEPTIONS[category]), on_event=events.append)
    task.what = "The test task"
    with pytest.raises(ModuleError) as info:
        task.wait(timeout=60)
    error = info.value
    assert error.category == category
    assert type(error) is CLASSES.get(category, WorkerError)
    assert [e["event"] for e in events] == ["stage", "error"]
    if category != "cancelled":
        message = engine.classify(eval(EXCEPTIONS[category], vars(engine))).message  # noqa: S307 - our own table
        assert str(error).startswith(f"The test task failed: {message}")
    # "2D" in an output or input message decides nothing: the category does
    assert task.done and task.result is None


def test_advice_per_category_and_override():
    event = {"event": "error", "category": "resource", "message": "out of memory"}
    assert "Fast mode" in str(from_engine("The segmentation", event))
    assert str(from_engine("X", event, advice={"resource": "Use a smaller crop."})) == \
        "X failed: out of memory. Use a smaller crop."
    assert str(from_engine("X", {"category": "cancelled"})) == "X was cancelled."


@pytest.mark.parametrize("event, category", [
    ({"category": "output", "kind": "IntegrityError"}, "output"),  # the category wins
    ({"kind": "IntegrityError"}, "model"),  # an engine without categories: its class's category
    ({"kind": "OutputExistsError"}, "output"),
    ({"kind": "RequestError"}, "input"),
    ({"kind": "MemoryError"}, "resource"),
    ({"kind": "ValueError", "message": "2D"}, "internal"),
    ({"category": "nonsense"}, "internal"),
    ({}, "internal"),
])
def test_category_of_an_event(event, category):
    assert event_category(event) == category


def test_no_event_then_the_way_the_process_ended():
    task = BackgroundTask(WorkerProcess([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(2)"],
                                        env=engine_environment()))
    with pytest.raises(WorkerError) as info:
        task.wait(timeout=60)
    assert info.value.kind == "crash" and info.value.category == "internal" and "exit code 2" in str(info.value)
    assert "boom" in str(info.value)


def test_success_result_and_workdir_removed_only_at_the_end(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    code = ("import json, pathlib, sys; pathlib.Path(sys.argv[1], 'x').write_text('1'); "
            "print(json.dumps({'event': 'done', 'outputs': {'x': sys.argv[1]}}))")

    class Task(BackgroundTask):
        def finish(self, done_event):
            assert (workdir / "x").is_file()  # still there while the result is made
            return done_event["outputs"]["x"]

    task = Task(WorkerProcess([sys.executable, "-c", code, str(workdir)], env=engine_environment()), workdir=workdir)
    assert task.wait(timeout=60) == str(workdir)
    assert not workdir.exists() and task.error is None
    json.dumps(task.events)
