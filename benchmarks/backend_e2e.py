#!/usr/bin/env python
"""End to end: the default `unetrpp segment` (backend auto, OpenVINO on a CPU where installed)
against `--backend torch`, same CT, same model, same session (issue 21's goal: at least 1.5x
faster, labels at least 99.9 % equal).

    python benchmarks/backend_e2e.py                       # the shared example CT, 2 rounds
    python benchmarks/backend_e2e.py --size 256x256x150 --rounds 3 --json e2e.json

Each run is a fresh `python -m unetrpp segment MODEL CT -o OUT.nii.gz --overwrite` process (with
`--backend torch` for the PyTorch side; the default side passes no --backend), timed by this
script from start to exit (process wall time: interpreter start, imports, loading the package,
the pipeline, writing); the engine's own stage times come from its report (`timing_s`) and the
backend from `report["backend"]`. Rounds alternate the order (default, torch; then torch,
default, ...) so that a load change on a shared machine hits both alike; per-round ratios are
printed. One untimed default run first fills the ONNX export and OpenVINO blob caches (the
first run of a package pays them once, docs/benchmarks.md). Labels: the fraction of voxels on
which the two outputs of the last round agree.

Model: by default the full-size synapse network with deterministic weights and the official
synapse manifest (benchmarks/common.py; real compute, meaningless labels), `--fast` (no
mirroring) unless `--mirror`. The CT: the shared example CT (122x101x30) or, with --size, that CT
resampled (linear) to XxYxZ voxels over the same extent (benchmarks/segment.py's make_volume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "UNETRPlusPlus") not in sys.path:
    sys.path.append(str(REPO / "UNETRPlusPlus"))

from common import cpu_model, load_average, synapse_package  # noqa: E402

SHARED = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared"))
DEFAULT_CT = SHARED / "data" / "ct" / "example_ct_sm.nii.gz"
log = logging.getLogger("benchmarks.backend_e2e")


def segment(model: Path, ct: Path, out: Path, backend: str | None, fast: bool) -> dict:
    cmd = [sys.executable, "-m", "unetrpp", "segment", "--model", str(model), str(ct), "-o", str(out),
           "--overwrite", "--progress", "none"]
    if backend:
        cmd += ["--backend", backend]
    if fast:
        cmd.append("--fast")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "UNETRPlusPlus"),
                                                                     os.environ.get("PYTHONPATH", "")] if p)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads(out.with_name(out.name.replace(".nii.gz", ".report.json")).read_text())
    return {"wall_s": round(wall, 2), "timing_s": report["timing_s"], "backend": report["backend"]}


def agreement(a: Path, b: Path) -> float:
    import numpy as np
    import SimpleITK as sitk

    x = sitk.GetArrayViewFromImage(sitk.ReadImage(str(a)))
    y = sitk.GetArrayViewFromImage(sitk.ReadImage(str(b)))
    return float(np.mean(x == y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model package (default: full-size synapse, deterministic weights)")
    p.add_argument("--ct", type=Path, default=DEFAULT_CT)
    p.add_argument("--size", help="resample the CT to XxYxZ voxels over its extent first")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mirror", action="store_true", help="with mirroring (default: --fast)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "unetrpp-backend-e2e")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or args.workdir / "synapse-deterministic"
    if not (model / "model.json").is_file():
        log.info("building the full-size synapse package in %s", model)
        synapse_package(model)
    ct = args.ct
    if args.size:
        from segment import make_volume, parse_size

        ct = args.workdir / f"ct-{args.size}.nii.gz"
        if not ct.is_file():
            make_volume(args.ct, parse_size(args.size), ct)
    fast = not args.mirror
    outs = {"default": args.workdir / "default.nii.gz", "torch": args.workdir / "torch.nii.gz"}
    log.info("warm-up (fills the export caches): default backend")
    warm = segment(model, ct, outs["default"], None, fast)
    log.info("  %s: wall %.1f s, engine %.1f s", warm["backend"]["name"], warm["wall_s"], warm["timing_s"]["total"])
    before = load_average()
    rounds = []
    for r in range(args.rounds):
        order = ["default", "torch"] if r % 2 == 0 else ["torch", "default"]
        row = {}
        for side in order:
            row[side] = segment(model, ct, outs[side], "torch" if side == "torch" else None, fast)
            log.info("round %d %s (%s): wall %.1f s, engine total %.1f s (predict %.1f s)", r + 1, side,
                     row[side]["backend"]["name"], row[side]["wall_s"], row[side]["timing_s"]["total"],
                     row[side]["timing_s"]["predict"])
        row["ratio_wall"] = round(row["torch"]["wall_s"] / row["default"]["wall_s"], 3)
        row["ratio_engine"] = round(row["torch"]["timing_s"]["total"] / row["default"]["timing_s"]["total"], 3)
        row["ratio_predict"] = round(row["torch"]["timing_s"]["predict"] / row["default"]["timing_s"]["predict"], 3)
        log.info("round %d: torch / default = %.2fx wall, %.2fx engine total, %.2fx predict", r + 1,
                 row["ratio_wall"], row["ratio_engine"], row["ratio_predict"])
        rounds.append(row)
    equal = agreement(outs["default"], outs["torch"])
    result = {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average_before": before,
              "load_average_after": load_average(), "model": str(model), "ct": str(ct), "fast": fast,
              "label_agreement": equal, "rounds": rounds}
    log.info("labels equal: %.4f %%; load average %s -> %s", 100 * equal, before, result["load_average_after"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
