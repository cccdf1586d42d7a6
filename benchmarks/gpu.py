#!/usr/bin/env python
"""The GPU kit: everything worth measuring in the first minutes of a lent GPU, in one process,
within a time budget, written to one JSON file (benchmarks/gpu_table.py turns it into the GPU
section of docs/benchmarks.md). Run it through benchmarks/gpu.sh on the GPU machine.

    python benchmarks/gpu.py --device cuda --out gpu_results.json          # the real run
    python benchmarks/gpu.py --device cpu --tiny --out /tmp/dry.json      # dry run (CI test)

Sections, in this order (each is recorded as it finishes, so a run cut short keeps what it has;
an exception in one section is recorded and the next one runs):

* parity       - every variant with the deterministic weights and input of shared/parity: the
                 faithful and the optimized network in float32 (on CUDA also with TF32
                 convolutions off) and under autocast float16/bfloat16, max error / max |reference|
                 against the official float64 output (--tiny: against the faithful float64 network
                 on the CPU, since the vectors exist only for the full-size variants);
* pipeline     - the official pipeline cases (shared/pipeline: the official network input, settings
                 and deterministic weights): sliding-window labels in float32 vs AMP, agreement
                 and the label histogram against the official network-grid result;
* fullct       - a 512x512x300 CT over a 400x400x450 mm field of view, resampled to each variant's
                 target spacing: sliding-window time and peak GPU memory of each variant's network,
                 fast mode (no mirroring) first for all, mirrored ("fullct_mirror") last;
* batch        - windows per forward pass that fit (synapse, AMP): doubling until out of memory or
                 --max-batch, with throughput and peak memory per batch size;
* oom          - the out-of-memory fallback forced: a memory cap below what the batch needs (the
                 predictor halves the batch), then below one window (it moves to the CPU); the
                 result is compared with the uncapped one;
* train        - one training iteration per recipe at its official batch size (deep supervision,
                 Dice+CE, SGD, AMP as the recipe says): s/iteration and peak memory;
* compile      - torch.compile of the optimized network on/off (compile time, latency, error),
                 in a subprocess limited by the remaining budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from network import machine, parity_error  # noqa: E402  (benchmarks/network.py)

log = logging.getLogger("benchmarks.gpu")
SHARED = Path(os.environ.get("UNETRPP_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VARIANTS = ["synapse", "acdc", "brats", "lung"]
SECTIONS = ["parity", "pipeline", "fullct", "oom", "batch", "train", "fullct_mirror", "compile"]
CT_FIELD_OF_VIEW_MM = (450.0, 400.0, 400.0)  # z, y, x: 300 slices of 1.5 mm, 512 x 512 at 0.78 mm
TINY_PATCH = (16, 16, 16)
FLOAT32_PARITY = 1e-4
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


# Networks --------------------------------------------------------------------------------------
def network_config(variant: str, tiny: bool):
    """The variant's configuration; --tiny keeps its channels, classes and attention kind on a
    small patch and width (the dry run exercises every code path in seconds)."""
    from unetrpp.network import variant_config

    cfg = variant_config(variant)
    if not tiny:
        return cfg
    return dataclasses.replace(
        cfg, patch_size=TINY_PATCH, stem_kernel=(2, 2, 2), feature_size=8, depths=(1, 1, 1, 1),
        proj_sizes=(8, 8, 8, 4), decoder_proj_size=8, decoder_depth=1,
    )


def faithful(variant: str, tiny: bool, device: torch.device, deep_supervision: bool = False):
    """The faithful network with the deterministic weights of shared/parity, eval mode."""
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import set_deterministic_weights

    net = build_network(network_config(variant, tiny), deep_supervision=deep_supervision)
    return set_deterministic_weights(net).float().eval().to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def samples(y: torch.Tensor, k: int = 4096) -> np.ndarray:
    flat = y.detach().reshape(-1).float().cpu()
    idx = np.round(np.linspace(0, flat.numel() - 1, k)).astype(np.int64)
    return flat[torch.from_numpy(idx)].double().numpy()


def hardware_lacks(exc: RuntimeError) -> str | None:
    """The reason to skip a precision mode this processor cannot run, or None for any other error.

    oneDNN's reduced-precision CPU kernels exist only where the instruction set has them: the float16
    convolution needs AVX-512 FP16 or AVX-NE-CONVERT ("mkldnn_convolution: fp16 path needs the cpu
    support avx_ne_convert or avx512_fp16" on an AMD EPYC with AVX-512 BF16 but without FP16), and the
    bfloat16 one AVX-512 BF16 or its emulation. The engine never runs float16 on a CPU; the dry run
    does only to exercise the kit's code paths, so a missing instruction is a skip with its reason."""
    text = str(exc)
    if "needs the cpu support" in text or "cpu support" in text and "path needs" in text:
        return f"hardware: this processor lacks the instructions for it ({text.strip().splitlines()[0][:200]})"
    return None


# Sections --------------------------------------------------------------------------------------
class Kit:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.tiny = args.tiny
        self.t_start = time.perf_counter()
        self.results: dict[str, Any] = {
            "kit_version": 1,
            "machine": machine(self.device.type),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sections": {},
            "errors": {},
            "skipped": {},
        }
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            self.results["machine"].update(
                gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            )

    # Budget and bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def remaining(self) -> float:
        return self.args.budget_s - self.elapsed()

    def afford(self, section: str, what: str, need_s: float) -> bool:
        if self.remaining() >= need_s:
            return True
        self.results["skipped"][f"{section}/{what}"] = (
            f"time budget: needs ~{need_s:.0f} s, {max(self.remaining(), 0):.0f} s left of {self.args.budget_s:.0f} s"
        )
        log.warning("skipping %s/%s (time budget)", section, what)
        return False

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        os.replace(tmp, out)

    def run(self, sections: list[str]) -> None:
        for name in sections:
            log.info("== %s (%.0f s elapsed, %.0f s left)", name, self.elapsed(), self.remaining())
            store: dict[str, Any] = {}
            self.results["sections"][name] = store
            try:
                getattr(self, f"section_{name}")(store)
            except Exception as exc:  # record and go on: the next section may still work
                self.results["errors"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                log.error("section %s failed:\n%s", name, traceback.format_exc())
            finally:
                if self.device.type == "cuda":
                    torch.cuda.set_per_process_memory_fraction(1.0, self.device)
                    torch.cuda.empty_cache()
                self.save()

    # parity
    def section_parity(self, store: dict) -> None:
        from unetrpp.network.deterministic import deterministic_input
        from unetrpp.network.fast import FastOptions, optimize_for_inference

        modes = [("plain", "fp32"), ("fast", "fp32"), ("plain", "fp16"), ("fast", "fp16"), ("fast", "bf16"),
                 ("fast_sdpa", "fp16")]
        if self.device.type == "cuda":
            modes.insert(2, ("fast", "fp32-notf32"))
        for variant in self.args.variants:
            if not self.afford("parity", variant, 10):
                continue
            net = faithful(variant, self.tiny, self.device)
            x = deterministic_input((1, *net.config.input_shape), dtype=torch.float32).to(self.device)
            if self.tiny:  # reference: the faithful network in float64 on the CPU
                ref_net = faithful(variant, True, torch.device("cpu")).double()
                with torch.no_grad():
                    expected = samples(ref_net(x.cpu().double()))
                del ref_net
            fast = optimize_for_inference(net)
            modules = {"plain": net, "fast": fast, "fast_sdpa": optimize_for_inference(net, options=FastOptions(sdpa=True))}
            rows = {}
            for kind, precision in modes:
                module = modules[kind]
                amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
                tf32 = torch.backends.cudnn.allow_tf32
                torch.backends.cudnn.allow_tf32 = tf32 and precision != "fp32-notf32"
                try:
                    with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp or torch.float32,
                                                                enabled=amp is not None):
                        y, seconds = timed(self.device, lambda: module(x))
                except RuntimeError as exc:
                    missing = hardware_lacks(exc)
                    if missing is None:
                        raise
                    self.results["skipped"][f"parity/{variant}/{kind}-{precision}"] = missing
                    log.warning("parity %s %s-%s skipped: %s", variant, kind, precision, missing)
                    continue
                finally:
                    torch.backends.cudnn.allow_tf32 = tf32
                finite = bool(torch.isfinite(y).all())
                if self.tiny:
                    got = samples(y)
                    err = float(np.abs(got - expected).max() / np.abs(expected).max())
                else:
                    err = parity_error(variant, y)
                rows[f"{kind}-{precision}"] = {"error": err, "finite": finite, "first_call_s": seconds,
                                               "pass_1e-4": bool(finite and err < FLOAT32_PARITY)}
                log.info("parity %s %s-%s: %.2e", variant, kind, precision, err)
                del y
            store[variant] = rows
            del net, fast, modules

    # pipeline
    def section_pipeline(self, store: dict) -> None:
        from unetrpp.predict import predict_probabilities

        folder = SHARED / "pipeline"
        cases = sorted(p for p in folder.glob("*/case.json")) if folder.is_dir() else []
        if not cases:
            raise FileNotFoundError(f"no pipeline cases under {folder} (set UNETRPP_SHARED)")
        for case_file in cases:
            case = json.loads(case_file.read_text())
            name = case_file.parent.name
            if not self.afford("pipeline", name, 15):
                continue
            variant = case["project_model_variant"]
            settings = case["settings"]
            volume = torch.from_numpy(np.load(case_file.parent / "official_preprocessed.npz")["data"])
            if self.tiny:  # a corner of the real input, a few tiny windows
                volume = volume[:, :16, :16, :24].contiguous()  # 2 windows
            net = faithful(variant, self.tiny, self.device)
            kwargs = dict(
                patch_size=net.config.patch_size, overlap=settings["overlap"],
                mirror_axes=tuple(settings["mirror_axes"]) if settings["mirroring"] else (),
                sigma_scale=settings["gaussian_sigma_scale"], device=self.device,
            )
            prob32, t32 = timed(self.device, lambda: predict_probabilities(net, volume, amp=False, **kwargs))
            prob16, t16 = timed(self.device, lambda: predict_probabilities(net, volume, amp=True, **kwargs))
            lab32, lab16 = prob32.argmax(0), prob16.argmax(0)
            row = {
                "variant": variant, "grid": list(volume.shape[1:]), "mirroring": settings["mirroring"],
                "fp32_s": t32, "amp_s": t16,
                "label_agreement_fp32_vs_amp": float((lab32 == lab16).float().mean()),
                "max_prob_diff_fp32_vs_amp": float((prob32 - prob16).abs().max()),
                "amp_active": self.device.type == "cuda",
            }
            official = case.get("summary", {}).get("network_grid_softmax", {}).get("label_voxels")
            if official and not self.tiny:  # histogram distance: a lower bound on label disagreement
                n = lab32.numel()
                for key, lab in (("fp32", lab32), ("amp", lab16)):
                    counts = torch.bincount(lab.reshape(-1), minlength=prob32.shape[0]).tolist()
                    diff = sum(abs(counts[int(k)] - v) for k, v in official.items()) / 2
                    row[f"histogram_mismatch_{key}_vs_official"] = diff / n
            store[name] = row
            log.info("pipeline %s: agreement %.4f", name, row["label_agreement_fp32_vs_amp"])
            del net, prob32, prob16

    # full CT
    def ct_grid(self, variant: str) -> tuple[int, ...]:
        if self.tiny:
            return TINY_PATCH
        from unetrpp.official_models import official_manifest

        spacing = official_manifest(variant)["plan"]["target_spacing"]
        return tuple(int(round(e / s)) for e, s in zip(CT_FIELD_OF_VIEW_MM, spacing))

    def _fullct(self, store: dict, mirrored: bool) -> None:
        from unetrpp.predict import predict_probabilities, window_starts

        section = "fullct_mirror" if mirrored else "fullct"
        fast_times = self.results["sections"].get("fullct", {})
        for variant in self.args.variants:
            net = faithful(variant, self.tiny, self.device)
            grid = self.ct_grid(variant)
            patch = net.config.patch_size
            windows = math.prod(len(s) for s in window_starts(tuple(max(g, p) for g, p in zip(grid, patch)), patch, 0.5))
            need = 20.0
            if mirrored and variant in fast_times and "seconds" in fast_times[variant]:
                need = 8 * fast_times[variant]["seconds"] + 10
            if not self.afford(section, variant, need):
                continue
            gen = torch.Generator().manual_seed(0)
            volume = torch.randn((net.config.in_channels, *grid), generator=gen)
            reset_peak(self.device)
            prob, seconds = timed(self.device, lambda: predict_probabilities(
                net, volume, patch_size=patch, mirror_axes=(0, 1, 2) if mirrored else (), device=self.device,
                amp=True))
            store[variant] = {
                "grid": list(grid), "windows": windows, "forwards": windows * (8 if mirrored else 1),
                "seconds": seconds, "s_per_window": seconds / windows, "peak_gpu_gib": peak_gib(self.device),
                "finite": bool(torch.isfinite(prob).all()),
            }
            log.info("%s %s: %d windows, %.1f s", section, variant, windows, seconds)
            del prob, volume, net

    def section_fullct(self, store: dict) -> None:
        self._fullct(store, mirrored=False)

    def section_fullct_mirror(self, store: dict) -> None:
        self._fullct(store, mirrored=True)

    # batch size
    def section_batch(self, store: dict) -> None:
        from unetrpp.network.fast import optimize_for_inference

        net = faithful("synapse", self.tiny, self.device)
        fast = optimize_for_inference(net)
        rows = {}
        batch = 1
        while batch <= self.args.max_batch:
            if not self.afford("batch", str(batch), 10):
                break
            x = torch.randn(batch, *net.config.input_shape, device=self.device)
            reset_peak(self.device)
            try:
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                            enabled=self.device.type == "cuda"):
                    fast(x)  # warm-up (cuDNN algorithm choice)
                    times = [timed(self.device, lambda: fast(x))[1] for _ in range(3)]
            except OUT_OF_MEMORY as exc:
                rows[str(batch)] = {"fits": False, "error": str(exc).splitlines()[0]}
                break
            finally:
                del x
            t = statistics.median(times)
            rows[str(batch)] = {"fits": True, "seconds": t, "windows_per_s": batch / t, "peak_gpu_gib": peak_gib(self.device)}
            log.info("batch %d: %.3f s, %.1f windows/s", batch, t, batch / t)
            batch *= 2
        store["synapse_amp"] = rows
        fitting = [int(b) for b, r in rows.items() if r["fits"]]
        store["largest_fitting"] = max(fitting) if fitting else None
        store["limited_by"] = "out of memory" if any(not r["fits"] for r in rows.values()) else "--max-batch or budget"
        peaks = [(int(b), r["peak_gpu_gib"]) for b, r in rows.items() if r.get("peak_gpu_gib") is not None]
        if len(peaks) >= 2 and self.device.type == "cuda":
            (b0, m0), (b1, m1) = peaks[0], peaks[-1]
            per_window = (m1 - m0) / (b1 - b0)
            total = torch.cuda.get_device_properties(self.device).total_memory / 2**30
            store["gib_per_window"] = per_window
            store["estimated_fitting"] = int(b0 + (0.9 * total - m0) / per_window) if per_window > 0 else None

    # OOM fallback
    def section_oom(self, store: dict) -> None:
        from unetrpp.predict import predict_probabilities

        net = faithful("synapse", self.tiny, self.device)
        patch = net.config.patch_size
        # 1 x 3 x 3 = 9 windows at overlap 0.5 (--tiny: 2)
        grid = (patch[0], patch[1], patch[2] + patch[2] // 2) if self.tiny else (patch[0], 2 * patch[1], 2 * patch[2])
        volume = torch.randn((1, *grid), generator=torch.Generator().manual_seed(1))
        kwargs = dict(patch_size=patch, mirror_axes=(), device=self.device, amp=True)
        reset_peak(self.device)
        reference, t_ref = timed(self.device, lambda: predict_probabilities(net, volume, batch_size=1, **kwargs))
        one_window = peak_gib(self.device)
        store["reference"] = {"seconds": t_ref, "peak_gpu_gib_batch1": one_window}
        cuda = self.device.type == "cuda"
        if not cuda:
            store["forced"] = False  # a memory cap needs CUDA; the calls below still run
        total = torch.cuda.get_device_properties(self.device).total_memory / 2**30 if cuda else None
        for label, batch, cap_gib in (
            ("halve_batch", 8, None if not cuda else 1.5 * one_window),
            ("to_cpu", 2, None if not cuda else 0.5 * one_window),
        ):
            if not self.afford("oom", label, 30):
                continue
            events: list = []
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(cap_gib / total, 1.0), self.device)
            try:
                out, seconds = timed(self.device, lambda: predict_probabilities(
                    net, volume, batch_size=batch, sink=events.append, **kwargs))
            finally:
                if cuda:
                    torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            warnings = [e.message for e in events if e.event == "log"]
            store[label] = {
                "cap_gib": cap_gib, "batch_asked": batch, "seconds": seconds, "warnings": warnings,
                "max_prob_diff_vs_uncapped": float((out - reference).abs().max()),
                "label_agreement_vs_uncapped": float((out.argmax(0) == reference.argmax(0)).float().mean()),
            }
            log.info("oom %s: %s", label, warnings)
            net.to(self.device)  # the CPU fallback leaves the network where predict found it; be sure

    # training
    def section_train(self, store: dict) -> None:
        from unetrpp_train.config import load_config
        from unetrpp_train.losses import segmentation_loss
        from unetrpp_train.trainer import make_optimizer, train_step

        for recipe in self.args.variants:
            if not self.afford("train", recipe, 20):
                continue
            cfg = load_config(recipe)
            torch.manual_seed(0)
            net = faithful(cfg.variant, self.tiny, self.device, deep_supervision=True).train()
            ncfg = net.config
            optimizer = make_optimizer(cfg, net.parameters())
            use_amp = cfg.amp and self.device.type == "cuda"
            scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
            loss_fn = segmentation_loss(cfg.ds_weights, cfg.batch_dice)
            gen = torch.Generator().manual_seed(0)
            image = torch.randn((cfg.batch_size, *ncfg.input_shape), generator=gen).to(self.device)
            # Float labels, as the trainer's loader gives them (MONAI resizes them per output).
            label = torch.randint(0, ncfg.out_channels, (cfg.batch_size, 1, *ncfg.patch_size), generator=gen)
            label = label.float().to(self.device)

            def step() -> float:  # the trainer's own step (unetrpp_train.trainer.train_step)
                return float(train_step(net, optimizer, scaler, loss_fn, image, label, grad_clip=cfg.grad_clip,
                                        use_amp=use_amp))

            reset_peak(self.device)
            step()  # warm-up
            times, losses = [], []
            for _ in range(self.args.train_iterations):
                loss, t = timed(self.device, step)
                times.append(t)
                losses.append(loss)
            store[recipe] = {
                "batch_size": cfg.batch_size, "patch": list(ncfg.patch_size), "amp": use_amp,
                "s_per_iteration": statistics.median(times), "peak_gpu_gib": peak_gib(self.device),
                "losses_finite": bool(np.isfinite(losses).all()),
            }
            log.info("train %s: %.3f s/it", recipe, store[recipe]["s_per_iteration"])
            del net, optimizer, image, label

    # torch.compile (subprocess: bounded by the remaining budget)
    def section_compile(self, store: dict) -> None:
        limit = self.remaining() - 5
        if not self.afford("compile", "synapse", 60):
            return
        cmd = [sys.executable, __file__, "--_compile", "--device", self.args.device,
               "--compile-backend", self.args.compile_backend] + (["--tiny"] if self.tiny else [])
        if self.args.threads:
            cmd += ["--threads", str(self.args.threads)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            store["synapse"] = {"error": f"did not finish within the remaining budget ({limit:.0f} s)"}
            return
        if done.returncode != 0:
            raise RuntimeError(f"compile subprocess failed: {done.stderr.strip().splitlines()[-1:]}")
        store["synapse"] = json.loads(done.stdout.strip().splitlines()[-1])


def compile_probe(args: argparse.Namespace) -> dict:
    """Optimized synapse, eager vs torch.compile (batch 2, AMP on CUDA): compile time, latency, error."""
    from unetrpp.network.fast import optimize_for_inference

    device = torch.device(args.device)
    net = faithful("synapse", args.tiny, device)
    fast = optimize_for_inference(net)
    x = torch.randn(2, *net.config.input_shape, device=device)
    amp = device.type == "cuda"

    def call(module):
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            return module(x)

    eager_out = call(fast)
    eager = statistics.median(timed(device, lambda: call(fast))[1] for _ in range(3))
    compiled = torch.compile(fast, dynamic=False, backend=args.compile_backend)
    out, first = timed(device, lambda: call(compiled))
    times = [timed(device, lambda: call(compiled))[1] for _ in range(3)]
    steady = statistics.median(times)
    diff = float((out.float() - eager_out.float()).abs().max() / eager_out.float().abs().max())
    return {"backend": args.compile_backend, "batch": 2, "amp": amp, "eager_s": eager, "first_call_s": first,
            "compiled_s": steady, "speedup": eager / steady, "rel_diff_vs_eager": diff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the real run) or cpu (dry run)")
    p.add_argument("--tiny", action="store_true", help="small networks and volumes (the CPU dry run)")
    p.add_argument("--out", type=Path, default=Path("gpu_results.json"))
    p.add_argument("--budget-s", type=float, default=480.0, help="stop starting work after this many seconds")
    p.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--max-batch", type=int, default=64, help="largest window batch tried")
    p.add_argument("--train-iterations", type=int, default=3, help="timed iterations per recipe (after one warm-up)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend ('eager' for a quick dry run)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--_compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu --tiny for a dry run)",
              file=sys.stderr)
        return 2
    if args._compile:
        print(json.dumps(compile_probe(args)))
        return 0
    kit = Kit(args)
    kit.run(args.sections)
    log.info("results in %s (%.0f s; errors: %s; skipped: %d)", args.out, kit.elapsed(),
             ", ".join(kit.results["errors"]) or "none", len(kit.results["skipped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
