"""Issue 19: what the quality checks say on the shared volumes, and what they cost.

    python benchmarks/quality.py [--repeat 3] [--json out.json] [--cases ct,chest,...]

For each volume the demo model (Resources/models/demo-abdomen-ct) segments it through the one path
(`Segmenter.segment`, CPU, the package's defaults) with the checks, and again with the checks
replaced by no-ops (the same run without checks). Runs alternate (with, without, with, ...) so
machine load affects both alike; the added time is the ratio of the medians minus one, in wall-clock
and in process CPU time (all threads; less sensitive to other processes on a shared machine). The
time the checks themselves report (`timing_s.quality`) is printed beside it. Prints a Markdown table (docs/quality.md) of the verdicts.

Volumes: the example CT (the demo's training scan), the chest CT (pyradiomics lung1), the 20-slice
DICOM CT (another abdomen, 40 mm), brain MRI (pyradiomics brain1; a raw clinical T2), cardiac cine
MRI (ACDC frame, no stored geometry: 1.5625 x 1.5625 x 10 mm assumed), and the example CT stored
without its rescale (HU + 1024 as uint16, made here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "UNETRPlusPlus")]
DATA = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else ROOT.parent / "shared" / "data"


def volumes() -> dict[str, object]:
    from unetrpp.image import Image, read_image

    ct = read_image(DATA / "ct" / "example_ct_sm.nii.gz")
    out: dict[str, object] = {
        "ct": DATA / "ct" / "example_ct_sm.nii.gz",
        "chest": DATA / "ct_lung" / "lung1_image.nrrd",
        "slab": DATA / "ct_dicom" / "example_ct_dicom",
        "mr_brain": DATA / "mr_brain" / "pyradiomics" / "brain1_image.nrrd",
        "mr_t2": DATA / "mr_brain" / "raw_unregistered" / "TCGA-FG-6692-t2.nii.gz",
        "no_rescale": ct.with_array(np.clip(ct.array.astype(np.int32) + 1024, 0, None).astype(np.uint16)),
    }
    try:
        import h5py

        with h5py.File(DATA / "mr_cardiac" / "patient001_frame01.h5") as f:
            out["mr_cardiac"] = Image(np.asarray(f["image"], dtype=np.float32), (1.5625, 1.5625, 10.0), (0, 0, 0))
    except (ImportError, OSError):
        pass
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs with and without checks per timed volume")
    ap.add_argument("--timed", default="ct,chest", help="volumes whose added time is measured (the others: one run "
                    "with checks for the verdict table)")
    ap.add_argument("--cases", default="", help="comma-separated subset of the volumes")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()

    import torch

    import unetrpp.segmenter as segmenter
    from unetrpp import SegmentRequest, Segmenter

    torch.set_num_threads(max(1, torch.get_num_threads()))
    seg = Segmenter(ROOT / "Resources" / "models" / "demo-abdomen-ct", device="cpu")
    chosen = volumes()
    if args.cases:
        chosen = {k: v for k, v in chosen.items() if k in args.cases.split(",")}
    real = (segmenter.assess_inputs, segmenter.assess_result)
    off = (lambda images, manifest: [], lambda *a, **k: None)
    rows = []
    for name, source in chosen.items():
        request = SegmentRequest.build(seg.manifest, source)
        timed = name in args.timed.split(",")
        if timed:
            seg.segment(request)  # warm-up (caches, first-call costs)
        times = {True: [], False: []}
        cpu = {True: [], False: []}
        quality_s = []
        report = None
        for _ in range(args.repeat if timed else 1):
            for on in ((True, False) if timed else (True,)):
                segmenter.assess_inputs, segmenter.assess_result = real if on else off
                t, c = time.perf_counter(), time.process_time()
                result = seg.segment(request)
                times[on].append(time.perf_counter() - t)
                cpu[on].append(time.process_time() - c)
                if on:
                    report = result.report
                    quality_s.append(report["timing_s"].get("quality", 0.0))
        segmenter.assess_inputs, segmenter.assess_result = real
        with_s = statistics.median(times[True])
        without_s = statistics.median(times[False]) if times[False] else float("nan")
        cpu_with = statistics.median(cpu[True])
        cpu_without = statistics.median(cpu[False]) if cpu[False] else float("nan")
        q = report["quality"]
        row = {
            "volume": name, "status": q["status"],
            "checks": {c["name"] + (f" ({c['input']})" if "input" in c and len(seg.manifest.inputs) > 1 else ""): c["status"]
                       for c in q["checks"]},
            "doubtful": [s["name"] for s in report["segments"] if s.get("quality", {}).get("status") not in (None, "ok")],
            "partial": [s["name"] for s in report["segments"] if s.get("quality", {}).get("partial")],
            "segments": {s["name"]: {"volume_ml": round(s["volume_ml"], 1), **s.get("quality", {})} for s in report["segments"]},
            "seconds_with": round(with_s, 3), "seconds_without": round(without_s, 3),
            "added_ratio": round(with_s / without_s - 1, 4),
            "cpu_seconds_with": round(cpu_with, 3), "cpu_seconds_without": round(cpu_without, 3),
            "added_cpu_ratio": round(cpu_with / cpu_without - 1, 4), "quality_seconds": round(statistics.median(quality_s), 3),
            "quality_share": round(statistics.median(quality_s) / with_s, 4),
        }
        rows.append(row)
        print(f"{name}: {q['status']}; {with_s:.2f} s with checks, {without_s:.2f} s without "
              f"({row['added_ratio']:+.1%}); CPU time {cpu_with:.2f} s vs {cpu_without:.2f} s "
              f"({row['added_cpu_ratio']:+.1%}); checks themselves {row['quality_seconds']:.3f} s "
              f"({row['quality_share']:.1%} of the run)", flush=True)
    names = sorted({k for r in rows for k in r["checks"]}, key=lambda k: list(rows[0]["checks"]).index(k)
                   if k in rows[0]["checks"] else 99)
    print("\n| volume | run | " + " | ".join(names) + " | doubtful structures | partial (lower bound) |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    for r in rows:
        print(f"| {r['volume']} | **{r['status']}** | " + " | ".join(r["checks"].get(n, "-") for n in names)
              + f" | {', '.join(r['doubtful']) or '-'} | {', '.join(r['partial']) or '-'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
