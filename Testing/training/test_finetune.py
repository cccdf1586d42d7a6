"""`unetrpp-train finetune` (issue 20 item 2) as real processes: a tiny parent trained and exported on phantoms, a
case set written by `add-case` (labels renamed, one new), the fine-tune with JSON progress events, lineage in
the new manifest, the parent untouched, the result installed beside it; cancel with SIGTERM and --resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.phantom import write_config, write_phantom_dataset

CLI = [sys.executable, "-m", "unetrpp_train.cli"]


def env(home: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", UNETRPP_HOME=str(home))


def run_cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], env=env(home), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"unetrpp-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, Path]:
    """(phantom dataset, exported parent package with labels ellipsoid 1, box 2)."""
    root = tmp_path_factory.mktemp("parent")
    data = write_phantom_dataset(root / "ds")
    cfg = write_config(root / "cfg.json", epochs=1, iterations_per_epoch=4)
    run_cli(root, "train", str(cfg), "--data", str(data), "-o", str(root / "run"), "--device", "cpu")
    run_cli(root, "export", str(root / "run"), "-o", str(root / "parent"), "--name", "phantom-parent")
    return data, root / "parent"


def case_set(tmp_path: Path, data: Path, home: Path, labels: str) -> Path:
    for i in ("00", "01"):
        run_cli(home, "add-case", "--set", str(tmp_path / "set"), "--case", f"c{i}",
                "--image", f"mri={data / 'cases' / f'ph{i}' / 'image_mri.nii.gz'}",
                "--label", str(data / "cases" / f"ph{i}" / "label.nii.gz"), "--labels", labels)
    return tmp_path / "set"


@pytest.mark.slow
def test_finetune_json_events_lineage_and_install(parent, tmp_path):
    data, pkg = parent
    home = tmp_path / "home"
    before = digest(pkg)
    # the data calls the ellipsoid "Ellipsoid" (matched by name) and the box "cube" (a new class)
    cases = case_set(tmp_path, data, home, '{"Ellipsoid": 1, "cube": 2}')
    proc = run_cli(home, "finetune", "--from", str(pkg), "--data", str(cases), "--name", "phantom-ft", "--iterations", "4",
                   "--device", "cpu", "--workers", "0", "-o", str(tmp_path / "work"), "--progress", "json")
    evs = events(proc.stdout)  # stdout holds only JSON events
    stages = [e["stage"] for e in evs if e["event"] == "stage"]
    assert stages[0] == "prepare" and stages[-3:] == ["export", "evaluate-after", "install"] and "train" in stages
    progress = [e for e in evs if e["event"] == "progress" and e["stage"] == "train"]
    assert progress[-1]["done"] == progress[-1]["total"] == 4 and all("eta_s" in e for e in progress)
    assert any(e["event"] == "log" and "none could be held out" in e["message"] for e in evs)
    done = evs[-1]
    assert done["event"] == "done" and done["model"] == "phantom-ft"
    assert set(done["metrics"]) == {"before", "after"} and {"ellipsoid", "cube"} <= set(done["metrics"]["before"])
    assert done["evaluation"]["held_out"] is False and done["evaluation"]["cases"] == ["c00", "c01"]
    installed = Path(done["package"])
    assert installed == home / "models" / "phantom-ft" and (installed / "model.json").is_file()
    manifest = json.loads((installed / "model.json").read_text())
    assert manifest["architecture"]["out_channels"] == 4  # background, ellipsoid, box (kept), cube (new)
    assert [(lab["value"], lab["name"]) for lab in manifest["labels"]] == [(1, "ellipsoid"), (2, "box"), (3, "cube")]
    lineage = manifest["provenance"]["lineage"]
    parent_manifest = json.loads((pkg / "model.json").read_text())
    assert lineage["parent"] == {"name": "phantom-parent", "version": "1.0.0",
                                 "weights_sha256": parent_manifest["weights"]["sha256"]}
    assert len(lineage["data"]["sha256"]) == 64 and lineage["iterations"] == 4
    assert lineage["metrics"] == done["metrics"] and lineage["unannotated_labels"] == {"values": [2], "treatment": "keep"}
    assert "Adapted from" in (tmp_path / "work" / "package" / "MODEL_CARD.md").read_text()
    assert digest(pkg) == before  # the parent is untouched
    # a second fine-tune under an installed name is refused before any work (never replaces a model)
    again = run_cli(home, "finetune", "--from", str(pkg), "--data", str(cases), "--name", "phantom-ft",
                    "--device", "cpu", "-o", str(tmp_path / "work2"), "--progress", "json", check=False)
    assert again.returncode == 2 and events(again.stdout)[-1] == {"event": "error", "category": "output",
                                                                  "message": events(again.stdout)[-1]["message"]}
    assert not (tmp_path / "work2").exists()


@pytest.mark.slow
def test_finetune_cancel_with_sigterm_then_resume(parent, tmp_path):
    data, pkg = parent
    home = tmp_path / "home"
    cases = case_set(tmp_path, data, home, '{"ellipsoid": 1, "box": 2}')
    args = ["finetune", "--from", str(pkg), "--data", str(cases), "--name", "phantom-ft2", "--iterations", "60",
            "--device", "cpu", "--workers", "0", "-o", str(tmp_path / "work"), "--progress", "json"]
    proc = subprocess.Popen([*CLI, *args], env=env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line))
        if seen[-1]["event"] == "progress" and seen[-1]["stage"] == "train" and seen[-1]["done"] >= 4:
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=600)
    seen += events(rest)
    assert proc.returncode == 130, err[-3000:]
    assert seen[-1]["event"] == "error" and seen[-1]["category"] == "cancelled" and "--resume" in seen[-1]["message"]
    assert (tmp_path / "work" / "run" / "checkpoint_latest.pt").is_file()
    assert not (home / "models" / "phantom-ft2").exists()
    stopped = max(e["done"] for e in seen if e["event"] == "progress" and e["stage"] == "train")
    assert stopped < 60
    resumed = run_cli(home, *args[:-2], "--resume", "--progress", "json")
    evs = events(resumed.stdout)
    train = [e for e in evs if e["event"] == "progress" and e["stage"] == "train"]
    assert train[0]["done"] > stopped - 1 and train[-1]["done"] == 60  # continued, not restarted
    assert "evaluate-before" not in [e.get("stage") for e in evs if e["event"] == "stage"]  # done before the cancel
    assert evs[-1]["event"] == "done" and (home / "models" / "phantom-ft2" / "model.json").is_file()



SEVERAL_SIGNALS = r"""
import os, signal, time
from unetrpp_train.finetune import REPEAT_AFTER_S, Events, cancel_on_signals

