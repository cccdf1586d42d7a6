#!/usr/bin/env python
"""Segmentation end to end: time and peak memory per stage (read, preprocess, predict,
postprocess, write) of `unetrpp.pipeline.segment` on a CT at several sizes, and the same network
input through MONAI's `sliding_window_inference` with SwinUNETR as the peer.

    python benchmarks/segment.py --estimate                    # window counts and projected time only
    python benchmarks/segment.py                               # 128x128x75 256x256x150 512x512x300, CPU
    python benchmarks/segment.py --sizes 128x128x75 --no-peer  # quick check
    python benchmarks/segment.py --json seg.json --markdown docs/benchmarks.md

Volumes: the shared real CT (shared/data/ct/example_ct_sm.nii.gz, 122x101x30 at 3 mm) resampled
with SimpleITK (linear) to each size (x*y*z, ITK order) over the same physical extent, written as
.nii.gz into a temporary folder, so the read stage really reads and decompresses a file. The
model plan resamples every input to its fixed target spacing, so the network grid and the
number of sliding windows are the same at every size (they follow the physical extent): the
sizes show how the non-network stages grow with the number of input voxels, and the largest
(512x512x300, about 78 M voxels) is the full-size case. The CT covers 90 mm in z, less than a
whole abdomen, so the network does less work than on a clinical scan: the non-network share
measured here is an upper bound for a larger field of view.

Model: by default the full-size `synapse` network (the official Synapse architecture, 64x128x128
patch) with deterministic weights (`unetrpp.network.deterministic`; real compute, meaningless
labels), saved as a model package with the official synapse manifest (plan spacing 3 x 0.758 x
0.758 mm, CT normalisation, 13 labels); `--model` takes another package. Defaults: CPU, the
manifest's overlap (0.5) and `--fast`: no mirroring, as a CPU user would run it (mirroring costs
8x the network time; `--no-fast` switches it on for both networks). Output: a Slicer `.seg.nrrd`.

Method: every size runs in a fresh process (`--one`) that loads the package (timed apart as
"load"), then calls `segment()`. Times per stage are the pipeline's own `timing_s` report. Peak
resident set size (RSS) per stage: a progress sink receives the pipeline's "stage" events; at
each stage start it trims glibc's heap (malloc_trim) and resets the kernel's high-water mark
(`5` into /proc/self/clear_refs, Linux >= 4.0), and at the next stage start (or the "done" event
after the write stage) it reads the mark (VmHWM in /proc/self/status). So each stage's number is
the true peak RSS of the whole process during that stage (framework, weights and the data held
over from earlier stages included), not sampled. The sink's own work happens between the
pipeline's timers. The process peak is the largest of these.

Peer: on the largest size, in the same process after the pipeline, the same preprocessed array
(re-made untimed) goes through MONAI's `sliding_window_inference` (roi = the model's patch,
sw_batch_size 1, the same overlap, mode "gaussian", sigma_scale 0.125, softmax per window, the
same flips) with `SwinUNETR(in_channels=1, out_channels=14, feature_size=48)` (random weights:
cost only), float32 under inference_mode. Neither side is warmed up (the pipeline's predict
stage includes building the fast inference path). The ratio is SwinUNETR's sliding-window time
over the pipeline's predict stage. Window counts differ slightly: MONAI places windows at a fixed
interval, nnU-Net spreads them evenly.

Goals (issues 4 and 14): peak RSS below 6 GB at 512x512x300; the non-network stages together at
most 10 % of the total at every size; cost linear in volume size (the non-network time's growth
exponent between successive sizes, log(t2/t1) / log(v2/v1), near 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "UNETRPlusPlus") not in sys.path:
    sys.path.append(str(REPO / "UNETRPlusPlus"))  # when the project is not installed

from common import (  # noqa: E402  (benchmarks/common.py: the script's folder is on sys.path)
    cpu_model,
    load_average,
    peak_rss_mb,
    reset_peak_rss,
    rss_mb,
    synapse_package,
    trim_heap,
    write_section,
)

SECTION = "## Segmentation end to end"
SHARED = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared"))
DEFAULT_SOURCE = SHARED / "data" / "ct" / "example_ct_sm.nii.gz"
DEFAULT_SIZES = ["128x128x75", "256x256x150", "512x512x300"]
STAGES = ("read", "preprocess", "predict", "postprocess", "write")
NON_NETWORK = ("read", "preprocess", "postprocess", "write")
GOAL_RSS_MB = 6 * 1024
GOAL_RSS_BOUNDED_MB = 2.5 * 1024  # issue 21 item 3 (bounded memory): the full abdominal CT
GOAL_SHARE = 0.10
log = logging.getLogger("benchmarks.segment")


# Volumes ------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int, int]:
    """"512x512x300" -> (512, 512, 300): x, y, z voxels (ITK order)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"size {text!r}: give three positive whole numbers as XxYxZ, e.g. 512x512x300")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def size_text(size: tuple[int, ...]) -> str:
    return "×".join(map(str, size))


