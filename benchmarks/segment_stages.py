#!/usr/bin/env python
"""The non-network stages of a segmentation (preprocess, postprocess), before and after a change
of `unetrpp/preprocess.py`, in one process on the same inputs: a ratio measured under the same
machine load, which a whole-pipeline run cannot give on a busy machine.

    python benchmarks/segment_stages.py --before 12101ff            # three sizes of benchmarks/segment.py
    python benchmarks/segment_stages.py --before 12101ff --sizes 128x128x75 --repeat 1

Inputs: the CTs of `benchmarks/segment.py` (the shared example CT resampled to 128x128x75,
256x256x150 and 512x512x300 over its extent) and the official synapse manifest (full-size plan:
network grid 30x400x483 at every size). Postprocess input: 14 class probabilities on the network
grid, made once per run from smooth random logits (Gaussian-filtered noise, sigma 6 voxels in-plane,
so the label map has organ-sized regions) and the same for both versions; `--fragmented` uses
independent random probabilities per voxel instead (every label boundary everywhere: the worst case
of the fast export). Postprocess = `labels_to_input_grid` (labels only, as `unetrpp segment` without
`--probabilities`).

"before": `UNETRPlusPlus/unetrpp/preprocess.py` at the given git revision, loaded from the
repository's history as a module of the current `unetrpp` package (it uses `unetrpp.image`,
`unetrpp.errors`, `unetrpp.manifest`). The two versions alternate `--repeat` times; the median
is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "UNETRPlusPlus") not in sys.path:
    sys.path.append(str(REPO / "UNETRPlusPlus"))

from common import cpu_model, load_average  # noqa: E402
from segment import DEFAULT_SIZES, DEFAULT_SOURCE, make_volume, parse_size, size_text  # noqa: E402


def module_at(revision: str) -> Any:
    """unetrpp.preprocess as it was at `revision`, imported as `unetrpp._preprocess_<revision>`."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:UNETRPlusPlus/unetrpp/preprocess.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="preprocess-before-")) / "preprocess.py"
    path.write_text(source)
    name = f"unetrpp._preprocess_{revision}"
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "unetrpp"
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def probabilities(shape: tuple[int, ...], classes: int, fragmented: bool) -> Any:
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(0)
    if fragmented:
        p = rng.random((classes, *shape), dtype=np.float32)
    else:
        p = np.stack([ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), (1, 6, 6)) for _ in range(classes)])
        p = np.exp(p * 30, dtype=np.float32)
    p /= p.sum(0)
    return p


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git revision of the earlier preprocess.py")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fragmented", action="store_true", help="independent random probabilities per voxel")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import numpy as np

    from unetrpp import preprocess as after
    from unetrpp.image import read_image
    from unetrpp.manifest import Manifest
    from unetrpp.official_models import official_manifest

    before = module_at(args.before)
    data = official_manifest("synapse")
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    manifest = Manifest(data)
    load_before = load_average()
    rows = []
    probs = None
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"ct-{'x'.join(map(str, size))}.nii.gz"
            make_volume(DEFAULT_SOURCE, size, path)
            image = read_image(path)
            times: dict[str, dict[str, list[float]]] = {v: {"preprocess": [], "postprocess": []} for v in ("before", "after")}
            for _ in range(args.repeat):
                for version, module in (("before", before), ("after", after)):
                    t = time.perf_counter()
                    _, state = module.preprocess([image], manifest)
                    times[version]["preprocess"].append(time.perf_counter() - t)
                    if probs is None:
                        probs = probabilities(state.network_shape, manifest.network_config.out_channels, args.fragmented)
                    t = time.perf_counter()
                    labels = module.labels_to_input_grid(probs, state)
                    times[version]["postprocess"].append(time.perf_counter() - t)
                    del labels
            row = {"size_xyz": list(size), "voxels": int(np.prod(size)), "network_grid_zyx": list(state.network_shape)}
            for version in ("before", "after"):
                row[version] = {k: round(statistics.median(v), 3) for k, v in times[version].items()}
            rows.append(row)
            print(f"{size_text(size)}: preprocess {row['before']['preprocess']:.2f} -> {row['after']['preprocess']:.2f} s, "
                  f"postprocess {row['before']['postprocess']:.2f} -> {row['after']['postprocess']:.2f} s", flush=True)
    result = {"before": args.before, "fragmented": args.fragmented, "repeat": args.repeat, "cpu": cpu_model(),
              "load_average_before": load_before, "load_average_after": load_average(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
