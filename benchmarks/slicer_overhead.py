"""Slicer module overhead: time from "click" (SegmentationLogic.start on a volume node in an MRML
scene) to segments in the scene, against the headless CLI (`unetrpp segment`) on the same input
with the same model and options. Both run the engine in a fresh process; the module adds writing
the input volume, reading the labelmap back and building the segmentation, table and display.

    python benchmarks/slicer_overhead.py [--model PKG] [--input CT] [--repeats 3] [--write-docs]

Needs slicer-core (headless MRML). Without --model it uses the bundled demo model when present,
else builds the full-size `synapse` network with deterministic weights (real compute, meaningless
output). --write-docs replaces the "## Slicer module overhead" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import synapse_package, write_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UNETRPlusPlus"))
SECTION = "## Slicer module overhead"
log = logging.getLogger("slicer_overhead")


def default_model(tmp: Path) -> tuple[Path, str]:
    demo = REPO / "Resources" / "models" / "demo-abdomen-ct"
    if (demo / "model.json").is_file():
        return demo, "bundled demo model (demo-abdomen-ct)"
    return synapse_package(tmp / "synapse-deterministic"), "full-size synapse network, deterministic weights"


def time_cli(model: Path, image: Path, out: Path, options: list[str]) -> float:
    cmd = [sys.executable, "-m", "unetrpp", "segment", "--model", str(model), str(image),
           "-o", str(out), "--progress", "none", "--overwrite", *options]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def time_slicer(model: Path, image: Path, fast: bool, device: str) -> tuple[float, int]:
    import slicer

    from UNETRPlusPlusLib.logic import SegmentationLogic

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    reader.SetFileName(str(image))
    assert reader.ReadData(node)
    logic = SegmentationLogic(scene)
    t0 = time.perf_counter()  # the click
    run = logic.start(model, {"ct": node}, fast=fast, device=device)
    while not run.poll():  # what the GUI timer does
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    if run.error is not None:
        raise run.error
    n = run.result.segmentation_node.GetSegmentation().GetNumberOfSegments()
    scene.Clear(1)
    return seconds, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--input", type=Path, default=REPO / "Resources" / "examples" / "example_ct_sm.nii.gz")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mirror", action="store_true", help="with mirroring (default: --fast, as the module's Fast mode)")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, model_text = (args.model, str(args.model)) if args.model else default_model(tmp)
        options = ["--device", args.device] + ([] if args.mirror else ["--fast"])
        time_cli(model, args.input, tmp / "warmup.nii.gz", options)  # warm the file cache
        cli, gui = [], []
        for i in range(args.repeats):  # interleaved so that load changes hit both alike
            cli.append(time_cli(model, args.input, tmp / "cli.seg.nrrd", options))
            seconds, n = time_slicer(model, args.input, fast=not args.mirror, device=args.device)
            gui.append(seconds)
            log.info("run %d: CLI %.2f s, Slicer module %.2f s (%d segments)", i + 1, cli[-1], gui[-1], n)
    c, g = statistics.median(cli), statistics.median(gui)
    overhead = (g - c) / c * 100
    verdict = "meets" if overhead <= 10 else "misses"
    text = f"""{SECTION}

Time from "click" (`SegmentationLogic.start` on a volume node in an MRML scene, polled as the
GUI timer does) until the segments are in the scene, against the headless CLI
(`unetrpp segment ... -o out.seg.nrrd`) on the same input, model and options; both start a fresh
engine process. Measured with `python benchmarks/slicer_overhead.py{' --mirror' if args.mirror else ''}` on
{platform.machine()} / {os.cpu_count()} CPU threads (load average {os.getloadavg()[0]:.2f} after the runs), device `{args.device}`, {'mirroring' if args.mirror else 'fast mode (no mirroring)'},
{args.repeats} interleaved runs, median.

| input | model | CLI (s) | Slicer module (s) | overhead |
|---|---|---|---|---|
| `{args.input.name}` | {model_text} | {c:.2f} | {g:.2f} | {overhead:+.1f} % |

The goal is at most 10 % overhead: this {verdict} it. The module's extra work is writing the input
volume (uncompressed NRRD), reading the labelmap back and building segments, table and display
nodes; the CLI instead writes a compressed `.seg.nrrd`. All runs: CLI {', '.join(f'{x:.2f}' for x in cli)} s;
module {', '.join(f'{x:.2f}' for x in gui)} s.
"""
    print(text)
    if args.write_docs:
        write_section(REPO / "docs" / "benchmarks.md", SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