def make_volume(source: Path, size_xyz: tuple[int, int, int], dst: Path,
                field_of_view_mm: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Resample `source` (linear) to `size_xyz` voxels over the same physical extent (voxel edges
    kept: spacing = extent / size, origin moved by half the change of spacing along the image
    axes), keep its pixel type and direction, and write it to `dst`. Returns its geometry.
    With `field_of_view_mm` (x, y, z) the volume covers that extent instead, centred on the
    source, and what lies outside the source is its background (air for a CT): a full-size
    scan's field of view, so that the network's work is that of a full-size scan too."""
    import numpy as np
    import SimpleITK as sitk

    img = sitk.ReadImage(str(source))
    old_size = np.array(img.GetSize(), float)
    old_spacing = np.array(img.GetSpacing(), float)
    extent = old_size * old_spacing if field_of_view_mm is None else np.array(field_of_view_mm, float)
    spacing = extent / np.array(size_xyz, float)
    direction = np.array(img.GetDirection(), float).reshape(3, 3)
    # first voxel centre = source centre - half the extent + half a voxel (along the image axes)
    centre = np.array(img.GetOrigin(), float) + direction @ ((old_size - 1) * old_spacing / 2)
    origin = centre + direction @ (-extent / 2 + spacing / 2)
    background = float(sitk.GetArrayViewFromImage(img).min())
    out = sitk.Resample(img, [int(s) for s in size_xyz], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                        spacing.tolist(), img.GetDirection(), background, img.GetPixelID(), True)
    sitk.WriteImage(out, str(dst), True)
    return {"path": str(dst), "size_xyz": list(size_xyz), "spacing_xyz": [round(float(s), 4) for s in spacing],
            "voxels": int(np.prod(size_xyz)), "file_mb": round(dst.stat().st_size / 2**20, 2)}


def window_plan(volume: dict[str, Any], manifest: Any, overlap: float) -> dict[str, Any]:
    """Network grid (z, y, x) and window count that the model's plan gives this volume, from its
    geometry alone (before the crop to non-zero voxels, which a CT hardly changes)."""
    import numpy as np

    from unetrpp.predict import padding_for, window_starts

    size_zyx = np.array(volume["size_xyz"][::-1], float)
    spacing_zyx = np.array(volume["spacing_xyz"][::-1], float)
    target = np.array(manifest.plan["target_spacing"], float)
    grid = [int(max(n, 1)) for n in np.round(size_zyx * spacing_zyx / target)]
    patch = tuple(manifest.network_config.patch_size)
    padded, _ = padding_for(grid, patch)
    windows = math.prod(len(s) for s in window_starts(padded, patch, overlap))
    return {"network_grid_zyx": grid, "windows": windows}


# One size in a fresh process ------------------------------------------------------------------------
class StagePeaks:
    """Progress sink that records the peak RSS of every pipeline stage (see the module docstring)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float | None] = {}
        self.current: str | None = None
        self.exact = True

    def start(self, name: str) -> None:
        self.stop()
        trim_heap()
        self.exact = reset_peak_rss() and self.exact
        self.current = name

    def stop(self) -> None:
        if self.current is not None:
            self.peaks[self.current] = peak_rss_mb()
            self.current = None

    def __call__(self, event: Any) -> None:
        if event.event == "stage" and event.stage:
            self.start(event.stage)
        elif event.event == "done":
            self.stop()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from unetrpp import load
    from unetrpp.pipeline import SegmentOptions, segment
    from unetrpp.predict import padding_for, window_starts

    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    model = load(args.model)
    load_s = time.perf_counter() - t
    backend_report: dict[str, Any] = {}
    peaks = StagePeaks()
    peaks.peaks["load"] = peak_rss_mb()  # since the process started: imports and the package
    trim_heap()
    baseline = rss_mb()
    out = Path(args.workdir) / f"out-{Path(args.one).name.split('.')[0]}{args.output_format}"
    result = segment(model, args.one, SegmentOptions(
        output=out, overlap=args.overlap, fast=args.fast, device=args.device, overwrite=True, sink=peaks,
        backend=args.backend or "auto"))
    peaks.stop()
    report = result.report
    grid = report["preprocessing"]["network_shape_zyx"]
    patch = tuple(model.manifest.network_config.patch_size)
    row: dict[str, Any] = {
        "timing_s": {k: report["timing_s"][k] for k in (*STAGES, "total")},
        "load_model_s": round(load_s, 3),
        "rss_after_load_mb": baseline,
        "peak_rss_mb": peaks.peaks,
        "peak_rss_exact": peaks.exact,
        "process_peak_rss_mb": max((v for v in peaks.peaks.values() if v is not None), default=None),
        "network_grid_zyx": grid,
        "windows": math.prod(len(s) for s in window_starts(padding_for(grid, patch)[0], patch, report["options"]["overlap"])),
        "overlap": report["options"]["overlap"],
        "mirror_axes": report["options"]["mirror_axes"],
        "output_mb": round(out.stat().st_size / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
        "backend": report.get("backend") or backend_report.get("backend"),
        "stitch_dtype": (report.get("backend") or {}).get("stitch_dtype"),
    }
    manifest = model.manifest
    del result, model  # the peer's memory is measured without UNETR++ in the process
    gc.collect()
    if args.peer:
        row["peer"] = run_peer(manifest, args, row)
    return row


def run_peer(manifest: Any, args: argparse.Namespace, row: dict[str, Any]) -> dict[str, Any]:
    """SwinUNETR through MONAI's sliding_window_inference on the same preprocessed array."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SwinUNETR

    from unetrpp.image import read_image
    from unetrpp.predict import mirror_flips
    from unetrpp.preprocess import preprocess

    volume, _ = preprocess({manifest.inputs[0].name: read_image(args.one)}, manifest)
    x = torch.from_numpy(volume)[None]
    del volume
    torch.manual_seed(0)
    cfg = manifest.network_config
    net = SwinUNETR(in_channels=cfg.in_channels, out_channels=cfg.out_channels, feature_size=48).eval()
    flips = mirror_flips(row["mirror_axes"])
    windows = 0

    def predictor(w: torch.Tensor) -> torch.Tensor:
        nonlocal windows
        windows += w.shape[0]
        total = None
        for dims in flips:
            p = torch.softmax(net(torch.flip(w, dims) if dims else w), dim=1)
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total.add_(p)
        return total / len(flips)

    trim_heap()
    before = rss_mb()
    reset_peak_rss()
    t = time.perf_counter()
    with torch.inference_mode():
        probabilities = sliding_window_inference(
            x, roi_size=tuple(cfg.patch_size), sw_batch_size=1, predictor=predictor, overlap=row["overlap"],
            mode="gaussian", sigma_scale=0.125, device=torch.device("cpu"), sw_device=torch.device(args.device))
    seconds = time.perf_counter() - t
    peak = peak_rss_mb()
    assert tuple(probabilities.shape[2:]) == tuple(x.shape[2:])
    return {"network": "SwinUNETR(feature_size=48)", "roi": list(cfg.patch_size), "windows": windows,
            "seconds": round(seconds, 3), "peak_rss_mb": peak, "rss_before_mb": before,
            "ratio_to_unetrpp_predict": round(seconds / row["timing_s"]["predict"], 3)}


# Estimate ---------------------------------------------------------------------------------------------
def seconds_per_window(model: Any, args: argparse.Namespace, peer: bool) -> dict[str, float]:
    """Time of one window (second of two runs) for UNETR++ through the engine's sliding window
    and, with `peer`, SwinUNETR through MONAI's, on a patch-sized input."""
    import torch

    from unetrpp.predict import predict_probabilities

    cfg = model.manifest.network_config
    patch = tuple(cfg.patch_size)
    x = torch.randn(cfg.in_channels, *patch)
    mirror = () if args.fast else tuple(model.manifest.inference.get("mirror_axes", (0, 1, 2)))
    out: dict[str, float] = {}
    for _ in range(2):
        t = time.perf_counter()
        predict_probabilities(model.network, x, patch_size=patch, mirror_axes=mirror, device=args.device)
        out["unetrpp"] = time.perf_counter() - t
    if peer:
        from monai.networks.nets import SwinUNETR

        torch.manual_seed(0)
        net = SwinUNETR(in_channels=cfg.in_channels, out_channels=cfg.out_channels, feature_size=48).eval().to(args.device)
        flips = max(1, 2 ** len(mirror))
        with torch.inference_mode():
            for _ in range(2):
                t = time.perf_counter()
                net(x[None].to(args.device))
                out["peer"] = (time.perf_counter() - t) * flips
    return out


# Report ---------------------------------------------------------------------------------------------
def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "device": device,
        "platform": platform.platform(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def non_network_s(row: dict[str, Any]) -> float:
    return sum(row["timing_s"][k] for k in NON_NETWORK)


def scaling(rows: list[dict[str, Any]]) -> list[float]:
    """Growth exponent of the non-network time between successive sizes: 1 = linear."""
    out = []
    for a, b in zip(rows, rows[1:]):
        ta, tb = non_network_s(a), non_network_s(b)
        va, vb = a["volume"]["voxels"], b["volume"]["voxels"]
        out.append(math.log(tb / ta) / math.log(vb / va) if ta > 0 and tb > 0 and vb != va else float("nan"))
    return out


def command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/segment.py"]
    if list(args.sizes) != [parse_size(s) for s in DEFAULT_SIZES]:
        parts.append("--sizes " + " ".join("x".join(map(str, s)) for s in args.sizes))
    if args.source.resolve() != DEFAULT_SOURCE.resolve():
        parts.append(f"--source {args.source}")
    if args.model_given:
        parts.append(f"--model {args.model_given}")
    if args.overlap is not None:
        parts.append(f"--overlap {args.overlap}")
    if not args.fast:
        parts.append("--no-fast")
    if args.no_peer:
        parts.append("--no-peer")
    if args.device != "cpu":
        parts.append(f"--device {args.device}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.markdown:
        parts.append(f"--markdown {args.markdown}")
    return " ".join(parts)


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    m, rows = result["machine"], result["rows"]
    first = rows[0] if rows else {}
    mode = "no mirroring (`--fast`)" if args.fast else "mirroring on all three axes (8 flips)"
    load = [", ".join(f"{x:.2f}" for x in v) if v else "?" for v in
            (result.get("load_average_before"), result.get("load_average_after"))]
    lines = [
        SECTION,
        "",
        "Goals (issues 4 and 14): peak RSS below 6 GB for a 512×512×300 CT; every non-network stage "
        "(read, preprocess, postprocess, write) together at most 10 % of the total at every size; cost "
        "linear in volume size. Script: `benchmarks/segment.py` (its docstring gives the method: a fresh "
        "process per size, the pipeline's own stage timers, per-stage peak RSS from the kernel's "
        "high-water mark reset at every stage start; `--markdown` replaces only this section).",
        "",
        f"Measured with `{command_line(args)}` on {m['cpu']}, {m['logical_cpus']} logical CPUs, "
        f"{m.get('memory_gb', '?')} GB, torch {m['torch']} ({first.get('torch_threads', m['torch_threads'])} threads), "
        f"MONAI {m.get('monai', '-')}, Python {m['python']}, device `{m['device']}`; load average "
        f"(1, 5, 15 min) {load[0]} before and {load[1]} after the run.",
        "",
        f"Input: the CT `{Path(args.source).name}` resampled (linear) to each size over "
        + ("its physical extent" if not args.field_of_view else
           f"a {' × '.join(f'{v:g}' for v in args.field_of_view)} mm field of view (the CT centred, air around it)")
        + f", read from .nii.gz. Model: {result['model']}; overlap "
        f"{first.get('overlap', args.overlap)}, {mode}, output `.seg.nrrd`. The plan resamples every "
        "size to the same network grid, so the network's work is the same at every size and only the "
        "non-network stages grow with the input.",
        "",
        "| input (x×y×z) | voxels | network grid (z×y×x) | windows | read (s) | preprocess (s) | predict (s) "
        "| postprocess (s) | write (s) | total (s) | non-network share | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timing_s"]
        lines.append(
            f"| {size_text(r['volume']['size_xyz'])} | {r['volume']['voxels'] / 1e6:.1f} M | "
            f"{size_text(r['network_grid_zyx'])} | {r['windows']} | {t['read']:.2f} | {t['preprocess']:.2f} | "
            f"{t['predict']:.1f} | {t['postprocess']:.2f} | {t['write']:.2f} | {t['total']:.1f} | "
            f"{100 * non_network_s(r) / t['total']:.1f} % | {r['process_peak_rss_mb'] / 1024:.2f} GB |")
    lines += [
        "",
        "Peak RSS per stage (MB; the whole process, framework and weights included; \"after load\" is "
        "the resident set once the package is loaded):",
        "",
        "| input (x×y×z) | load (peak) | after load | read | preprocess | predict | postprocess | write |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["peak_rss_mb"]
        lines.append(f"| {size_text(r['volume']['size_xyz'])} | {p['load']:.0f} | {r['rss_after_load_mb']:.0f} | "
                     + " | ".join(f"{p[s]:.0f}" if p.get(s) is not None else "-" for s in STAGES) + " |")
    if not all(r["peak_rss_exact"] for r in rows):
        lines += ["", "(/proc/self/clear_refs could not be written here: each stage's number is the peak since "
                  "the process started, not the stage's own.)"]
    if len(rows) > 1:
        exps = scaling(rows)
        lines += ["", "Scaling of the non-network stages (growth exponent between successive sizes, 1 = linear): "
                  + ", ".join(f"{size_text(a['volume']['size_xyz'])} → {size_text(b['volume']['size_xyz'])}: {e:.2f}"
                              for a, b, e in zip(rows, rows[1:], exps)) + "."]
    peer = next((r["peer"] for r in rows if "peer" in r), None)
    if peer:
        r = next(r for r in rows if "peer" in r)
        lines += [
            "",
            f"Peer on the same network input ({size_text(r['volume']['size_xyz'])}, grid "
            f"{size_text(r['network_grid_zyx'])}), same process, same overlap and flips:",
            "",
            "| sliding window | windows | time (s) | s/window | peak RSS during |",
            "|---|---|---|---|---|",
            f"| UNETR++ (engine, predict stage) | {r['windows']} | {r['timing_s']['predict']:.1f} | "
            f"{r['timing_s']['predict'] / r['windows']:.2f} | {r['peak_rss_mb']['predict'] / 1024:.2f} GB |",
            f"| MONAI `sliding_window_inference` + {peer['network']} | {peer['windows']} | {peer['seconds']:.1f} | "
            f"{peer['seconds'] / peer['windows']:.2f} | {peer['peak_rss_mb'] / 1024:.2f} GB |",
            "",
            f"SwinUNETR / UNETR++ time: {peer['ratio_to_unetrpp_predict']:.2f}×.",
        ]
    lines += ["", *verdicts(rows)]
    if result.get("notes"):
        lines += ["", result["notes"]]
    return "\n".join(lines) + "\n"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    full = next((r for r in rows if r["volume"]["voxels"] >= 512 * 512 * 300), None)
    out = []
    if full is None:
        out.append("- **Goals not evaluated:** the 512×512×300 size was not part of this run; the full benchmark is "
                   "`python benchmarks/segment.py --json segment.json --markdown docs/benchmarks.md`.")
    else:
        peak = full["process_peak_rss_mb"]
        out.append(f"- Peak RSS at {size_text(full['volume']['size_xyz'])}: {peak / 1024:.2f} GB — "
                   f"{'meets' if peak < GOAL_RSS_MB else 'misses'} the 6 GB goal, "
                   f"{'meets' if peak <= GOAL_RSS_BOUNDED_MB else 'misses'} issue 21's 2.5 GB ({peak:.0f} MB).")
    for r in rows:
        share = non_network_s(r) / r["timing_s"]["total"]
        out.append(f"- Non-network stages at {size_text(r['volume']['size_xyz'])}: {100 * share:.1f} % of the total — "
                   f"{'meets' if share <= GOAL_SHARE else 'misses'} the {100 * GOAL_SHARE:.0f} % goal.")
    if len(rows) > 1:
        worst = max(scaling(rows))
        out.append(f"- Largest growth exponent of the non-network time: {worst:.2f} — "
                   f"{'linear or better' if worst <= 1.15 else 'worse than linear'} (1.15 allowed for noise).")
    return out


# Main ---------------------------------------------------------------------------------------------
def child_command(args: argparse.Namespace, volume: Path, peer: bool) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(volume), "--model", str(args.model),
           "--workdir", str(args.workdir), "--device", args.device, "--output-format", args.output_format,
           "--fast" if args.fast else "--no-fast"]
    if args.overlap is not None:
        cmd += ["--overlap", str(args.overlap)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.backend:
        cmd += ["--backend", args.backend]
    if not peer:
        cmd.append("--no-peer")
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES],
                   help="input sizes XxYxZ (default: %(default)s)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CT to resample (default: the shared example CT)")
    p.add_argument("--field-of-view", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="physical extent in mm of every volume (the CT centred, air around it); default: the CT's own")
    p.add_argument("--model", type=Path, help="model package (default: full-size synapse, deterministic weights)")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (default: the manifest's, 0.5)")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                   help="no mirroring (default on, as on a CPU; --no-fast mirrors on all axes)")
    p.add_argument("--no-peer", action="store_true", help="skip MONAI SwinUNETR")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--backend", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="network backend (default: the pipeline's)")
    p.add_argument("--output-format", default=".seg.nrrd", choices=[".seg.nrrd", ".nii.gz", ".nrrd"])
    p.add_argument("--estimate", action="store_true",
                   help="only print window counts and a projected duration from one timed window per network")
    p.add_argument("--workdir", type=Path, help="folder for volumes, package and outputs (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help=f"(re)write the '{SECTION}' section of this file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: one volume, prints RESULT <json>
    args = p.parse_args(argv)
    args.peer = not args.no_peer
    args.model_given = args.model
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return 0
    if not args.source.is_file():
        p.error(f"source CT {args.source} not found (set UNETRPP_SHARED or pass --source)")
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp_name:
        args.workdir = (args.workdir or Path(tmp_name)).resolve()
        args.workdir.mkdir(parents=True, exist_ok=True)
        return run_all(args)


def run_all(args: argparse.Namespace) -> int:
    from unetrpp import load

    model_text = str(args.model) if args.model else "full-size synapse network, deterministic weights, official synapse manifest"
    if args.model is None:
        args.model = args.workdir / "synapse-deterministic"
        if not (args.model / "model.json").is_file():
            log.info("building the full-size synapse package in %s", args.model)
            synapse_package(args.model)
    model = load(args.model)
    overlap = model.manifest.inference.get("overlap", 0.5) if args.overlap is None else args.overlap
    sizes = sorted(args.sizes, key=math.prod)
    volumes = []
    for size in sizes:
        dst = args.workdir / f"ct-{'x'.join(map(str, size))}.nii.gz"
        t = time.perf_counter()
        vol = make_volume(args.source, size, dst, args.field_of_view)
        plan = window_plan(vol, model.manifest, overlap)
        volumes.append((vol, plan))
        log.info("%s: %.1f M voxels at %s mm, %.1f MB (%.1f s to make); network grid %s -> %d window(s)%s",
                 size_text(size), vol["voxels"] / 1e6, vol["spacing_xyz"], vol["file_mb"], time.perf_counter() - t,
                 size_text(plan["network_grid_zyx"]), plan["windows"], "" if args.fast else " x 8 flips")
    if args.estimate:
        per = seconds_per_window(model, args, args.peer)
        total = sum(plan["windows"] * per["unetrpp"] for _, plan in volumes)
        peer = volumes[-1][1]["windows"] * per.get("peer", 0.0)
        log.info("one window: UNETR++ %.2f s%s", per["unetrpp"],
                 f", SwinUNETR {per['peer']:.2f} s" if "peer" in per else "")
        log.info("projected network time: UNETR++ %.0f s over %d size(s), SwinUNETR peer %.0f s: about %.0f min "
                 "plus the non-network stages", total, len(volumes), peer, (total + peer) / 60)
        return 0
    del model
    before = load_average()
    rows = []
    for i, (vol, plan) in enumerate(volumes):
        peer = args.peer and i == len(volumes) - 1
        log.info("segmenting %s (%d windows%s) ...", size_text(vol["size_xyz"]), plan["windows"],
                 ", then the SwinUNETR peer" if peer else "")
        t = time.perf_counter()
        proc = subprocess.run(child_command(args, Path(vol["path"]), peer), capture_output=True, text=True)
        if proc.returncode != 0:
            log.error("%s failed:\n%s", size_text(vol["size_xyz"]), proc.stderr[-4000:])
            return 1
        row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        row.update(volume=vol, plan=plan)
        rows.append(row)
        log.info("%s: total %.1f s (predict %.1f s), peak RSS %.0f MB; %.0f s with process start%s",
                 size_text(vol["size_xyz"]), row["timing_s"]["total"], row["timing_s"]["predict"],
                 row["process_peak_rss_mb"] or 0, time.perf_counter() - t,
                 f"; SwinUNETR {row['peer']['seconds']:.1f} s" if "peer" in row else "")
    result = {"machine": machine(args.device), "model": model_text, "load_average_before": before,
              "load_average_after": load_average(), "settings": {
                  "sizes": [list(s) for s in sizes], "overlap": overlap, "fast": args.fast, "device": args.device,
                  "output_format": args.output_format, "source": str(args.source)}, "rows": rows}
    text = markdown(result, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        write_section(args.markdown, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
