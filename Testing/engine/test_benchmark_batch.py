"""Helpers of benchmarks/batch.py (no benchmark is run, no time is asserted): the cohort builder and
the Markdown section, which must state the machine load when it exceeded the CPUs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import SimpleITK as sitk

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))
_spec = importlib.util.spec_from_file_location("benchmarks_batch", BENCHMARKS / "batch.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_make_cases_gives_distinct_real_ct_cases(tmp_path):
    paths = bench.make_cases(tmp_path / "cases", 5)
    assert [p.name for p in paths] == [f"case00{i}.nii.gz" for i in range(5)]
    sizes = [sitk.ReadImage(str(p)).GetSize() for p in paths]
    assert len(set(sizes[:4])) == 3 and sizes[4] == sizes[0]  # the flipped case keeps the size
    flipped = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[3])))
    assert (flipped[..., ::-1] == sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))).all()


def test_markdown_states_ratios_and_load():
    row = {"cases": 6, "model": "demo", "fast": True, "device": "cpu", "separate_s": 60.0, "batch_s": 20.0,
           "ratio": 3.0, "identical": True, "one_in_flight_s": 10.0, "two_in_flight_s": 8.0, "overlap_ratio": 1.25,
           "machine": "test cpu", "load_before": [float(os.cpu_count() or 1) + 5, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0]}
    text = bench.markdown([row])
    assert text.startswith(bench.SECTION) and "**3.00×**" in text and "1.25×" in text and "Caution" in text
    row["load_before"] = [0.1, 0.1, 0.1]
    assert "Caution" not in bench.markdown([row])
