#!/usr/bin/env python
"""int8 (explicit option, issue 21): speed of the int8 export against float32 and MONAI UNETR, and
its labels against float32 on real CTs.

    python benchmarks/int8.py network --runs 5        # synapse network, OpenVINO f32 vs int8 vs MONAI UNETR
    python benchmarks/int8.py labels                  # demo model: calibrate, segment f32 vs int8, Dice
    python benchmarks/int8.py spread                  # held-out agreement over calibration settings
    python benchmarks/int8.py e2e --package PKG       # Segmenter on the example CT, float32 vs int8

network: the full-size synapse network (deterministic weights of the parity tests), exported to
ONNX and quantized with `unetrpp.backends.quantize.quantize_onnx` on windows of the example CT cut
by the engine's own preprocessing (the official synapse plan); OpenVINO float32, OpenVINO int8,
ONNX Runtime int8 and MONAI UNETR (same patch) timed round-robin in one process, median of --runs
after one warm-up each; per-round ratios printed. Hold `flock /work/wt/bench.lock` while it runs.

labels: a copy of the bundled demo model (a trained small network) quantized with `unetrpp
quantize` on two CTs (the DICOM CT and the lung CT), then each scan and the held-out example CT
segmented by the Segmenter in OpenVINO at float32 and at int8 (no mirroring, as --fast): labels
equal, and Dice against the reference labels (TotalSegmentator's, mapped to the synapse ids) where
they exist on the same grid.

spread: the held-out agreement of several calibrations (window counts and scan sets), the spread
the test's bound is taken from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UNETRPlusPlus"))
DATA = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared")) / "data"
DEMO = REPO / "Resources" / "models" / "demo-abdomen-ct"
CT = DATA / "ct" / "example_ct_sm.nii.gz"
CALIBRATION = [DATA / "ct_dicom" / "example_ct_dicom", DATA / "ct_lung" / "lung1_image.nrrd"]
#: TotalSegmentator "total" id -> synapse/BTCV id (shared/data/SOURCES.md)
TS_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}


def _copy_demo(tmp: Path) -> Path:
    dst = tmp / "demo"
    shutil.copytree(DEMO, dst)
    return dst


# network ---------------------------------------------------------------------------------------
def network(runs: int, windows: int) -> dict:
    from monai.networks.nets import UNETR

    from unetrpp import save_package
    from unetrpp.backends.onnx_export import export_onnx
    from unetrpp.backends.quantize import _Reader, preprocessed_scans, quantize_onnx, window_positions
    from unetrpp.backends.runtimes import OnnxRuntimeNetwork, OpenVINONetwork
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights
    from unetrpp.official_models import official_manifest
    from unetrpp.package import load

    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    os.environ.setdefault("UNETRPP_CACHE", str(tmp / "cache"))
    net = set_deterministic_weights(build_network("synapse").eval())
    manifest = official_manifest("synapse", name="synapse-bench")
    manifest["architecture"] = net.config.to_dict()
    model = load(save_package(net, manifest, tmp / "pkg"))
    f32 = export_onnx(model.network, tmp / "f32.onnx")
    scans = preprocessed_scans(model, [CT])
    patch = tuple(net.config.patch_size)
    positions = window_positions([v for _, v in scans], patch, 0.5, windows)
    t0 = time.perf_counter()
    settings = quantize_onnx(f32, tmp / "int8.onnx", _Reader([v for _, v in scans], positions, patch, "image",
                                                             lambda e: None))
    quant_s = time.perf_counter() - t0
    shape = net.config.input_shape
    runners = {
        "openvino f32": OpenVINONetwork(f32, shape, threads=threads),
        "openvino int8": OpenVINONetwork(tmp / "int8.onnx", shape, threads=threads),
        "onnxruntime int8": OnnxRuntimeNetwork(tmp / "int8.onnx", threads=threads),
        "MONAI UNETR": UNETR(in_channels=1, out_channels=14, img_size=(64, 128, 128), feature_size=16,
                             hidden_size=768).eval(),
    }
    x = deterministic_input((1, *shape), dtype=torch.float32)
    from unetrpp.backends.quantize import cut_window

    real = torch.from_numpy(cut_window(scans[0][1], positions[len(positions) // 2][1], patch))
    outs = {}
    with torch.inference_mode():
        for name, r in runners.items():  # warm-up (and compilation)
            outs[name] = r(x if name != "MONAI UNETR" else torch.randn(1, 1, 64, 128, 128))
        ref = runners["openvino f32"](real)
        err = {n: float((runners[n](real) - ref).abs().max() / ref.abs().max()) for n in ("openvino int8", "onnxruntime int8")}
        agree = {n: float((runners[n](real).argmax(1) == ref.argmax(1)).float().mean()) for n in ("openvino int8", "onnxruntime int8")}
        times: dict[str, list[float]] = {n: [] for n in runners}
        for _ in range(runs):
            for name, r in runners.items():
                inp = x if name != "MONAI UNETR" else torch.randn(1, 1, 64, 128, 128)
                t = time.perf_counter()
                r(inp)
                times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(t) for n, t in times.items()}
    rounds = [{n: times[n][i] for n in runners} for i in range(runs)]
    return {
        "threads": threads, "runs": runs, "calibration_windows": len(positions), "quantize_s": round(quant_s, 1),
        "settings": settings, "median_s": med, "times_s": times,
        "int8_vs_f32_per_round": [r["openvino f32"] / r["openvino int8"] for r in rounds],
        "int8_vs_unetr_per_round": [r["MONAI UNETR"] / r["openvino int8"] for r in rounds],
        "f32_vs_unetr_per_round": [r["MONAI UNETR"] / r["openvino f32"] for r in rounds],
        "int8_logit_error_vs_f32": err, "int8_window_argmax_equal": agree,
        "bytes": {"f32": (tmp / "f32.onnx").stat().st_size, "int8": (tmp / "int8.onnx").stat().st_size},
        "load": os.getloadavg(),
    }


# labels ----------------------------------------------------------------------------------------
def _reference(path: Path, mapping: dict[int, int] | None) -> np.ndarray:
    from unetrpp.image import read_image

    arr = np.asarray(read_image(path).array)
    if mapping is None:
        return arr
    out = np.zeros_like(arr, dtype=np.uint8)
    for src, dst in mapping.items():
        out[arr == src] = dst
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    out = {}
    for v in sorted(set(np.unique(b).tolist()) - {0}):
        x, y = a == v, b == v
        out[str(v)] = round(float(2 * (x & y).sum() / max(int(x.sum() + y.sum()), 1)), 4)
    return out


def labels(windows: int) -> dict:
    from unetrpp.backends.quantize import label_agreement, quantize_package
    from unetrpp.package import load
    from unetrpp.request import SegmentRequest
    from unetrpp.segmenter import Segmenter

    tmp = Path(tempfile.mkdtemp(prefix="int8-labels-"))
    os.environ.setdefault("UNETRPP_CACHE", str(tmp / "cache"))
    pkg = _copy_demo(tmp)
    t0 = time.perf_counter()
    record = quantize_package(pkg, CALIBRATION, held_out=[CT], max_windows=windows)
    quant_s = time.perf_counter() - t0
    model = load(pkg)
    seg = Segmenter(model, device="cpu")
    rows = []
    for scan, ref in ((CT, DATA / "ct" / "example_seg.nii.gz"), *((c, None) for c in CALIBRATION)):
        lab = {}
        for precision in ("f32", "int8"):
            r = seg.run(SegmentRequest.build(model.manifest, scan, fast=True, backend="openvino", precision=precision,
                                             device="cpu"))
            lab[precision] = np.asarray(r.labelmap.array)
            if precision == "int8":
                assert r.report["backend"]["precision"] == "int8", r.report["backend"]
        row = {"scan": scan.name, "held_out": scan == CT, **label_agreement(lab["f32"], lab["int8"])}
        if ref is not None:
            reference = _reference(ref, TS_TO_BTCV)
            if reference.shape == lab["f32"].shape:
                organs = [1, 2, 3, 4, 6, 7, 8, 11]  # the 8 evaluated synapse organs
                for p in ("f32", "int8"):
                    d = _dice(lab[p], reference)
                    row[f"dice_reference_{p}"] = {k: v for k, v in d.items() if int(k) in organs}
                    row[f"mean_dice_reference_{p}"] = round(float(np.mean(list(row[f"dice_reference_{p}"].values()))), 4)
        rows.append(row)
    return {"quantize_s": round(quant_s, 1), "record_agreement": record["agreement"], "rows": rows,
            "load": os.getloadavg()}


def spread() -> dict:
    from unetrpp.backends.quantize import quantize_package

    tmp = Path(tempfile.mkdtemp(prefix="int8-spread-"))
    os.environ.setdefault("UNETRPP_CACHE", str(tmp / "cache"))
    settings = [([CALIBRATION[0]], 8), ([CALIBRATION[0]], 32), ([CALIBRATION[1]], 8), ([CALIBRATION[1]], 32),
                (CALIBRATION, 16)]
    out = []
    for scans, windows in settings:
        pkg = tmp / f"demo-{len(out)}"
        shutil.copytree(DEMO, pkg)
        rec = quantize_package(pkg, scans, held_out=[CT], max_windows=windows)
        a = rec["agreement"]
        out.append({"calibration": [s.name for s in scans], "windows": windows,
                    "held_out_labels_equal": a["held_out_min_labels_equal"],
                    "held_out_foreground_equal": a["held_out"][0]["foreground_equal"],
                    "calibration_labels_equal": a["calibration_min_labels_equal"]})
        print(json.dumps(out[-1]), flush=True)
        shutil.rmtree(pkg)
    vals = [r["held_out_labels_equal"] for r in out]
    return {"runs": out, "held_out_min": min(vals), "held_out_mean": statistics.mean(vals),
            "held_out_stdev": statistics.pstdev(vals)}


def e2e(package: Path, runs: int) -> dict:
    """`unetrpp segment`'s engine work (Segmenter.run, OpenVINO) on the example CT at float32 and
    int8, with and without mirroring, round-robin after one warm-up each (hold the bench lock)."""
    from unetrpp.package import load
    from unetrpp.request import SegmentRequest
    from unetrpp.segmenter import Segmenter

    model = load(package)
    seg = Segmenter(model, device="cpu")
    cases = [(p, fast) for fast in (True, False) for p in ("f32", "int8")]
    req = {c: SegmentRequest.build(model.manifest, CT, fast=c[1], backend="openvino", precision=c[0], device="cpu")
           for c in cases}
    for c in cases:
        seg.run(req[c])
    times: dict = {c: {"total": [], "predict": []} for c in cases}
    for _ in range(runs):
        for c in cases:
            r = seg.run(req[c])
            times[c]["total"].append(r.report["timing_s"]["total"])
            times[c]["predict"].append(r.report["timing_s"]["predict"])
    out = {}
    for c in cases:
        name = f"{c[0]} {'fast' if c[1] else 'mirrored'}"
        out[name] = {k: {"median": statistics.median(v), "runs": v} for k, v in times[c].items()}
    for mode in ("fast", "mirrored"):
        a, b = times[("f32", mode == "fast")]["predict"], times[("int8", mode == "fast")]["predict"]
        out[f"int8 speed-up, predict, {mode}, per round"] = [x / y for x, y in zip(a, b)]
    out["load"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("network", "labels", "spread", "e2e"))
    p.add_argument("--package", type=Path, help="e2e: a package folder with an int8 export")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--windows", type=int, default=32, help="calibration windows")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    result = {"network": lambda: network(args.runs, min(args.windows, 16)), "labels": lambda: labels(args.windows),
              "spread": spread, "e2e": lambda: e2e(args.package, args.runs)}[args.what]()
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
