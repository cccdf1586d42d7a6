"""Issue 18: the typed request validated once (`unetrpp.request`), the one bounded JSON reader
(`unetrpp.jsonio`), and the one input-name resolution (`Manifest.resolve_inputs`). Real manifests
of the bundled demo model and a BraTS-like package, real files and symlinks; no model is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unetrpp.errors import InputImageError, ManifestError, RequestError, classify
from unetrpp.jsonio import MAX_JSON_DEPTH, load_json, read_json_file
from unetrpp.manifest import read_manifest
from unetrpp.request import SegmentRequest, check_roi, options_from_json, parse_roi

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def demo():
    return read_manifest(DEMO_MODEL)


def test_request_resolves_aliases_and_validates_once(demo):
    name = demo.inputs[0].name
    alias = next((a for a in demo.inputs[0].aliases if a != name), name.upper())
    r = SegmentRequest.build(demo, {alias: str(EXAMPLE_CT)}, roi="-10,-20,-30,10,20,30", overlap=0.25, fast=True)
    assert dict(r.inputs) == {name: EXAMPLE_CT} and r.name_of(name) == alias
    assert r.roi == ((-10.0, -20.0, -30.0), (10.0, 20.0, 30.0)) and r.overlap == 0.25 and r.fast
    assert r.device == "auto" and r.backend == "auto" and not r.strict and not r.with_confidence
    assert r.sources() == [EXAMPLE_CT] and r.model == demo.name
    with pytest.raises(TypeError):
        r.inputs[name] = "other"  # read-only
    with pytest.raises(Exception):
        r.fast = False  # frozen
    assert SegmentRequest.build(demo, EXAMPLE_CT).inputs == {name: EXAMPLE_CT}  # one input, no name
    again = r.replace(fast=False)
    assert not again.fast and again.inputs == r.inputs
    with pytest.raises(RequestError, match="overlap"):
        r.replace(overlap=1.0)


@pytest.mark.parametrize("options, pattern", [
    ({"overlap": 1.0}, "overlap"), ({"overlap": float("nan")}, "overlap"), ({"overlap": True}, "overlap"),
    ({"roi": "1,2,3"}, "region of interest"), ({"roi": ((0, 0, 0), (0, 1, 1))}, "greater than its min"),
    ({"fast": "yes"}, "fast"), ({"device": "gpu"}, "unknown device"), ({"backend": "../x"}, "backend"),
    ({"series_uid": ""}, "series UID"), ({"bogus": 1}, "unknown option"), ({"strict": 1}, "strict"),
])
def test_bad_options_are_request_errors(demo, options, pattern):
    with pytest.raises(RequestError, match=pattern) as err:
        SegmentRequest.build(demo, EXAMPLE_CT, **options)
    assert classify(err.value).category == "input" and classify(err.value).exit_code == 2


def test_input_names_resolved_in_one_place(demo):
    name = demo.inputs[0].name
    with pytest.raises(InputImageError, match="has no input named 'flair'"):
        SegmentRequest.build(demo, {"flair": EXAMPLE_CT})
    with pytest.raises(InputImageError, match="no input given"):
        SegmentRequest.build(demo, {})
    with pytest.raises(InputImageError, match="given twice"):
        SegmentRequest.build(demo, {name: EXAMPLE_CT, name.upper(): EXAMPLE_CT})
    assert demo.resolve_inputs([name.upper()]) == {name.upper(): name}
    assert demo.input_lookup()[name.lower()] == name


def test_input_paths_checked_without_reading(demo, tmp_path):
    (tmp_path / "a.nii.gz").symlink_to("b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to("a.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to("nowhere.nii.gz")
    cases = {tmp_path / "a.nii.gz": "symbolic link loop", tmp_path / "missing.nii.gz": "does not exist",
             tmp_path / "dangling.nii.gz": "symbolic link to nowhere.nii.gz, which does not exist",
             tmp_path / "missing" / "x.nii.gz": "does not exist", "": "empty"}
    for path, pattern in cases.items():
        with pytest.raises(InputImageError, match=pattern) as err:
            SegmentRequest.build(demo, path)
        assert classify(err.value).category == "input"
    if os.geteuid() != 0:  # root enters any folder
        closed = tmp_path / "closed"
        closed.mkdir()
        (closed / "ct.nii.gz").write_bytes(b"x")
        closed.chmod(0)
        try:
            with pytest.raises(InputImageError, match="permission denied"):
                SegmentRequest.build(demo, closed / "ct.nii.gz")
        finally:
            closed.chmod(0o755)


def test_symlink_loop_runtime_error_is_classified_as_input(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(RuntimeError) as err:  # Python < 3.13: Path.resolve raises RuntimeError
        if sys.version_info >= (3, 13):
            raise RuntimeError(f"Symlink loop from {str(loop)!r}")
        loop.resolve()
    assert classify(err.value).category == "input" and "symbolic link loop" in classify(err.value).message


def test_roi_has_one_check():
    assert check_roi(None) is None
    assert parse_roi("1;2;3;4;5;6") == check_roi([[1, 2, 3], [4, 5, 6]]) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    for bad in ["abc", ((0, 0), (1, 1)), ((True, 0, 0), (1, 1, 1)), [[0, 0, 0]], "1,2,3,4,5,inf"]:
        with pytest.raises(RequestError, match="region of interest"):
            check_roi(bad)


def test_options_from_json_through_the_bounded_reader():
    assert options_from_json('{"fast": true, "overlap": 0.25, "roi": [[0,0,0],[1,1,1]]}')["roi"] == (
        (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert options_from_json("") == options_from_json(None) == options_from_json("{}")
    deep = "[" * 100_000 + "]" * 100_000
    for bad, pattern in [(deep, "levels deep"), ('{"fast": 1}', "fast"), ('{"overlap": "0.5"}', "overlap"),
                         ("[1]", "JSON object"), ('{"device": "cpu"}', "unknown option"), ("{", "not valid JSON"),
                         ('{"overlap": NaN}', "not valid JSON"), (b"\xff", "UTF-8"), ({"a": [[[[]]]]}, "unknown")]:
        with pytest.raises(RequestError, match=pattern):
            options_from_json(bad)


def test_one_bounded_json_reader(tmp_path):
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert load_json(ok, "x") is not None
    with pytest.raises(RequestError, match="levels deep"):
        load_json("[" + ok + "]", "x")
    with pytest.raises(ManifestError, match="larger than 10 bytes"):
        load_json("[" + " " * 20 + "]", "x", error=ManifestError, max_bytes=10)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 100}))
    with pytest.raises(RequestError, match="larger than 50 bytes"):
        read_json_file(big, max_bytes=50)
    with pytest.raises(RequestError, match="cannot read"):
        read_json_file(tmp_path / "missing.json")
    assert read_json_file(big)["x"] == "y" * 100


def test_request_module_is_torch_free():
    code = "import sys, unetrpp.request, unetrpp.jsonio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
