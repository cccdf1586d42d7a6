#!/usr/bin/env python
"""Forward-pass latency and peak memory of UNETR++ (faithful and optimized) next to MONAI's UNETR
and SwinUNETR, float32, batch 1, one patch.

    python benchmarks/network.py                      # all variants, Markdown on stdout
    python benchmarks/network.py --variants synapse --runs 5 --json out.json --markdown out.md

Latency: median of --runs timed forwards after --warmup untimed ones, under torch.inference_mode.
The models of one group (a variant's plain and optimized network; at the synapse patch also UNETR,
SwinUNETR, each optimisation switched off in turn, bf16 autocast) are timed round-robin
(A, B, C, A, B, C, ...) in one process, so load from other processes on a shared machine hits
them alike and their ratios stay fair even when absolute times drift.
Peak memory: one forward per model in a fresh subprocess; on CPU the rise of the process's peak
resident set (VmHWM in /proc/self/status, reset through /proc/self/clear_refs after the model and
input are built and glibc's free memory is trimmed), on CUDA torch.cuda.max_memory_allocated.
Errors: UNETR++ runs with the deterministic weights and input of the parity vectors
(shared/parity), so every timed UNETR++ output is also compared with the official float64 output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PARITY = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared")) / "parity"
OFFICIAL_NAME = {"synapse": "synapse", "acdc": "acdc", "brats": "tumor", "lung": "lung"}
ABLATIONS = ["mkldnn_conv", "channels_last", "fold_batchnorm", "matmul_convs", "fused_attention"]


# ------------------------------------------------------------------------------------------------
# Models


def build(name: str, device: str):
    """(module, input, variant or None, autocast dtype or None) for a model name:
    '<variant>/plain', '<variant>/fast', 'synapse/fast-no-<option>', 'synapse/fast-bf16',
    '<variant>/openvino', '<variant>/onnxruntime', '<variant>/openvino-faithful' (the ONNX export traced
    from the faithful tree instead of the deploy graph), '<variant>/openvino-2streams' (two windows per
    call on two OpenVINO streams, time per window),
    'synapse/plain-no_grad', 'unetr', 'swinunetr'."""
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import deterministic_input, set_deterministic_weights
    from unetrpp.network.fast import FastOptions, optimize_for_inference

    torch.manual_seed(0)
    if name == "matmul":  # the float32 matrix-product rate, timed in the same round-robin
        n = MATMUL_N
        return _MatMul(torch.randn(n, n)).to(device), torch.randn(n, n, device=device), None, None
    if name in ("unetr", "swinunetr"):
        from monai.networks.nets import UNETR, SwinUNETR

        if name == "unetr":
            m = UNETR(in_channels=1, out_channels=14, img_size=(64, 128, 128), feature_size=16, hidden_size=768)
        else:
            m = SwinUNETR(in_channels=1, out_channels=14, feature_size=48)
        x = torch.randn(1, 1, 64, 128, 128)
        return m.eval().to(device), x.to(device), None, None
    variant, kind = name.split("/")
    net = build_network(variant).eval()
    set_deterministic_weights(net)
    net = net.to(device)
    x = deterministic_input((1, *net.config.input_shape), dtype=torch.float32).to(device)
    if kind == "openvino-faithful":  # the export traced from the faithful tree (before the deploy graph)
        import tempfile

        from unetrpp.backends.onnx_export import export_onnx
        from unetrpp.backends.runtimes import OpenVINONetwork

        path = Path(tempfile.gettempdir()) / "unetrpp-bench-cache" / f"{variant}-faithful-graph.onnx"
        if not path.is_file():
            export_onnx(net, path, deploy=False)
        return _Callable(OpenVINONetwork(path, net.config.input_shape, threads=torch.get_num_threads())), x, variant, None
    if kind == "openvino-2streams":  # two windows at once, one stream each: time per window
        import tempfile

        from unetrpp.backends.onnx_export import cached_onnx
        from unetrpp.backends.runtimes import OpenVINONetwork

        os.environ.setdefault("UNETRPP_CACHE", str(Path(tempfile.gettempdir()) / "unetrpp-bench-cache"))
        runner = OpenVINONetwork(cached_onnx(net), net.config.input_shape, threads=torch.get_num_threads(), streams=2)
        return _Pair(runner), x, variant, None
    if kind in ("openvino", "onnxruntime", "openvino-bf16"):  # the ONNX export (unetrpp.backends)
        import tempfile

        from unetrpp.backends import choose_backend, prepare

        os.environ.setdefault("UNETRPP_CACHE", str(Path(tempfile.gettempdir()) / "unetrpp-bench-cache"))
        backend, _, precision = kind.partition("-")
        runner = prepare(net, choose_backend(backend, "cpu", precision or "f32"))
        return _Callable(runner), x, variant, None
    if kind in ("plain", "plain-no_grad"):
        return net, x, variant, None
    if kind == "fast":
        return optimize_for_inference(net), x, variant, None
    if kind == "fast-compile":
        return optimize_for_inference(net, compile=True), x, variant, None
    if kind == "fast-bf16":
        return optimize_for_inference(net), x, variant, (torch.bfloat16 if device == "cpu" else torch.float16)
    if kind.startswith("fast-no-"):
        return optimize_for_inference(net, options=FastOptions(**{kind[len("fast-no-"):]: False})), x, variant, None
    raise SystemExit(f"unknown model {name!r}")


MATMUL_N = 2048


class _Callable(torch.nn.Module):
    """A backend's callable (tensor -> logits) as a module, for the timing loop."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class _Pair(torch.nn.Module):
    """Two copies of the window through a backend that runs them concurrently (the sliding
    window hands it two mirror flips or two windows per call); timed per window."""

    items_per_call = 2

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(torch.cat([x, x]))[:1]


