"""Helpers of benchmarks/segment.py (no benchmark is run, no time is asserted): the test-volume
builder, window planning, the Markdown section replacement and the per-stage memory sink."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))  # last, so that it shadows nothing; the scripts import `common`

import common  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmarks_segment", BENCHMARKS / "segment.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CT = "ct/example_ct_sm.nii.gz"


def test_parse_size():
    assert bench.parse_size("512x512x300") == (512, 512, 300)
    assert bench.parse_size("64×32×8") == (64, 32, 8)
    for bad in ("512x512", "0x1x1", "ax1x1"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_size(bad)


def test_make_volume_keeps_the_physical_extent(tmp_path, data_dir):
    src = sitk.ReadImage(str(data_dir / CT))  # 122x101x30 at 3 mm
    vol = bench.make_volume(data_dir / CT, (61, 50, 45), tmp_path / "v.nii.gz")
    out = sitk.ReadImage(vol["path"])
    assert out.GetSize() == (61, 50, 45) and vol["voxels"] == 61 * 50 * 45
    assert out.GetPixelID() == src.GetPixelID() and out.GetDirection() == src.GetDirection()

    def edges(img):  # physical positions of the outer voxel edges, LPS mm
        d = np.reshape(img.GetDirection(), (3, 3))
        half = np.array(img.GetSpacing()) / 2
        lo = np.array(img.GetOrigin()) - d @ half
        hi = np.array(img.TransformIndexToPhysicalPoint([s - 1 for s in img.GetSize()])) + d @ half
        return lo, hi

    for a, b in zip(edges(src), edges(out)):
        np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(vol["spacing_xyz"], [6.0, 6.06, 2.0], atol=1e-3)
    values = sitk.GetArrayViewFromImage(out)
    assert values.min() >= -1100 and values.max() <= 1207 and values.std() > 100  # still the CT


def test_window_plan_follows_the_model_plan():
    from unetrpp.manifest import Manifest
    from unetrpp.official_models import official_manifest

    data = official_manifest("synapse")  # plan 3 x 0.7578 x 0.7578 mm, patch 64x128x128
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    manifest = Manifest(data)
    vol = {"size_xyz": [512, 512, 300], "spacing_xyz": [0.7148, 0.5918, 0.3]}
    plan = bench.window_plan(vol, manifest, 0.5)
    assert plan["network_grid_zyx"] == [30, 400, 483]
    assert plan["windows"] == 1 * 6 * 7
    assert bench.window_plan(vol, manifest, 0.0)["windows"] == 1 * 4 * 4


def test_write_section_replaces_only_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Network forward pass\n\nkeep 1\n\n## Segmentation end to end\n\nold\n"
                   "| a |\n\n## Training\n\nkeep 2\n")
    common.write_section(doc, bench.SECTION, "## Segmentation end to end\n\nnew\n")
    assert doc.read_text() == ("# Benchmarks\n\n## Network forward pass\n\nkeep 1\n\n## Segmentation end to end\n\n"
                               "new\n\n## Training\n\nkeep 2\n")
    common.write_section(doc, "## Slicer module overhead", "## Slicer module overhead\n\nappended\n\n")
    assert doc.read_text().endswith("keep 2\n\n## Slicer module overhead\n\nappended\n")
    fresh = tmp_path / "new.md"
    common.write_section(fresh, bench.SECTION, "## Segmentation end to end\n\nx")
    assert fresh.read_text() == "# Benchmarks\n\n## Segmentation end to end\n\nx\n"


def test_stage_peaks_records_every_stage():
    from unetrpp.progress import Event

    sink = bench.StagePeaks()
    for stage in bench.STAGES:
        sink(Event("stage", stage=stage))
        sink(Event("progress", stage=stage, done=1, total=2))
    sink(Event("done"))
    assert list(sink.peaks) == list(bench.STAGES) and sink.current is None
    if common.peak_rss_mb() is not None:  # Linux
        assert all(v > 0 for v in sink.peaks.values())
