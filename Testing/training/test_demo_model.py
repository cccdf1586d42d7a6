"""The shipped demonstration model (Resources/models/demo-abdomen-ct): a small, documented package that
the engine loads, and whose Dice on the example CT is what its model card says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "Resources" / "models" / "demo-abdomen-ct"
LARGE_ORGANS = ["spleen", "right kidney", "left kidney", "liver", "stomach", "aorta"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_demo_package_is_small_documented_and_loads():
    import unetrpp

    size = sum(f.stat().st_size for f in DEMO.iterdir())
    assert size < 8 * 2**20, f"demo package is {size / 2**20:.1f} MB"
    model = unetrpp.load(DEMO)
    m = model.manifest.data
    assert m["name"] == "demo-abdomen-ct" and m["weights"]["dtype"] == "float16"
    assert "Apache-2.0" in m["license"] and m["provenance"]["source"] == "training"
    assert {lab["name"] for lab in m["labels"]} >= set(LARGE_ORGANS)
    assert all("terminology" in lab for lab in m["labels"])
    card = (DEMO / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "one" in card and "TotalSegmentator" in card
    assert "| liver |" in card  # the Dice table


@pytest.mark.slow
def test_demo_model_reproduces_its_recorded_dice_on_the_example_ct(data_dir):
    import unetrpp
    from unetrpp.pipeline import SegmentOptions, segment
    from unetrpp_train.demo import BTCV_NAMES, remap_totalseg

    model = unetrpp.load(DEMO)
    recorded = model.manifest.data["provenance"]["metrics"]["dice"]
    result = segment(model, {"ct": data_dir / "ct" / "example_ct_sm.nii.gz"}, SegmentOptions(device="cpu"))
    ref = remap_totalseg(sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct" / "example_seg.nii.gz"))))
    pred = result.labelmap.array
    assert pred.shape == ref.shape
    for value, name in BTCV_NAMES.items():
        p, r = pred == value, ref == value
        if not r.any():
            continue
        d = 2 * (p & r).sum() / (p.sum() + r.sum())
        assert d == pytest.approx(recorded[name], abs=0.02), name
    large = [recorded[n] for n in LARGE_ORGANS]
    assert np.mean(large) > 0.8, large