class _MatMul(torch.nn.Module):
    def __init__(self, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.b


def forward(model, x, amp_dtype, grad_mode: str = "inference"):
    ctx = torch.inference_mode() if grad_mode == "inference" else torch.no_grad()
    with ctx:
        if amp_dtype is not None:
            with torch.autocast(x.device.type, dtype=amp_dtype):
                return model(x)
        return model(x)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def variant_gflop(variant: str) -> float:
    """Floating-point operations of one forward (GFLOP): the official network's fvcore count from
    the parity vectors (one multiply-add counted once), times 2 (a multiply-add is two operations,
    as in the matrix-product rate it is compared with)."""
    ref = json.loads((PARITY / f"{OFFICIAL_NAME[variant]}.json").read_text())
    return 2 * ref["fvcore_flops"] / 1e9


def parity_error(variant: str, y: torch.Tensor) -> float:
    ref = json.loads((PARITY / f"{OFFICIAL_NAME[variant]}.json").read_text())
    flat = y.reshape(-1).float().cpu()
    idx = np.round(np.linspace(0, flat.numel() - 1, 4096)).astype(np.int64)
    got = flat[torch.from_numpy(idx)].double().numpy()
    exp = np.asarray(ref["output_samples"])
    return float(np.abs(got - exp).max() / np.abs(exp).max())


# ------------------------------------------------------------------------------------------------
# Measurements


def time_group(names: list[str], device: str, runs: int, warmup: int) -> dict[str, dict]:
    """Round-robin timing of the models in `names`, all built in this process."""
    models = {n: build(n, device) for n in names}
    results: dict[str, dict] = {n: {"times_s": []} for n in names}
    for n, (m, x, variant, amp) in models.items():
        for _ in range(warmup):
            y = forward(m, x, amp, "no_grad" if n.endswith("no_grad") else "inference")
        if variant is not None:
            results[n]["parity_error"] = parity_error(variant, y)
        del y
    for _ in range(runs):
        for n, (m, x, _, amp) in models.items():
            sync(device)
            t0 = time.perf_counter()
            forward(m, x, amp, "no_grad" if n.endswith("no_grad") else "inference")
            sync(device)
            results[n]["times_s"].append((time.perf_counter() - t0) / getattr(m, "items_per_call", 1))
    for r in results.values():
        r["median_s"] = statistics.median(r["times_s"])
    return results


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(name: str, device: str) -> dict:
    """Runs in a fresh subprocess: the peak memory of one forward of `name`."""
    m, x, _, amp = build(name, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        forward(m, x, amp)
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "method": "cuda.max_memory_allocated"}
    try:  # hand memory freed while building back to the OS, so the forward's pages count
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    rss = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        method = "VmHWM - VmRSS (clear_refs)"
    except OSError:
        method = "VmHWM - VmRSS"
    forward(m, x, amp)
    return {"peak_bytes": (_status_kb("VmHWM") - rss) * 1024, "method": method}


def run_probe(name: str, device: str, threads: int, tune: bool) -> dict:
    cmd = [sys.executable, __file__, "--_probe", name, "--device", device, "--threads", str(threads)]
    if tune:
        cmd.append("--tune-allocator")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def allocator_gain(device: str, threads: int, runs: int) -> dict:
    """Optimized synapse latency with and without tune_cpu_allocator, alternating processes."""
    res: dict[str, list[float]] = {"default": [], "tuned": []}
    for _ in range(2):
        for key in ("default", "tuned"):
            cmd = [sys.executable, __file__, "--_latency", "synapse/fast", "--device", device,
                   "--threads", str(threads), "--runs", str(max(2, runs // 2))]
            if key == "tuned":
                cmd.append("--tune-allocator")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[key] += json.loads(out.stdout.strip().splitlines()[-1])["times_s"]
    return {k: statistics.median(v) for k, v in res.items()}


def matmul_gflops(device: str, n: int = 2048, runs: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def machine(device: str) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "device": device,
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ------------------------------------------------------------------------------------------------
# Report


def markdown(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads, {m['cpu_capability']}), MONAI {m.get('monai', '-')}, device {m['device']}; "
        f"load average at start {tuple(round(v, 1) for v in m.get('load_average', ()))}; "
        f"matmul ceiling {report['matmul_gflops']:.0f} GFLOP/s ({report.get('matmul_method', 'float32 2048^3, before the runs')})."
    )
    lines.append("")
    lines.append("| model | patch | latency (median) | GFLOP/s | % of matmul rate | peak memory | vs plain | error vs float64 parity |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, r in report["models"].items():
        patch = r.get("patch", "64x128x128")
        mem = f"{r['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in r else "-"
        plain = report["models"].get(name.split("/")[0] + "/plain")
        speed = f"{plain['median_s'] / r['median_s']:.2f}x" if plain and "/" in name else "-"
        err = f"{r['parity_error']:.1e}" if "parity_error" in r else "-"
        rate = f"{r['gflops']:.0f}" if "gflops" in r else "-"
        share = f"{100 * r['matmul_share']:.0f} %" if "matmul_share" in r else "-"
        lines.append(f"| {name} | {patch} | {r['median_s']:.2f} s | {rate} | {share} | {mem} | {speed} | {err} |")
    lines.append("")
    if report.get("headline"):
        lines.append(report["headline"])
        lines.append("")
    if report.get("ratios"):
        lines.append("| ratio (same run, round-robin) | value |")
        lines.append("|---|---|")
        for k, v in report["ratios"].items():
            lines.append(f"| {k} | {v:.2f}x |")
        lines.append("")
    if report.get("gains"):
        lines.append("| optimisation (synapse) | latency without it | gain (without / with all) |")
        lines.append("|---|---|---|")
        for k, v in report["gains"].items():
            lines.append(f"| {k} | {v['without_s']:.2f} s | {v['gain']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(OFFICIAL_NAME), choices=list(OFFICIAL_NAME))
    p.add_argument("--runs", type=int, default=5, help="timed forwards per model (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-peers", action="store_true", help="skip MONAI UNETR and SwinUNETR")
    p.add_argument("--peers", nargs="+", default=["unetr", "swinunetr"], choices=["unetr", "swinunetr"],
                   help="which MONAI peers to time at the synapse patch")
    p.add_argument("--no-ablations", action="store_true", help="skip the per-optimisation runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the optimized synapse")
    p.add_argument("--tune-allocator", action="store_true", help="call fast.tune_cpu_allocator() first")
    p.add_argument("--backends", nargs="+", default=[], choices=["openvino", "onnxruntime", "openvino-bf16"],
                   help="also time the synapse network's ONNX export on these backends (unetrpp.backends)")
    p.add_argument("--only", nargs="+", help="time just these models as one round-robin group "
                   "(e.g. synapse/fast synapse/openvino unetr); no memory probes")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--_probe", help=argparse.SUPPRESS)
    p.add_argument("--_latency", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    if a.tune_allocator:
        from unetrpp.network.fast import tune_cpu_allocator

        tune_cpu_allocator()
    if a._probe:
        print(json.dumps(memory_probe(a._probe, a.device)))
        return 0
    if a._latency:
        r = time_group([a._latency], a.device, a.runs, a.warmup)[a._latency]
        print(json.dumps(r))
        return 0

    report: dict = {"machine": machine(a.device), "settings": vars(a) | {"json": str(a.json), "markdown": str(a.markdown)}}
    report["matmul_gflops"] = matmul_gflops(a.device)
    models: dict[str, dict] = {}
    if a.only:
        print(f"timing {', '.join(a.only)} ...", file=sys.stderr, flush=True)
        res = time_group(a.only, a.device, a.runs, a.warmup)
        for n, r in res.items():
            print(json.dumps({"model": n, **{k: v for k, v in r.items() if not isinstance(v, list)}}), flush=True)
        names = list(res)
        for n in names:
            for m in names:
                if n != m:
                    print(f"{m} / {n}: {res[m]['median_s'] / res[n]['median_s']:.2f}x "
                          f"(per-round: {', '.join(f'{a_ / b_:.2f}' for a_, b_ in zip(res[m]['times_s'], res[n]['times_s']))})")
        if a.json:
            a.json.write_text(json.dumps({"machine": report["machine"], "load_average": os.getloadavg(), "models": res},
                                         indent=2) + "\n")
        return 0
    for v in a.variants:
        names = [f"{v}/plain", f"{v}/fast"]
        if v == "synapse":
            names.insert(1, "synapse/plain-no_grad")
            names.append("matmul")
            if not a.no_peers:
                names += list(a.peers)
            if not a.no_ablations:
                names += [f"synapse/fast-no-{o}" for o in ABLATIONS] + ["synapse/fast-bf16"]
            if a.compile:
                names.append("synapse/fast-compile")
            names += [f"synapse/{b}" for b in a.backends]
        print(f"timing {', '.join(names)} ...", file=sys.stderr, flush=True)
        res = time_group(names, a.device, a.runs, a.warmup)
        from unetrpp.network import variant_config

        patch = "x".join(map(str, variant_config(v).patch_size))
        if "matmul" in res:  # the ceiling measured alongside (round-robin) replaces the one-off
            report["matmul_gflops"] = 2 * MATMUL_N**3 / res.pop("matmul")["median_s"] / 1e9
            report["matmul_method"] = f"float32 {MATMUL_N}^3 torch.mm, timed round-robin with the synapse group"
        for n, r in res.items():
            r["patch"] = "64x128x128" if n in ("unetr", "swinunetr") else patch
        models.update(res)
    if not a.no_memory:
        for n in list(models):
            if "fast-no-" in n or n.endswith(("no_grad", "compile")):
                continue
            print(f"peak memory of {n} ...", file=sys.stderr, flush=True)
            models[n].update(run_probe(n, a.device, a.threads, a.tune_allocator))
    report["models"] = models
    for n, r in models.items():  # arithmetic rate of the UNETR++ forwards (the official FLOP count)
        if "/" in n:
            r["gflops"] = variant_gflop(n.split("/")[0]) / r["median_s"]
            r["matmul_share"] = r["gflops"] / report["matmul_gflops"]

    ratios = {}
    fast = models.get("synapse/fast")
    if fast:
        for peer, label in (("unetr", "MONAI UNETR"), ("swinunetr", "MONAI SwinUNETR")):
            if peer in models:
                ratios[f"UNETR++ synapse optimized vs {label}"] = models[peer]["median_s"] / fast["median_s"]
                ratios[f"UNETR++ synapse plain vs {label}"] = models[peer]["median_s"] / models["synapse/plain"]["median_s"]
        ratios["inference_mode vs no_grad (plain synapse)"] = (
            models["synapse/plain-no_grad"]["median_s"] / models["synapse/plain"]["median_s"]
        )
    report["ratios"] = ratios
    if fast and "unetr" in models:
        report["headline"] = (
            f"**synapse optimized: {fast['gflops']:.0f} GFLOP/s = {100 * fast['matmul_share']:.0f} % of this "
            f"machine's float32 matrix-product rate ({report['matmul_gflops']:.0f} GFLOP/s, same run), "
            f"{models['unetr']['median_s'] / fast['median_s']:.2f}x MONAI UNETR (same run, round-robin).**"
        )
        print(report["headline"], file=sys.stderr)
    gains = {}
    if fast and not a.no_ablations:
        for o in ABLATIONS:
            without = models[f"synapse/fast-no-{o}"]["median_s"]
            gains[o] = {"without_s": without, "gain": without / fast["median_s"]}
        if a.device == "cpu" and not a.tune_allocator:
            print("allocator: alternating processes ...", file=sys.stderr, flush=True)
            alloc = allocator_gain(a.device, a.threads, a.runs)
            gains["tune_cpu_allocator (opt-in, separate processes)"] = {
                "without_s": alloc["default"], "gain": alloc["default"] / alloc["tuned"],
            }
    report["gains"] = gains

    md = markdown(report)
    print(md)
    if a.markdown:
        a.markdown.write_text(md + "\n")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
