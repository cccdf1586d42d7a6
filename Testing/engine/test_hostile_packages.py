"""Issue 12, hostile model packages: strings from a package are restricted by the manifest schema
(one line, no control characters or bidirectional overrides, bounded length; segment names and
terminology codes printable ASCII without the separators of .seg.nrrd and Slicer terminology
strings) and checked again by the .seg.nrrd writer, so a label name can never inject header lines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unetrpp.errors import ManifestError, UnetrppError
from unetrpp.image import read_image
from unetrpp.manifest import Manifest, validate_manifest
from unetrpp.segmentation import write_seg_nrrd

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"
CLI = [sys.executable, "-m", "unetrpp"]


def demo_manifest() -> dict:
    return json.loads((DEMO_MODEL / "model.json").read_text())


def hostile_copy(tmp_path: Path, change) -> Path:
    """The demo package with its manifest changed (the weights and their SHA256 untouched)."""
    pkg = tmp_path / "hostile-pkg"
    shutil.copytree(DEMO_MODEL, pkg)
    data = demo_manifest()
    change(data)
    (pkg / "model.json").write_text(json.dumps(data))
    return pkg


def nrrd_header(path: Path) -> list[str]:
    head = path.read_bytes().split(b"\n\n", 1)[0]
    return head.decode("ascii").splitlines()


INJECTION = "spleen\nspace origin: (1000,1000,1000)"

BAD_STRINGS = {
    "label name with a header line": (("labels", 0, "name"), INJECTION),
    "label name with a trailing newline": (("labels", 0, "name"), "spleen\n"),
    "label name with a backslash escape": (("labels", 0, "name"), "spleen\\nspace origin: (1,1,1)"),
    "label name with a carriage return": (("labels", 0, "name"), "spleen\rx"),
    "label name not ASCII (pynrrd writes ASCII headers)": (("labels", 0, "name"), "Milz \u00e4"),
    "label name of 65 characters (DICOM LO)": (("labels", 0, "name"), "x" * 65),
    "terminology meaning of 65 characters (DICOM LO)": (("labels", 0, "terminology", "type", "meaning"), "m" * 65),
    "terminology meaning with a tag separator": (("labels", 0, "terminology", "type", "meaning"),
                                                 "Spleen|Segmentation.Status:completed"),
    "terminology code with a field separator": (("labels", 0, "terminology", "type", "code"), "78961009^x"),
    "terminology scheme with an entry separator": (("labels", 0, "terminology", "category", "scheme"), "SCT~x"),
    "model name with a trailing newline": (("name",), "demo-abdomen-ct\n"),
    "version with a trailing newline": (("version",), "1.0.0\n"),
    "title with a terminal escape": (("title",), "demo \x1b[2J\x1b[31mOK"),
    "title with a bidirectional override": (("title",), "demo \u202etxt.exe"),
    "title of 513 characters": (("title",), "t" * 513),
    "input name with a newline": (("inputs", 0, "name"), "ct\n"),
    "input alias with a NUL": (("inputs", 0, "aliases"), ["ct\x00"]),
    "description with an escape": (("description",), "line\n\x1b]0;title\x07"),
    "provenance notes with a NUL": (("provenance", "notes"), "a\x00b"),
    "label value above 65535": (("labels", 0, "value"), 70000),
    "orientation code with a trailing newline": (("plan", "orientation"), "LPS\n"),
}


def _set(data: dict, where: tuple, value) -> None:
    for key in where[:-1]:
        data = data[key]
    data[where[-1]] = value


@pytest.mark.parametrize("case", BAD_STRINGS)
def test_schema_refuses_hostile_strings(case):
    where, value = BAD_STRINGS[case]
    data = demo_manifest()
    _set(data, where, value)
    field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where).lstrip(".")
    with pytest.raises(ManifestError, match=re.escape(f"field '{field}")):
        validate_manifest(data)


def test_schema_keeps_ordinary_text():
    data = demo_manifest()
    data["description"] = "Two lines\nand a\ttab are fine in free text."
    data["labels"][0]["name"] = "spleen (organ) [left-sided], 2nd: #1 - a/b"
    data["labels"][0]["terminology"]["type"]["meaning"] = "Spleen (body structure), left; 'x' #2"
    data["title"] = "Démo: Milz, Leber (Unicode is fine outside .seg.nrrd headers)"
    validate_manifest(data)


def test_cli_refuses_header_injection_before_any_work(tmp_path):
    """Issue 12 case 13: a label name with a newline injected a second `space origin` into the
    .seg.nrrd header and the run reported success."""
    pkg = hostile_copy(tmp_path, lambda d: _set(d, ("labels", 0, "name"), INJECTION))
    out = tmp_path / "out.seg.nrrd"
    proc = subprocess.run([*CLI, "segment", "--model", str(pkg), str(EXAMPLE_CT), "-o", str(out), "--fast",
                           "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"^error: .*field 'labels\[0\]\.name'", proc.stderr.strip().splitlines()[-1]), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile-pkg"]


def test_writer_checks_every_header_string(tmp_path):
    """The .seg.nrrd writer does not rely on the schema alone: a manifest changed after validation
    is refused before a byte is written."""
    labelmap = read_image(EXAMPLE_CT)
    labelmap = labelmap.with_array((labelmap.array > 200).astype("uint8"))
    for where, value in ((("labels", 0, "name"), INJECTION),
                         (("labels", 0, "terminology", "type", "meaning"), "Spleen|Segmentation.Status:completed")):
        manifest = Manifest(demo_manifest())
        _set(manifest.data, where, value)
        with pytest.raises(UnetrppError, match="cannot be written into a .seg.nrrd header"):
            write_seg_nrrd(labelmap, manifest, tmp_path / "x.seg.nrrd")
        assert list(tmp_path.iterdir()) == []


def test_written_header_holds_exactly_one_line_per_field(tmp_path):
    labelmap = read_image(EXAMPLE_CT)
    labelmap = labelmap.with_array((labelmap.array > 200).astype("uint8"))
    data = demo_manifest()
    data["labels"][0]["name"] = "spleen: (a) [b] {c} #1"
    path = write_seg_nrrd(labelmap, Manifest(data), tmp_path / "x.seg.nrrd")
    lines = nrrd_header(path)
    assert sum(line.startswith("space origin:") for line in lines) == 1
    assert "Segment0_Name:=spleen: (a) [b] {c} #1" in lines
    n_segments = len([l for l in data["labels"]])
    assert len([l for l in lines if re.match(r"Segment\d+_Name:=", l)]) == n_segments
    for line in lines[1:]:
        assert line.startswith("#") or re.match(r"^[A-Za-z0-9_. ]+:=?", line), line
