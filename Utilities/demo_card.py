"""Regenerate the model card (manifest `card`) of the demo model from its training case, and measure
its calibration on a held-out case (issue 19). Weights are not touched.

    python Utilities/demo_card.py [--write] [--package Resources/models/demo-abdomen-ct]

Card: intensities, spacing, extent, voxel order, label presence/volumes from the one training case
(TotalSegmentator's example_ct_sm with its labels remapped to BTCV ids, as `unetrpp_train.demo`).
Calibration: the export fits the temperature on the validation cases; the demo's only validation
case is its training case, where the overfitted network is, if anything, under-confident (T < 1), and
that temperature makes a held-out case worse. So the demo's temperature is fitted on one half of the
held-out 20-slice DICOM CT (another patient; TotalSegmentator labels resampled onto the series grid)
and its ECE measured before/after on the other half (both printed, with the training-case fit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "UNETRPlusPlus"), str(ROOT / "Training")]

from unetrpp.image import Image, read_image  # noqa: E402
from unetrpp.package import load  # noqa: E402
from unetrpp.preprocess import preprocess  # noqa: E402
from unetrpp.quality import card as qc  # noqa: E402
from unetrpp_train.demo import remap_totalseg, shared_data_dir  # noqa: E402


def network_probs(model, images, label):
    import torch

    volume, state, lab = preprocess(images, model.manifest, label=label)
    probs = model.predict(torch.from_numpy(volume), device="cpu", fast=True).numpy()
    return probs, lab


def slab_case(data: Path) -> tuple[Image, np.ndarray]:
    ct = read_image(data / "ct_dicom" / "example_ct_dicom")
    seg = sitk.ReadImage(str(data / "ct_dicom" / "example_seg_dicom.nii.gz"))
    on_grid = sitk.Resample(seg, ct.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
    return ct, remap_totalseg(sitk.GetArrayFromImage(on_grid))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", default=str(ROOT / "Resources" / "models" / "demo-abdomen-ct"))
    ap.add_argument("--write", action="store_true", help="write the card into the package's model.json")
    args = ap.parse_args()
    data = shared_data_dir()
    package = Path(args.package)
    model = load(package)
    doc = json.loads((package / "model.json").read_text())
    ct = read_image(data / "ct" / "example_ct_sm.nii.gz")
    label = remap_totalseg(sitk.GetArrayFromImage(sitk.ReadImage(str(data / "ct" / "example_seg.nii.gz"))))
    values = [l["value"] for l in doc["labels"]]
    card = qc.card_from_cases([({"ct": ct}, label)], doc["inputs"], values,
                              notes="Computed from the one training case (TotalSegmentator example_ct_sm, labels "
                                    "remapped to BTCV ids): ranges are a single point; checks widen them.")
    t0 = time.perf_counter()
    probs, lab = network_probs(model, {"ct": ct}, label)
    train_cal = qc.calibration(probs, lab, fitted_on="the training case")
    print(f"fitted on the training case: T {train_cal['temperature']} ({time.perf_counter() - t0:.1f} s); ECE there "
          f"{train_cal['ece_before']:.4f} -> {train_cal['ece_after']:.4f}")
    slab, slab_label = slab_case(data)
    p, y = network_probs(model, {"ct": slab}, slab_label)
    half = p.shape[1] // 2  # network grid (K, z, y, x): fit on the first z half, measure on the second
    fit_p, fit_y = p[:, :half].reshape(p.shape[0], -1), y[:half].ravel()
    test_p, test_y = p[:, half:].reshape(p.shape[0], -1), y[half:].ravel()
    t = qc.fit_temperature(fit_p, fit_y)
    before = qc.expected_calibration_error(test_p, test_y)
    after = qc.expected_calibration_error(qc.apply_temperature(test_p, t), test_y)
    with_train_t = qc.expected_calibration_error(qc.apply_temperature(test_p, train_cal["temperature"]), test_y)
    card["calibration"] = {"temperature": t, "cases": 1, "ece_before": round(before, 5), "ece_after": round(after, 5),
                           "fitted_on": "held-out CT (TotalSegmentator example_ct_dicom), its feet-ward half; ECE on the "
                                        "head-ward half"}
    qc.add_reference_uncertainty(card, [probs], t)  # the validation (= training) case, with the temperature
    print(f"held-out DICOM CT: T {t} fitted on {half} of {p.shape[1]} network slices; ECE on the others "
          f"{before:.4f} -> {after:.4f} (with the training-case T {train_cal['temperature']}: {with_train_t:.4f})")
    print(json.dumps(card, indent=1)[:3000])
    if args.write:
        doc["card"] = card
        doc["schema_version"] = 2
        (package / "model.json").write_text(json.dumps(doc, indent=2) + "\n")
        print("wrote", package / "model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