events = Events()
events.stage("train", "training")
before = signal.getsignal(signal.SIGTERM)
with cancel_on_signals(events, stopping_process=True) as token:
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # each handled on its own (signals of one kind coalesce while pending)
    assert token.is_set()  # no KeyboardInterrupt: the step goes on to its end
assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
os.kill(os.getpid(), signal.SIGTERM)  # a late copy: ignored, this process lives on
time.sleep(0.05)
signal.signal(signal.SIGTERM, before)
try:
    with cancel_on_signals(events) as token:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(REPEAT_AFTER_S + 0.2)
        os.kill(os.getpid(), signal.SIGTERM)  # a deliberate second request, later: stop now
        time.sleep(0.5)
    raise SystemExit("a later second request did not stop at once")
except KeyboardInterrupt:
    pass
assert signal.getsignal(signal.SIGTERM) == before  # in-process callers get their handler back
print("ok")
"""


def test_one_stop_request_sent_as_several_signals_stops_after_the_step_and_late_copies_are_ignored():
    """The Slicer module's stop reaches a fine-tune as several SIGTERMs within milliseconds (the process
    group, each process, the supervisor's forward). Copies within REPEAT_AFTER_S are one request: the
    step finishes (with its checkpoint) instead of a KeyboardInterrupt mid-step; after the command's
    block ends, late copies are ignored instead of killing the process with SIGTERM's status (143)
    while it reports "cancelled" (130). In a fresh process: the signals go to it, not to pytest."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "Training"), str(repo / "UNETRPlusPlus"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SEVERAL_SIGNALS], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])
