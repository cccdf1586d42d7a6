"""Issue 12, hostile packages and entry points in real processes: manifests nested or sized to
exhaust the stack or memory, zip bombs, a broken installed model among good ones, NaN/inf
regions of interest, a closed stdout. Each ends in one `error:` line and exit 2, never a
traceback, and nothing is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from unetrpp.errors import ManifestError, PackageError
from unetrpp.manifest import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, load_json, read_manifest

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"
CLI = [sys.executable, "-m", "unetrpp"]
WORKER = [sys.executable, "-m", "unetrpp.worker"]


def run(cmd, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*map(str, cmd)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kw)


def assert_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr


def demo_manifest() -> dict:
    return json.loads((DEMO_MODEL / "model.json").read_text())


def package_with_manifest(folder: Path, text: str | bytes) -> Path:
    shutil.copytree(DEMO_MODEL, folder)
    (folder / "model.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return folder


# Item 8: manifest size and depth ------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def hostile_manifests() -> dict[str, str | bytes]:
    text = json.dumps(demo_manifest())
    return {
        "nested 100,000 levels at top level": DEEP,
        "nested 100,000 levels inside a field": text[:-1] + ', "provenance": {"metrics": ' + DEEP + "}}",
        "nested just over the limit": text[:-1] + ', "x": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}",
        "larger than the size limit": text[:-1] + ', "description": "' + "x" * MAX_MANIFEST_BYTES + '"}',
        "NaN spacing": text.replace('"target_spacing": [', '"target_spacing": [NaN, ', 1),
        "number out of range": text.replace('"overlap": 0.5', '"overlap": 1e999', 1),
        "integer of 5000 digits": re.sub(r'"schema_version": \d+', '"schema_version": ' + "9" * 5000, text, count=1),
        "not UTF-8": text.replace('"title": "', '"title": "\xe4', 1).encode("latin-1"),
    }


@pytest.mark.parametrize("case", list(hostile_manifests()))
def test_hostile_manifest_refused_in_process(tmp_path, case):
    pkg = package_with_manifest(tmp_path / "pkg", hostile_manifests()[case])
    with pytest.raises(ManifestError, match="levels deep|bytes|not valid JSON|not UTF-8|at most"):
        read_manifest(pkg)


@pytest.mark.slow
def test_hostile_manifest_refused_by_the_cli(tmp_path):
    """Issue 12 case 8: model.json nested 100,000 levels deep gave a RecursionError traceback."""
    cases = hostile_manifests()
    for case in ("nested 100,000 levels at top level", "nested 100,000 levels inside a field", "larger than the size limit"):
        pkg = package_with_manifest(tmp_path / re.sub(r"\W", "_", case), cases[case])
        proc = run([*CLI, "segment", "--model", pkg, EXAMPLE_CT, "-o", tmp_path / "out.nii.gz"], tmp_path)
        assert_error(proc, rf"model\.json (nests arrays/objects more than {MAX_JSON_DEPTH} levels|is larger than {MAX_MANIFEST_BYTES} bytes)")
    assert not (tmp_path / "out.nii.gz").exists()


def test_ordinary_nesting_is_fine():
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") is not None
    assert load_json('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"["}', "x")  # brackets in strings


# Item 9: a broken installed model among good ones ---------------------------------------------------
def test_broken_installed_model_listed_as_broken(tmp_path):
    """Issue 12 case 9: one corrupt model.json (a list, or deeply nested) made `unetrpp models`
    fail for all models."""
    home = tmp_path / "home"
    models = home / "models"
    shutil.copytree(DEMO_MODEL, models / "good")
    package_with_manifest(models / "a-list", "[1, 2]")
    package_with_manifest(models / "deep", DEEP)
    package_with_manifest(models / "not-json", "{")
    package_with_manifest(models / "wrong-types", json.dumps({"name": "x", "inputs": "ct", "labels": 3}))
    env = {"UNETRPP_HOME": str(home)}
    proc = run([*CLI, "models"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert "demo-abdomen-ct" in proc.stdout and "inputs: ct; 13 labels" in proc.stdout
    for name in ("a-list", "deep", "not-json", "wrong-types"):
        assert re.search(rf"{name} .*\n.*BROKEN, cannot be used: .*{name}/model\.json", proc.stdout), proc.stdout
    listing = json.loads(run([*CLI, "models", "--json"], tmp_path, env).stdout)
    by_name = {m["name"]: m for m in listing["installed"]}
    assert "problem" not in by_name["demo-abdomen-ct"]
    assert "levels deep" in by_name["deep"]["problem"] and "JSON object" in by_name["a-list"]["problem"]
    # the good model still segments; the broken one is refused with its reason, and can be removed
    assert_error(run([*CLI, "segment", "--model", "deep", EXAMPLE_CT, "-o", tmp_path / "o.nii.gz"], tmp_path, env),
                 "levels deep")
    assert run([*CLI, "models", "remove", "deep"], tmp_path, env).returncode == 0
    assert not (models / "deep").exists()


# Item 14: zip bombs and other archive tricks ------------------------------------------------------------
def _zip(path: Path, entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _package_entries() -> dict[str, bytes]:
    return {"model.json": (DEMO_MODEL / "model.json").read_bytes(),
            "weights.safetensors": (DEMO_MODEL / "weights.safetensors").read_bytes()}


@pytest.mark.slow
def test_zip_bomb_refused_from_the_directory(tmp_path):
    """Issue 12 case 14: a 14 MB zip with a 3 GiB weights entry was inflated to disk and hashed
    (installing) or read into memory (segmenting) before being refused. Here a 200 MB entry of
    zeros (a 200 kB zip): refused from the zip directory, before inflating, for both."""
    entries = _package_entries()
    entries["weights.safetensors"] = bytes(200 << 20)
    bomb = _zip(tmp_path / "bomb.zip", entries, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1 << 20
    env = {"UNETRPP_HOME": str(tmp_path / "home")}
    assert_error(run([*CLI, "segment", "--model", bomb, EXAMPLE_CT, "-o", tmp_path / "o.nii.gz"], tmp_path, env),
                 r"would inflate \d+ bytes to 209715200 \(more than 100:1")
    assert_error(run([*CLI, "models", "install", bomb, "--progress", "none"], tmp_path, env), "more than 100:1")
    assert not (tmp_path / "home" / "models").exists() or not any((tmp_path / "home" / "models").iterdir())


@pytest.mark.slow
def test_weights_over_the_size_limit_refused(tmp_path):
    """The size limit is read from the directory (stored, ratio 1:1); UNETRPP_MAX_WEIGHTS_BYTES
    lowers it here so that the real demo weights exceed it."""
    pkg = _zip(tmp_path / "pkg.zip", _package_entries())
    env = {"UNETRPP_MAX_WEIGHTS_BYTES": "1000000"}
    assert_error(run([*CLI, "segment", "--model", pkg, EXAMPLE_CT, "-o", tmp_path / "o.nii.gz"], tmp_path, env),
                 r"entry 'weights.safetensors' would inflate to \d+ bytes, over the limit of 1000000 bytes")
    folder = shutil.copytree(DEMO_MODEL, tmp_path / "folder-pkg")
    assert_error(run([*CLI, "segment", "--model", folder, EXAMPLE_CT, "-o", tmp_path / "o.nii.gz"], tmp_path, env),
                 r"over the limit of 1000000 bytes")


def test_zip_lying_about_its_sizes_refused(tmp_path):
    """A directory that announces a small size for an entry that inflates to more: zipfile stops
    at the announced size and the CRC fails."""
    import struct

    pkg = _zip(tmp_path / "pkg.zip", _package_entries(), zipfile.ZIP_DEFLATED)
    data = bytearray(pkg.read_bytes())
    real = len((DEMO_MODEL / "weights.safetensors").read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entries, last first: patch the weights' size
    while cd != -1:
        name_len = struct.unpack_from("<H", data, cd + 28)[0]
        if data[cd + 46: cd + 46 + name_len] == b"weights.safetensors":
            struct.pack_into("<I", data, cd + 24, real // 2)
        cd = data.rfind(b"PK\x01\x02", 0, cd)
    pkg.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="damaged zip|SHA256|inflate"):
        from unetrpp.package import load

        load(pkg)


def test_duplicate_entries_refused(tmp_path):
    entries = _package_entries()
    pkg = tmp_path / "dup.zip"
    with zipfile.ZipFile(pkg, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("model.json", b'{"other": "manifest"}')
    with pytest.raises(PackageError, match="same file name twice"):
        read_manifest(pkg)


# Item 7: regions of interest ------------------------------------------------------------------------------
def test_non_finite_roi_refused(tmp_path, roi="nan,0,0,1,1,1"):
    """Issue 12 case 7: NaN gave a NumPy warning or a false "does not overlap"."""
    proc = run([*CLI, "segment", "--model", DEMO_MODEL, EXAMPLE_CT, "-o", tmp_path / "o.nii.gz", f"--roi={roi}"], tmp_path)
    assert_error(proc, "every bound must be a finite number")
    assert "Warning" not in proc.stderr and not (tmp_path / "o.nii.gz").exists()


def test_non_finite_roi_refused_by_the_api():
    from unetrpp.segmenter import check_roi

    from unetrpp.errors import InputImageError

    for roi in [((float("nan"), 0, 0), (1, 1, 1)), ((0, 0, 0), (float("inf"), 1, 1)), ((-float("inf"), 0, 0), (1, 1, 1)),
                ((0, 0), (1, 1)), "abc"]:
        with pytest.raises(InputImageError, match="region of interest"):
            check_roi(roi)
    assert check_roi(((0, 0, 0), (1, 2, 3))) == ((0.0, 0.0, 0.0), (1.0, 2.0, 3.0))


# Item 10: a closed stdout ----------------------------------------------------------------------------------
def test_worker_with_closed_stdout_ends_cleanly(tmp_path):
    """Issue 12 case 10: the worker's stdout closed early gave a BrokenPipeError traceback. Now:
    one error line, exit 2, and no output (the run stops; nothing half-written)."""
    proc = subprocess.Popen([*WORKER, "--model", DEMO_MODEL, EXAMPLE_CT, "-o", tmp_path / "o.seg.nrrd", "--fast"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert json.loads(first)["event"] == "stage"
    proc.stdout.close()  # the reader goes away
    code = proc.wait(timeout=300)
    err = proc.stderr.read()
    assert code == 2 and "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == "error: standard output was closed (broken pipe); stopped"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_listing_into_a_closed_pipe_ends_cleanly(tmp_path):
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc = subprocess.run([*CLI, "models", "--json"], stdout=reader.stdin, stderr=subprocess.PIPE, text=True,
                          timeout=120, env={**os.environ, "UNETRPP_HOME": str(tmp_path)})
    reader.stdin.close()
    reader.wait()
    assert proc.returncode in (0, 2) and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


# Every entry point: environment problems are errors, not tracebacks -------------------------------------------
@pytest.mark.slow
def test_unreadable_input_is_an_error_line(tmp_path):
    proc = run([*CLI, "segment", "--model", DEMO_MODEL, tmp_path / "missing.nii.gz", "-o", tmp_path / "o.nii.gz"], tmp_path)
    assert_error(proc, "does not exist")
    proc = run([*WORKER, "--model", tmp_path / "no-model", EXAMPLE_CT, "-o", tmp_path / "o.nii.gz"], tmp_path)
    assert_error(proc, "no-model")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["event"] == "error"


# Issue 18: input paths, the error category in every entry point ---------------------------------------------
def test_symlink_loop_input_is_an_input_error(tmp_path):
    """Issue 18: a symbolic link loop as the input ended in `internal error (RuntimeError: Symlink
    loop ...); please report it`, exit 1. Now an input error (exit 2) naming the path, in the
    command, the worker (JSON event with its category) and batch."""
    (tmp_path / "a.nii.gz").symlink_to("b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to("a.nii.gz")
    proc = run([*CLI, "segment", "--model", DEMO_MODEL, "a.nii.gz", "-o", "o.nii.gz"], tmp_path)
    assert_error(proc, r"a\.nii\.gz is a symbolic link loop")
    proc = run([*WORKER, "--model", DEMO_MODEL, "a.nii.gz", "-o", "o.nii.gz"], tmp_path)
    assert_error(proc, "symbolic link loop")
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert event["event"] == "error" and event["category"] == "input" and "symbolic link loop" in event["message"]
    proc = run([*CLI, "batch", "--model", DEMO_MODEL, "a.nii.gz", "-o", "out"], tmp_path)
    assert_error(proc, "symbolic link loop")
    proc = run([*CLI, "segment", "--model", DEMO_MODEL, EXAMPLE_CT, "-o", "a.nii.gz"], tmp_path)  # as the output
    assert_error(proc, r"a\.nii\.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_error_events_carry_the_category(tmp_path):
    """The worker's last line names the category from `errors.classify` (the Slicer module switches
    on it): model, output and request errors, each before any work."""
    cases = [
        ([*WORKER, "--model", tmp_path / "no-model", EXAMPLE_CT, "-o", "o.nii.gz"], "model"),
        ([*WORKER, "--model", DEMO_MODEL, EXAMPLE_CT, "-o", "o.png"], "output"),
        ([*WORKER, "--model", DEMO_MODEL, EXAMPLE_CT, "-o", "o.nii.gz", "--overlap", "1.5"], "input"),
        ([*WORKER, "--model", DEMO_MODEL, "--input", "flair=x.nii.gz", "-o", "o.nii.gz"], "input"),
    ]
    for cmd, category in cases:
        proc = run(cmd, tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        event = json.loads(proc.stdout.strip().splitlines()[-1])
        assert event["event"] == "error" and event["category"] == category, (cmd, event)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
