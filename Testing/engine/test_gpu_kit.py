"""The GPU kit (benchmarks/gpu.sh -> gpu.py -> gpu_table.py) dry-run on the CPU with tiny networks,
so that a lent GPU's first minutes are not spent on a typo. The run happens as on the GPU machine:
through gpu.sh, with the project on PYTHONPATH, and with SimpleITK and nibabel made unimportable
(the device image lacks them and the wheelhouse leaves them out)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

BLOCKER = '''
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"SimpleITK", "nibabel"}:
            raise ImportError(f"{name} is not on the GPU machine")
        return None
sys.meta_path.insert(0, _Missing())
'''


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, parity_dir):
    tmp = tmp_path_factory.mktemp("gpu-kit")
    (tmp / "block").mkdir()
    (tmp / "block" / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, OUT=str(tmp / "out"), UNETRPP_WHEELHOUSE=str(tmp / "no-wheels"), PYTHON=sys.executable,
               UNETRPP_SHARED=str(parity_dir.parent), PYTHONPATH=str(tmp / "block"))
    cmd = ["bash", str(BENCHMARKS / "gpu.sh"), "--device", "cpu", "--tiny", "--threads", "1", "--variants", "synapse",
           "--max-batch", "2", "--train-iterations", "1", "--compile-backend", "eager"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "out"


@pytest.mark.slow
def test_dry_run_completes_every_section(dry_run):
    results = json.loads((dry_run / "gpu_results.json").read_text())
    assert (dry_run / "gpu_log.txt").is_file()
    assert results["errors"] == {}
    # A reduced-precision mode may be skipped only because this processor lacks its instructions (float16
    # oneDNN convolutions need AVX-512 FP16 or AVX-NE-CONVERT: absent on e.g. AMD EPYC), with that reason.
    hardware = {k: v for k, v in results["skipped"].items() if v.startswith("hardware:")}
    assert results["skipped"] == hardware
    assert all(k.startswith("parity/") and k.rsplit("-", 1)[-1] in ("fp16", "bf16") for k in hardware), hardware
    s = results["sections"]
    assert set(s) == {"parity", "pipeline", "fullct", "oom", "batch", "train", "fullct_mirror", "compile"}
    parity = s["parity"]["synapse"]
    assert parity["plain-fp32"]["pass_1e-4"] and parity["fast-fp32"]["pass_1e-4"]
    modes = {"plain-fp32", "fast-fp32", "plain-fp16", "fast-fp16", "fast-bf16", "fast_sdpa-fp16"}
    assert modes == set(parity) | {k.split("/")[-1] for k in hardware if k.startswith("parity/synapse/")}
    reduced = [row["error"] for mode, row in parity.items() if not mode.endswith("fp32")]
    assert reduced and all(1e-5 < e < 0.1 for e in reduced)  # the lower precision really ran, same function
    assert set(s["pipeline"]) == {"synapse_ct_crop", "synapse_ct_mirror", "tumor_mri_resampled"}
    for row in s["pipeline"].values():
        assert row["label_agreement_fp32_vs_amp"] == 1.0  # AMP is CUDA-only: identical on the CPU
    assert s["fullct"]["synapse"]["finite"] and s["fullct_mirror"]["synapse"]["forwards"] == 8
    assert s["oom"]["forced"] is False and s["oom"]["halve_batch"]["label_agreement_vs_uncapped"] == 1.0
    assert s["batch"]["largest_fitting"] == 2
    assert s["train"]["synapse"]["batch_size"] == 2 and s["train"]["synapse"]["losses_finite"]
    assert s["compile"]["synapse"]["rel_diff_vs_eager"] < 1e-5


@pytest.mark.slow
def test_table_replaces_only_the_gpu_section(dry_run, tmp_path):
    doc = tmp_path / "benchmarks.md"
    shutil.copy(REPO / "docs" / "benchmarks.md", doc)
    before = doc.read_text()
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_table.py"), str(dry_run / "gpu_results.json"),
                           "--markdown", str(doc)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = doc.read_text()
    assert "## GPU" in after and "dry run" in after and "| synapse | 2 | 16×16×16 |" in after
    for heading in [line for line in before.splitlines() if line.startswith("## ") and line != "## GPU"]:
        start = before.index(heading)
        end = before.find("\n## ", start + 1)
        assert before[start:end if end > 0 else None].rstrip() in after


def test_table_refuses_a_file_that_is_not_kit_results(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"models": {}}')
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_table.py"), str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "Traceback" not in done.stderr


def test_kit_without_cuda_says_how_to_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cuda", "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--device cpu --tiny" in done.stderr and not (tmp_path / "r.json").exists()
