"""Quality where results are read (issue 19 item 4): segment descriptions in the .seg.nrrd."""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import pytest

from unetrpp.image import Image, read_image
from unetrpp.manifest import read_manifest
from unetrpp.segmentation import write_seg_nrrd

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "Resources" / "models" / "demo-abdomen-ct"


def test_seg_nrrd_segments_carry_quality_tags(tmp_path):
    import slicerio

    m = read_manifest(DEMO)
    a = np.zeros((4, 5, 6), np.uint8)
    a[0, 1:3, 1:3] = 6
    a[2, 2:4, 2:4] = 1
    labelmap = Image(a, (1.0, 1.0, 1.0), (0, 0, 0))
    labelmap.meta["segment_quality"] = {
        6: {"status": "review", "reasons": ["uncertain: mean entropy 0.35 inside | odd \\ text"], "partial": True},
        1: {"status": "ok", "reasons": [], "partial": False},
    }
    path = write_seg_nrrd(labelmap, m, tmp_path / "x.seg.nrrd")
    segs = {s["name"]: s for s in slicerio.read_segmentation(str(path), skip_voxels=True)["segments"]}
    liver = segs["liver"]["tags"]
    assert liver["UNETRPlusPlus.Quality"] == "review" and segs["liver"]["status"] == "flagged"
    assert liver["UNETRPlusPlus.QualityReasons"] == "uncertain: mean entropy 0.35 inside ? odd ? text"
    assert "UNETRPlusPlus.VolumeIsLowerBound" in liver
    spleen = segs["spleen"]
    assert spleen["tags"]["UNETRPlusPlus.Quality"] == "ok" and "status" not in spleen
    assert "terminology" in spleen or "TerminologyEntry" in str(spleen)
    assert "UNETRPlusPlus.Quality" not in str(segs["gallbladder"])  # no entry: no tags


# Wiring: the one path (Segmenter.segment), CLI, batch ----------------------------------------------
DATA = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else ROOT.parent / "shared" / "data"
MRI = DATA / "mr_brain" / "pyradiomics" / "brain1_image.nrrd"


def _cli(*args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "UNETRPlusPlus"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "unetrpp", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def demo_segmenter():
    from unetrpp.segmenter import Segmenter

    return Segmenter(DEMO, device="cpu")


def test_segment_reports_quality_with_the_issue_keys(demo_segmenter, tmp_path):
    from unetrpp.outputs import OutputPlan
    from unetrpp.quality import outputs  # noqa: F401  (registers the extra kinds)
    from unetrpp.request import SegmentRequest

    request = SegmentRequest.build(demo_segmenter.manifest, MRI, fast=True)
    plan = OutputPlan.create(tmp_path / "mri.seg.nrrd", request=request,
                             extra={"uncertainty": tmp_path / "u.nii.gz", "report_html": tmp_path / "r.html"})
    result = demo_segmenter.segment(request, plan)
    q = result.report["quality"]
    assert set(q) == {"status", "checks"} and q["status"] == "fail"
    modality = next(c for c in q["checks"] if c["name"] == "modality")
    assert modality["status"] == "fail" and {"name", "status", "message"} <= set(modality)
    for seg in result.report["segments"]:
        assert set(seg["quality"]) == {"status", "reasons", "uncertainty", "partial"}
    assert any(s["quality"]["status"] != "ok" for s in result.report["segments"])  # doubtful structures named
    assert result.report["timing_s"]["quality"] >= 0
    unc = read_image(tmp_path / "u.nii.gz")
    assert unc.array.shape == result.labelmap.array.shape and 0 < unc.array.max() <= 100
    assert "<h1>Segmentation report" in (tmp_path / "r.html").read_text()
    import slicerio

    tags = [s.get("tags", {}) for s in slicerio.read_segmentation(str(tmp_path / "mri.seg.nrrd"), skip_voxels=True)["segments"]]
    assert all("UNETRPlusPlus.Quality" in t for t in tags)


def test_strict_refuses_a_failed_input_check_with_exit_3(tmp_path):
    proc = _cli("segment", "--model", DEMO, MRI, "-o", tmp_path / "x.seg.nrrd", "--strict", "--device", "cpu",
                "--progress", "json")
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and last["category"] == "quality" and "MRI" in last["message"]
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_cli_table_shows_status_reasons_and_lower_bounds(tmp_path):
    ct = DATA / "ct" / "example_ct_sm.nii.gz"
    proc = _cli("segment", "--model", DEMO, ct, "-o", tmp_path / "ct.seg.nrrd", "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(l for l in lines if l.lstrip().startswith("label"))
    assert header.rstrip().endswith("quality")
    liver = next(l for l in lines if " liver " in l)
    assert ">=" in liver and liver.rstrip().endswith("ok")  # the example CT cuts the liver: a lower bound, still ok
    assert "quality: ok" in proc.stdout


def test_batch_summary_has_quality_columns(tmp_path):
    import csv

    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "brain.nrrd").symlink_to(MRI)
    proc = _cli("batch", cases, "--model", DEMO, "-o", tmp_path / "out", "--device", "cpu", "--fast", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["quality"] == "fail" and "modality" in rows[0]["quality_reasons"]
    assert list(rows[0])[6:8] == ["quality", "quality_reasons"]
