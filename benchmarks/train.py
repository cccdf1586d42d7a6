"""Training throughput per dataset recipe: iterations/s, peak memory and the share of the step spent
waiting for data, through the real trainer (data loader workers, augmentation, deep-supervision loss,
SGD step) on generated volumes of each dataset's shape (channels, classes, patch).

    python benchmarks/train.py                        # all recipes, full networks, CPU
    python benchmarks/train.py --reduced              # feature size 8 and half patches (slow CPUs)
    python benchmarks/train.py --device cuda --iterations 50            # the official recipes (fp32)
    python benchmarks/train.py --device cuda --iterations 50 --amp      # the same with mixed precision
    python benchmarks/train.py --markdown docs/benchmarks.md   # (re)write its "## Training" section

Each recipe runs in its own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own.
The first `--warmup` iterations are excluded from the timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_section  # benchmarks/common.py (the script's folder is on sys.path)

log = logging.getLogger("benchmarks.train")

RECIPES = ["synapse", "acdc", "brats", "lung"]  # btcv uses the synapse network and patch
SECTION = "## Training"


def make_dataset(dst: Path, recipe: str, patch: list[int], cases: int = 2) -> None:
    """Generated cases a little larger than the patch, with one blob per class."""
    import SimpleITK as sitk

    from unetrpp.network import variant_config
    from unetrpp.official_models import official_manifest

    man = official_manifest(recipe)
    cfg = variant_config(recipe)
    channels = [{"name": i["name"], "modality": i["modality"]} for i in man["inputs"]]
    shape = [int(p * 1.25) for p in patch]
    rng = np.random.default_rng(0)
    spacing_zyx = man["plan"]["target_spacing"]
    ids = [f"c{i}" for i in range(cases)]
    for case_id in ids:
        folder = dst / "cases" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        label = np.zeros(shape, np.uint8)
        grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij", sparse=True)
        for value in range(1, cfg.out_channels):
            c = [rng.uniform(0.3, 0.7) * s for s in shape]
            r = [max(s * 0.12, 2) for s in shape]
            label[sum(((g - cc) / rr) ** 2 for g, cc, rr in zip(grid, c, r)) <= 1] = value
        for ch in channels:
            base = 0.0 if ch["modality"] == "CT" else 100.0
            img = base + 20 * rng.standard_normal(shape) + 30 * label
            im = sitk.GetImageFromArray(img.astype(np.float32))
            im.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
            sitk.WriteImage(im, str(folder / f"image_{ch['name']}.nii.gz"))
        lab = sitk.GetImageFromArray(label)
        lab.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
        sitk.WriteImage(lab, str(folder / "label.nii.gz"))
    (dst / "dataset.json").write_text(json.dumps({
        "name": f"bench-{recipe}", "channels": channels,
        "labels": {"0": "background", **{str(v): f"class{v}" for v in range(1, cfg.out_channels)}},
        "cases": {i: {"images": {c["name"]: f"cases/{i}/image_{c['name']}.nii.gz" for c in channels},
                      "label": f"cases/{i}/label.nii.gz"} for i in ids},
        "splits": {"train": ids, "val": ids},
    }))
    (dst / "plan.json").write_text(json.dumps({
        "plan": {**man["plan"], "crop_to_nonzero": False}, "inputs": man["inputs"], "patch_size": patch}))


def reduced_network(recipe: str) -> dict:
    from unetrpp.network import variant_config

    cfg = variant_config(recipe)
    patch = [max(p // 2, k * 8) for p, k in zip(cfg.patch_size, cfg.stem_kernel)]
    patch = [p - p % (k * 8) for p, k in zip(patch, cfg.stem_kernel)]
    return {"patch_size": patch, "feature_size": 8}


def run_one(recipe: str, iterations: int, warmup: int, reduced: bool, device: str, workers: int, amp: bool = False) -> dict:
    import torch

    from unetrpp.network import variant_config
    from unetrpp_train.config import load_config
    from unetrpp_train.trainer import train

    cfg = load_config(recipe)
    net = reduced_network(recipe) if reduced else {}
    patch = net.get("patch_size", list(variant_config(recipe).patch_size))
    data = cfg.to_dict()
    # generated cases, not the official lists: custom_split; amp only when asked (the official runs are fp32)
    data.update(network=net, epochs=1, iterations_per_epoch=warmup + iterations, val_iterations=0,
                num_workers=workers, checkpoint_every=1, custom_split=True, amp=amp)
    from unetrpp_train.config import TrainConfig

    cfg = TrainConfig.from_dict(data)
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{recipe}-") as tmp:
        make_dataset(Path(tmp) / "ds", recipe, patch)
        result = train(cfg, Path(tmp) / "ds", Path(tmp) / "run", device=device)
    steps = result.step_seconds[warmup:] or result.step_seconds
    waits = result.wait_seconds[warmup:] or result.wait_seconds
    return {
        "recipe": recipe,
        "device": device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"),
        "patch": patch,
        "feature_size": net.get("feature_size", 16),
        "batch_size": cfg.batch_size,
        "amp": cfg.amp,
        "iterations": len(steps),
        "iterations_per_s": len(steps) / sum(steps),
        "seconds_per_iteration": sum(steps) / len(steps),
        "data_wait_share": sum(waits) / sum(steps),
        "peak_memory_mb": result.peak_memory_mb,
        "workers": workers,
    }


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    dev = rows[0]["device"] if rows else args.device
    lines = [
        SECTION,
        "",
        f"`python benchmarks/train.py{' --reduced' if args.reduced else ''}{' --amp' if args.amp else ''} --iterations {args.iterations} "
        f"--device {args.device}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
        f" (load average {os.getloadavg()[0]:.2f} after the runs), torch threads default, {args.workers} data-loader worker(s). "
        "The real trainer (augmentation, Dice+CE with deep supervision, SGD step, gradient clipping) on "
        "generated volumes of each recipe's channels, classes and patch.",
        "",
    ]
    if args.reduced:
        lines += ["**Reduced networks** (feature size 8, about half the paper's patch): the paper's networks "
                  "take minutes per iteration on 2 CPU cores, so these numbers show the pipeline's overheads, "
                  "not the paper's cost. Train the paper's configurations on a GPU.", ""]
    lines += [
        "| recipe | device | patch (z,y,x) | feature size | batch | AMP | it/s | s/it | s/epoch (250 it) | data wait | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {dev} | {'×'.join(map(str, r['patch']))} | {r['feature_size']} | {r['batch_size']} | "
            f"{'on' if r.get('amp') else 'off'} | {r['iterations_per_s']:.3f} | {r['seconds_per_iteration']:.2f} | "
            f"{250 * r['seconds_per_iteration']:.0f} | {100 * r['data_wait_share']:.0f} % | "
            f"{r['peak_memory_mb']:.0f} MB |"
        )
    lines += ["", "Data wait: time the training loop spent blocked on the data loader, as a share of the whole "
              "step (goal on GPU: under 10 %). Peak memory: max RSS of the process on CPU (includes the "
              "framework), max allocated on CUDA.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reduced", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (the official recipes are fp32)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="(re)write the '## Training' section of this file")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: run one recipe, print JSON
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("unetrpp_train").setLevel(logging.WARNING)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.iterations, args.warmup, args.reduced, args.device, args.workers,
                                             args.amp)))
        return 0
    rows = []
    for recipe in args.recipes:
        cmd = [sys.executable, __file__, "--one", recipe, "--iterations", str(args.iterations), "--warmup",
               str(args.warmup), "--device", args.device, "--workers", str(args.workers)] + (["--reduced"] if args.reduced else []) \
            + (["--amp"] if args.amp else [])
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            log.error("%s failed:\n%s", recipe, proc.stderr[-3000:])
            continue
        row = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        rows.append(row)
        log.info("%s: %.3f it/s, data wait %.0f %%, peak %.0f MB (%.0f s)", recipe, row["iterations_per_s"],
                 100 * row["data_wait_share"], row["peak_memory_mb"], time.perf_counter() - t)
    text = markdown(rows, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.markdown:
        write_section(Path(args.markdown), SECTION, text)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
