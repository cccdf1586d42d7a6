#!/usr/bin/env python
"""Labels of reduced-precision and alternative backends against float32 PyTorch on the shared
whole-pipeline cases (shared/pipeline: two CT crops, one four-channel MRI), the official networks
with the deterministic weights of the parity tests (issue 21: bf16 may be a default only where the
labels stay >= 99.9 % equal to float32).

    python benchmarks/precision.py [--json out.json]

For each case: preprocess once, then the sliding window (the case's own settings: overlap 0.5,
mirroring as recorded) with
  torch-f32          the engine's optimized PyTorch network, float32 (the reference)
  openvino-f32       the ONNX export in OpenVINO, float32
  openvino-bf16      OpenVINO with bfloat16 inference precision (only where the CPU has native bf16)
  torch-bf16         PyTorch CPU autocast to bfloat16 (the same arithmetic class as OpenVINO's bf16;
                     emulated where the CPU lacks it: slow, but the labels are what is measured)
  torch-f16          PyTorch CPU autocast to float16: the arithmetic class of the CUDA default
                     (float16 autocast, as the official predict.py:134 mixed_precision=True), emulated
                     on the CPU - a proxy, not a GPU measurement
  stitch-f16         float32 network, float16 stitching buffer (what large volumes use)
and the labels on the input grid (labels_to_input_grid) compared voxel by voxel with torch-f32.

The deterministic weights give nearly uniform class probabilities (a worst case for ties). A trained
network's peaked probabilities are what users see:

    python benchmarks/precision.py --model demo-abdomen-ct --scans SCAN [SCAN ...]

runs the same comparison with an installed or bundled model package on real scans (its own
inference defaults: overlap, mirroring).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "UNETRPlusPlus"))
PIPELINE = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared")) / "pipeline"
CASES = ["synapse_ct_crop", "synapse_ct_mirror", "tumor_mri_resampled"]
MRI = {"flair": "input_flair", "t1": "input_t1", "t1gd": "input_t1gd", "t2": "input_t2"}


class Autocast(torch.nn.Module):
    def __init__(self, module, dtype):
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x):
        with torch.autocast("cpu", dtype=self.dtype):
            return self.module(x).float()


def package(variant: str, root: Path):
    from unetrpp import load
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import set_deterministic_weights
    from unetrpp.official import import_official_checkpoint

    net = set_deterministic_weights(build_network(variant, deep_supervision=True).double()).float()
    ckpt = root / f"{variant}.model"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, ckpt)
    return load(import_official_checkpoint(ckpt, variant, root / variant))


def _cases(args, tmp: Path):
    """(case name, loaded model, {input name: image}, overlap, mirror axes) per case."""
    from unetrpp import load
    from unetrpp.image import read_image

    if args.model:
        from unetrpp.catalogue import resolve_model

        model = load(resolve_model(args.model))
        d = model.manifest.inference_defaults
        if len(model.manifest.inputs) != 1:
            raise SystemExit("--model takes single-input packages; multi-input models: use the pipeline cases")
        name = model.manifest.inputs[0].name
        for scan in args.scans:
            yield scan.name, model, {name: read_image(scan)}, d.overlap, tuple(d.mirror_axes)
        return
    models = {}
    for case in args.cases:
        d = PIPELINE / case
        info = json.loads((d / "case.json").read_text())
        variant = info["project_model_variant"]
        if variant not in models:
            models[variant] = package(variant, tmp)
        files = {"ct": d / "input_image.nii.gz"} if variant == "synapse" else {
            n: d / f"{s}.nii.gz" for n, s in MRI.items()}
        s = info["settings"]
        yield (case, models[variant], {n: read_image(f) for n, f in files.items()}, s["overlap"],
               tuple(s["mirror_axes"]) if s["mirroring"] else ())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path)
    p.add_argument("--cases", nargs="+", default=CASES)
    p.add_argument("--model", help="a model package (name or folder): real scans instead of the pipeline cases")
    p.add_argument("--scans", nargs="+", type=Path, default=[], help="scans for --model (files or DICOM folders)")
    args = p.parse_args()
    from unetrpp.backends import is_installed
    from unetrpp.image import read_image
    from unetrpp.network.fast import FastOptions, optimize_for_inference
    from unetrpp.predict import predict_probabilities
    from unetrpp.preprocess import labels_to_input_grid, preprocess

    bf16_native = False
    if is_installed("openvino"):
        import openvino as ov

        bf16_native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("UNETRPP_CACHE", str(Path(tmp) / "cache"))
        for case, model, images, overlap, mirror_axes in _cases(args, Path(tmp)):
            x, state = preprocess(images, model.manifest)
            x = torch.from_numpy(x)
            common = dict(patch_size=tuple(model.manifest.network_config.patch_size), overlap=overlap,
                          mirror_axes=mirror_axes, device="cpu")
            # oneDNN's direct bf16 convolution needs AVX-512/AVX-NE-CONVERT; F.conv3d emulates it elsewhere
            fast = optimize_for_inference(model.network, options=FastOptions(mkldnn_conv=False))
            runs = {"torch-f32": dict(network=model.network, backend="torch")}
            if is_installed("openvino"):
                runs["openvino-f32"] = dict(network=model.network, backend="openvino")
                if bf16_native:
                    runs["openvino-bf16"] = dict(network=model.network, backend="openvino", precision="bf16")
            runs["torch-bf16"] = dict(network=Autocast(fast, torch.bfloat16), backend="torch")
            runs["torch-f16"] = dict(network=Autocast(fast, torch.float16), backend="torch")
            runs["stitch-f16"] = dict(network=model.network, backend="torch", stitch_dtype="float16")
            reference = None
            for name, kw in runs.items():
                net = kw.pop("network")
                t = time.perf_counter()
                probs = predict_probabilities(net, x, weights_sha256=model.manifest.weights_sha256, **common, **kw)
                seconds = time.perf_counter() - t
                labels = labels_to_input_grid(probs, state).array
                if reference is None:
                    reference, ref_probs = labels, probs
                row = {"case": case, "run": name, "seconds": round(seconds, 2),
                       "label_agreement": float((labels == reference).mean()),
                       "max_prob_diff": float((probs.float() - ref_probs).abs().max()), "voxels": int(labels.size),
                       "classes_in_reference": int(len(np.unique(reference)))}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"model": args.model or "deterministic weights", "bf16_native_cpu": bf16_native, "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("| case | run | labels equal to torch-f32 | max prob. diff | time (s) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['run']} | {100 * r['label_agreement']:.3f} % | {r['max_prob_diff']:.1e} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
