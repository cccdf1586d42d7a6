#!/usr/bin/env python
"""Turn the GPU kit's results (benchmarks/gpu.py, one JSON file) into the "## GPU" section of
docs/benchmarks.md.

    python benchmarks/gpu_table.py gpu_results.json                              # Markdown on stdout
    python benchmarks/gpu_table.py gpu_results.json --markdown docs/benchmarks.md  # replace the section

Only what the file holds is shown; sections that failed or were skipped for time are listed as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import write_section  # benchmarks/common.py (the script's folder is on sys.path)

SECTION = "## GPU"


def _f(v, fmt: str = "{:.2f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def render(results: dict) -> str:
    m = results["machine"]
    s = results["sections"]
    st = results["settings"]
    out = [SECTION, ""]
    device = m.get("gpu") or f"{m.get('cpu')} (CPU, {m.get('logical_cpus')} logical CPUs)"
    out.append(
        f"Measured with `bash benchmarks/gpu.sh` (benchmarks/gpu.py, kit version {results.get('kit_version')}) "
        f"on {device}"
        + (f", {m['gpu_memory_gib']:.0f} GiB, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}" if m.get("gpu") else "")
        + f"; torch {m.get('torch')}, Python {m.get('python')}; {results.get('elapsed_s', 0):.0f} s in all"
        + (" (**dry run: tiny networks, not a measurement**)" if st.get("tiny") else "")
        + f". TF32 convolutions (cuDNN default): {m.get('cudnn_allow_tf32', '-')}."
    )
    out.append("")
    if "parity" in s and s["parity"]:
        out += ["### Parity (error = max |output - official float64| / max |official|, 4096 samples)", ""]
        modes = sorted({k for rows in s["parity"].values() for k in rows})
        out.append("| variant | " + " | ".join(modes) + " |")
        out.append("|---|" + "---|" * len(modes))
        for variant, rows in s["parity"].items():
            cells = []
            for k in modes:
                r = rows.get(k)
                cells.append("-" if r is None else f"{r['error']:.1e}" + ("" if r["finite"] else " (non-finite)"))
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
        out += ["", "float32 goal: error < 1e-4 (plain = faithful module, fast = optimize_for_inference).", ""]
    if s.get("pipeline"):
        out += ["### Official pipeline cases: float32 vs AMP (float16) sliding window", ""]
        out.append("| case | network grid | mirroring | float32 (s) | AMP (s) | label agreement | max prob. diff | histogram vs official: fp32 / AMP |")
        out.append("|---|---|---|---|---|---|---|---|")
        for case, r in s["pipeline"].items():
            hist = f"{_f(r.get('histogram_mismatch_fp32_vs_official'), '{:.4f}')} / {_f(r.get('histogram_mismatch_amp_vs_official'), '{:.4f}')}"
            out.append(
                f"| {case} | {'×'.join(map(str, r['grid']))} | {'on' if r['mirroring'] else 'off'} | {r['fp32_s']:.2f} | "
                f"{r['amp_s']:.2f} | {r['label_agreement_fp32_vs_amp']:.4f} | {r['max_prob_diff_fp32_vs_amp']:.2e} | {hist} |"
            )
        out.append("")
    if s.get("fullct") or s.get("fullct_mirror"):
        out += ["### Full-size CT (512×512×300 over 400×400×450 mm, resampled to each variant's spacing), AMP", ""]
        out.append("| variant | network grid | windows | fast (s) | peak GPU memory | mirrored, 8 flips (s) | peak GPU memory |")
        out.append("|---|---|---|---|---|---|---|")
        variants = list(dict.fromkeys([*s.get("fullct", {}), *s.get("fullct_mirror", {})]))
        for v in variants:
            a, b = s.get("fullct", {}).get(v, {}), s.get("fullct_mirror", {}).get(v, {})
            r = a or b
            out.append(
                f"| {v} | {'×'.join(map(str, r['grid']))} | {r['windows']} | {_f(a.get('seconds'), '{:.1f}')} | "
                f"{_f(a.get('peak_gpu_gib'), '{:.1f} GiB')} | {_f(b.get('seconds'), '{:.1f}')} | {_f(b.get('peak_gpu_gib'), '{:.1f} GiB')} |"
            )
        out += ["", "Goal: under 10 s per variant (fast mode). Time includes the CPU-side stitching (as in `unetrpp segment`).", ""]
    if s.get("batch", {}).get("synapse_amp"):
        b = s["batch"]
        out += ["### Windows per forward pass (synapse, optimized, AMP)", ""]
        out.append("| batch | fits | latency (s) | windows/s | peak GPU memory |")
        out.append("|---|---|---|---|---|")
        for n, r in b["synapse_amp"].items():
            out.append(f"| {n} | {'yes' if r['fits'] else 'no'} | {_f(r.get('seconds'), '{:.3f}')} | "
                       f"{_f(r.get('windows_per_s'), '{:.1f}')} | {_f(r.get('peak_gpu_gib'), '{:.1f} GiB')} |")
        out += ["", f"Largest batch tried that fits: {b.get('largest_fitting')} (limited by {b.get('limited_by')}); "
                f"memory per window {_f(b.get('gib_per_window'), '{:.2f} GiB')}, estimated fit at 90 % of the card: "
                f"{_f(b.get('estimated_fitting'), '{}')}.", ""]
    if s.get("oom"):
        o = s["oom"]
        out += ["### Out-of-memory fallback, forced with a memory cap (synapse, AMP)", ""]
        if o.get("forced") is False:
            out += ["Not forced (no CUDA device: a memory cap needs one); the predictor calls below ran uncapped.", ""]
        out.append("| case | cap | batch asked | time (s) | warnings | label agreement vs uncapped | max prob. diff |")
        out.append("|---|---|---|---|---|---|---|")
        for k in ("halve_batch", "to_cpu"):
            if k in o:
                r = o[k]
                warns = "; ".join(r["warnings"]) or "none"
                out.append(f"| {k} | {_f(r['cap_gib'], '{:.2f} GiB')} | {r['batch_asked']} | {r['seconds']:.1f} | {warns} | "
                           f"{r['label_agreement_vs_uncapped']:.4f} | {r['max_prob_diff_vs_uncapped']:.1e} |")
        out.append("")
    if s.get("train"):
        out += ["### One training iteration per recipe (deep supervision, Dice+CE, SGD; median of the timed iterations)", ""]
        out.append("| recipe | batch | patch | AMP | s/iteration | peak GPU memory |")
        out.append("|---|---|---|---|---|---|")
        for k, r in s["train"].items():
            out.append(f"| {k} | {r['batch_size']} | {'×'.join(map(str, r['patch']))} | {'on' if r['amp'] else 'off'} | "
                       f"{r['s_per_iteration']:.3f} | {_f(r.get('peak_gpu_gib'), '{:.1f} GiB')} |")
        out.append("")
    c = s.get("compile", {}).get("synapse")
    if c:
        out += ["### torch.compile (synapse optimized, batch 2)", ""]
        if "error" in c:
            out += [f"Not measured: {c['error']}.", ""]
        else:
            out += [
                "| backend | eager (s) | compiled (s) | first call incl. compiling (s) | speed-up | difference vs eager |",
                "|---|---|---|---|---|---|",
                f"| {c['backend']} | {c['eager_s']:.3f} | {c['compiled_s']:.3f} | {c['first_call_s']:.1f} | "
                f"{c['speedup']:.2f}x | {c['rel_diff_vs_eager']:.1e} |",
                "",
            ]
    if results.get("errors"):
        out += ["Sections that failed: " + "; ".join(f"{k}: `{v}`" for k, v in results["errors"].items()), ""]
    if results.get("skipped"):
        out += ["Skipped for time: " + ", ".join(results["skipped"]), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("--markdown", type=Path, help="replace the GPU section of this file (e.g. docs/benchmarks.md)")
    a = p.parse_args(argv)
    try:
        results = json.loads(a.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {a.results}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(results, dict) or "sections" not in results or "machine" not in results:
        print(f"error: {a.results} is not a results file of benchmarks/gpu.py", file=sys.stderr)
        return 2
    text = render(results)
    if a.markdown:
        write_section(a.markdown, SECTION, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
