"""The engine process as it runs inside Slicer: `python` is the PythonSlicer launcher, which starts
the real Python as its child (writing straight into the module's pipes) and reports any death of
that child by a signal as exit code 1 (CTK AppLauncher, Base/ctkAppLauncher.cpp,
applicationFinished: "exit abnormally"). A faithful stand-in launcher script does the same here, so
Cancel and out-of-memory detection are tested through the real process tree: launcher ->
supervisor -> worker (real `unetrpp.worker` on a real CT, or small real programs)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest
from slicer_support import load_volume

from UNETRPlusPlusLib.errors import WorkerError
from UNETRPlusPlusLib.scene import scene_snapshot
from UNETRPlusPlusLib.segment import SegmentationLogic
from UNETRPlusPlusLib.process import STOP_GRACE_S, WorkerProcess, engine_environment, supervised

psutil = pytest.importorskip("psutil")
pytestmark = [pytest.mark.slicer, pytest.mark.skipif(os.name == "nt", reason="the stand-in launcher is a POSIX script")]

DATA_CT = "ct/example_ct_sm.nii.gz"
LAUNCHER = '''#!{python}
# Stand-in for PythonSlicer (CTK AppLauncher): run the real Python as a child with the same stdio,
# pass on its normal exit code, turn a death by a signal into exit code 1. Like the Qt launcher it
# installs no signal handlers: SIGTERM ends it at once and orphans the child.
import subprocess, sys
child = subprocess.Popen([sys.executable, *sys.argv[1:]])
rc = child.wait()
if rc < 0:
    print("error: [" + sys.executable + "] exit abnormally - Report the problem.", file=sys.stderr, flush=True)
    sys.exit(1)
sys.exit(rc)
'''
STAGE = 'import json; print(json.dumps({"event": "stage", "stage": "read", "message": "x"}), flush=True)'


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("slicer-bin") / "PythonSlicer"
    path.write_text(LAUNCHER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def alive(procs) -> list:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def tree_of(proc: WorkerProcess) -> list:
    root = psutil.Process(proc.proc.pid)
    return [root, *root.children(recursive=True)]


def cancel_and_watch(run, tree) -> float:
    """Request the cancel like the GUI (no waiting), then poll like its timer; at every step the
    temporary folder must still exist while any process of the tree runs. Returns the seconds
    until every process of the tree had ended."""
    t0 = time.monotonic()
    run.request_cancel()
    gone_after = None
    while not run.poll():
        if alive(tree):
            assert run.workdir.exists(), "the temporary folder was removed while the worker still ran"
        elif gone_after is None:
            gone_after = time.monotonic() - t0
        assert time.monotonic() - t0 < 30, "the cancelled run never finished"
        time.sleep(0.02)
    return gone_after if gone_after is not None else time.monotonic() - t0


def test_cancel_through_the_launcher_ends_the_whole_tree(scene, data_dir, slow_pkg, launcher):
    logic = SegmentationLogic(scene, command=supervised(launcher, "-m", "unetrpp.worker"))
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    run = logic.start(slow_pkg, {"ct": ct}, fast=False)
    deadline = time.monotonic() + 120
    while not any(e["event"] == "progress" and e.get("stage") == "predict" for e in run.events):
        assert not run.poll(), f"finished before it could be cancelled: {run.error}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tree = tree_of(run.proc)
    # launcher -> supervisor (the real Python) -> worker, the worker writing into our pipe
    assert len(alive(tree)) == 3, [p.cmdline() for p in tree]
    assert any("unetrpp.worker" in " ".join(p.cmdline()) for p in tree[1:])
    seconds = cancel_and_watch(run, tree)
    assert not alive(tree)
    assert seconds < 2.0, f"the process tree took {seconds:.1f} s to end"
    assert run.done and run.error is not None and run.error.kind == "cancelled"
    assert not run.workdir.exists()
    assert scene_snapshot(scene) == before


def test_a_worker_that_ignores_the_stop_request_is_killed(scene, data_dir, synapse_pkg, launcher):
    code = STAGE + "; import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    logic = SegmentationLogic(scene, command=supervised(launcher, "-c", code))
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    run = logic.start(synapse_pkg, {"ct": ct})
    while not run.events:
        assert not run.poll()
        time.sleep(0.02)
    tree = tree_of(run.proc)
    assert len(alive(tree)) == 3
    seconds = cancel_and_watch(run, tree)
    assert not alive(tree) and seconds < 2.0 and seconds >= STOP_GRACE_S * 0.9
    assert run.error is not None and run.error.kind == "cancelled"
    assert not run.workdir.exists() and scene_snapshot(scene) == before


OOM_KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


@pytest.mark.parametrize("code, kind, text", [
    (OOM_KILLED, "out-of-memory", "killed by the system"),
    (SEGFAULT, "crash", "stopped by signal 11"),
])
def test_death_by_signal_is_recognised_through_the_launcher(scene, data_dir, synapse_pkg, launcher, code, kind, text):
    logic = SegmentationLogic(scene, command=supervised(launcher, "-c", code))
    ct = load_volume(scene, data_dir / DATA_CT, "abdomen")
    before = scene_snapshot(scene)
    run = logic.start(synapse_pkg, {"ct": ct})
    with pytest.raises(WorkerError) as info:
        run.wait(timeout=60)
    assert info.value.kind == kind and text in str(info.value)
    assert scene_snapshot(scene) == before and not run.workdir.exists()


def test_the_stand_in_launcher_hides_the_signal_without_the_supervisor(launcher):
    """Why the supervisor exists: through the launcher alone a SIGKILL is only 'exit code 1'."""
    proc = WorkerProcess([launcher, "-c", OOM_KILLED], env=engine_environment())
    assert proc.wait(timeout=60) == 1
    assert any("exit abnormally" in line for line in proc.stderr_tail)
    supervised_proc = WorkerProcess(supervised(launcher, "-c", OOM_KILLED), env=engine_environment())
    assert supervised_proc.wait(timeout=60) == 128 + 9


def test_supervisor_passes_on_exit_codes_and_output(launcher):
    code = STAGE + "; import sys; print(json.dumps({'event': 'done'})); sys.exit(3)"
    proc = WorkerProcess(supervised(launcher, "-c", code.replace("import json;", "import json, sys;")),
                         env=engine_environment())
    assert proc.wait(timeout=60) == 3
    assert [e["event"] for e in proc.poll_events()] == ["stage", "done"]
    assert json.loads(json.dumps(proc.done_event)) == {"event": "done"}
