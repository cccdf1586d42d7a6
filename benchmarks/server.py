#!/usr/bin/env python
"""The segmentation server on loopback: round-trip overhead against local runs, and a bounded load test.

    python benchmarks/server.py                                # demo model, --fast, CPU worker
    python benchmarks/server.py --jobs 20 --clients 4 --markdown docs/benchmarks.md

A real `unetrpp serve` (one CPU worker, token auth) on 127.0.0.1 with the bundled demo model;
case: shared/data/ct/example_ct_sm.nii.gz (0.48 MB upload, .seg.nrrd result). One torch thread in
every process (server worker, local CLI, this process).

1. Round trip: `unetrpp.client.segment_on_server` (upload, queue, poll every 0.5 s, download result
   and report) with the server warm (model loaded by a first job), against, on the same case, (a) a
   local `unetrpp segment` process (what a user without the server runs: start, import, load, run)
   and (b) `Segmenter.segment` in this process with the model already loaded (the engine work
   alone). Median of --repeats runs each, interleaved. Overhead = remote / local - 1.
2. Load test: --clients threads, each with its own HTTP client, submit --jobs jobs in total (each
   client one job at a time: upload, wait, download). Every result is compared voxel for voxel with
   the local result; the worker's resident set (VmRSS from /proc) is sampled after every finished
   job, to show whether memory grows with the number of jobs served.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# One torch thread in every process (the server's worker runs with --threads 1): a fair comparison,
# and stable on a shared machine where oversubscribed OpenMP threads stall.
os.environ["OMP_NUM_THREADS"] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from common import cpu_model, load_average, write_section  # noqa: E402
from support.server import DEMO_MODEL, EXAMPLE_CT, TOKENS, Server, write_tokens  # noqa: E402

SECTION = "## Segmentation server"
CLI = [sys.executable, "-m", "unetrpp"]


def labels(path: Path) -> np.ndarray:
    import slicerio

    return np.asarray(slicerio.read_segmentation(str(path))["voxels"])


def worker_pids(server_pid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server_pid and "spawn_main" in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
            pids.append(int(stat.parent.name))
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(args: argparse.Namespace) -> dict:
    from unetrpp.client import segment_on_server
    from unetrpp.outputs import OutputPlan
    from unetrpp.segmenter import Segmenter

    fast = {"fast": args.fast}
    with tempfile.TemporaryDirectory(prefix="unetrpp-bench-server-") as tmp:
        root = Path(tmp)
        server = Server(root / "data", write_tokens(root)[0], "--max-jobs-per-token", str(args.clients))
        try:
            load_before = load_average()
            remote = lambda out: segment_on_server(server.url, TOKENS[0], "demo-abdomen-ct", {"ct": EXAMPLE_CT},  # noqa: E731
                                                   out, options=fast)
            remote(root / "warm.seg.nrrd")  # the worker loads the model
            segmenter = Segmenter(DEMO_MODEL, "cpu")
            segmenter.segment(EXAMPLE_CT, OutputPlan.create(root / "warm-local.seg.nrrd"), **fast)
            times: dict[str, list[float]] = {"remote": [], "cli": [], "inproc": []}
            for i in range(args.repeats):
                t = time.perf_counter()
                remote(root / f"remote{i}.seg.nrrd")
                times["remote"].append(time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run([*CLI, "segment", "--model", str(DEMO_MODEL), str(EXAMPLE_CT), "-o",
                                str(root / f"cli{i}.seg.nrrd"), "--device", "cpu", "--progress", "none"]
                               + (["--fast"] if args.fast else []), check=True, capture_output=True)
                times["cli"].append(time.perf_counter() - t)
                t = time.perf_counter()
                segmenter.segment(EXAMPLE_CT, OutputPlan.create(root / f"inproc{i}.seg.nrrd"), **fast)
                times["inproc"].append(time.perf_counter() - t)
            reference = labels(root / "cli0.seg.nrrd")
            round_trip_identical = all(np.array_equal(labels(root / f"remote{i}.seg.nrrd"), reference)
                                       for i in range(args.repeats))

            workers = worker_pids(server.proc.pid)
            rss: list[float] = [sum(rss_mb(p) for p in workers)]
            results: list[bool] = []
            errors: list[str] = []
            lock = threading.Lock()
            per_client = [args.jobs // args.clients + (1 if c < args.jobs % args.clients else 0)
                          for c in range(args.clients)]

            def client(c: int) -> None:
                for j in range(per_client[c]):
                    out = root / f"load-{c}-{j}.seg.nrrd"
                    try:
                        remote(out)
                        ok = np.array_equal(labels(out), reference)
                    except Exception as exc:  # recorded: the benchmark reports failures, it does not hide them
                        ok = False
                        errors.append(f"{type(exc).__name__}: {exc}")
                    with lock:
                        results.append(ok)
                        rss.append(sum(rss_mb(p) for p in workers))

            t = time.perf_counter()
            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            load_wall = time.perf_counter() - t
            load_after = load_average()
        finally:
            server.stop()
    import torch

    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "fast": args.fast, "repeats": args.repeats, **{f"{k}_s": v for k, v in med.items()},
        "overhead_vs_cli": med["remote"] / med["cli"] - 1, "overhead_vs_inproc": med["remote"] / med["inproc"] - 1,
        "round_trip_identical": round_trip_identical, "jobs": args.jobs, "clients": args.clients,
        "completed": len(results), "identical": sum(results), "errors": errors[:5], "load_wall_s": load_wall,
        "worker_rss_mb": [round(x) for x in rss], "upload_mb": EXAMPLE_CT.stat().st_size / 2**20,
        "machine": f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, Python {sys.version.split()[0]}",
        "load_before": load_before, "load_after": load_after,
    }


def markdown(r: dict) -> str:
    rss = r["worker_rss_mb"]
    return "\n".join([
        SECTION, "",
        "Goals (issue 13): the round trip through `unetrpp serve` on loopback costs at most 10 % plus the transfer "
        "over a local `unetrpp segment` run of the same case; under a bounded load (20 jobs from 4 clients) every "
        "job completes with the local result and the memory stays flat. Script: `benchmarks/server.py` (its "
        "docstring gives the method; `--markdown` replaces only this section).", "",
        f"Measured on {r['machine']}; one CPU worker; one torch thread in every process; demo model, {'no mirroring (--fast)' if r['fast'] else 'mirroring'}, "
        f"case example_ct_sm.nii.gz ({r['upload_mb']:.2f} MB upload); load average (1, 5, 15 min) "
        f"{', '.join(map(str, r['load_before'] or []))} before, {', '.join(map(str, r['load_after'] or []))} after "
        "(the machine was shared with other work).", "",
        f"| run (median of {r['repeats']}) | time (s) |", "|---|---|",
        f"| server round trip (upload, queue, poll 0.5 s, download; worker warm) | {r['remote_s']:.2f} |",
        f"| local `unetrpp segment` process | {r['cli_s']:.2f} |",
        f"| local `Segmenter.segment`, model already loaded (engine work alone) | {r['inproc_s']:.2f} |", "",
        f"Round trip vs the local CLI run: **{r['overhead_vs_cli'] * 100:+.0f} %**; vs the engine work alone: "
        f"{r['overhead_vs_inproc'] * 100:+.0f} % (upload, polling interval, download). Results identical to local: "
        f"{'yes' if r['round_trip_identical'] else 'NO'}.", "",
        f"Load test: {r['jobs']} jobs from {r['clients']} concurrent clients: **{r['completed']} completed, "
        f"{r['identical']} identical to the local result** in {r['load_wall_s']:.1f} s"
        + (f"; errors: {'; '.join(r['errors'])}" if r["errors"] else "") + ". Worker resident set (MB) before the "
        f"load and after each finished job: {rss[0]} → {', '.join(map(str, rss[1:]))} (first {rss[1] if len(rss) > 1 else '-'}, "
        f"last {rss[-1]}).",
    ] + ([
        "", f"Caution: the load average exceeded the {os.cpu_count()} logical CPUs during the run (other jobs on the "
        "same machine), so all times are inflated; the local CLI run most (it imports torch and loads the model "
        "each time, which the warm server does not). The polling interval (0.5 s) alone can add up to 0.5 s to a "
        "round trip.",
    ] if (r["load_before"] or [0])[0] > (os.cpu_count() or 1) else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-fast", dest="fast", action="store_false")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--markdown", help=f"(re)write the '{SECTION}' section of this file")
    args = p.parse_args(argv)
    row = measure(args)
    print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    if args.markdown:
        write_section(Path(args.markdown), SECTION, markdown(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
