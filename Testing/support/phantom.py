"""Generated training data for the training tests: small MRI-like phantoms with two labelled
structures (a bright ellipsoid and a dark box) in noise, written in the converted dataset layout
(dataset.json, cases/<id>/image_<channel>.nii.gz + label.nii.gz, plan.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (32, 48, 48)
SPACING_XYZ = (1.0, 1.0, 1.0)

# A reduced UNETR++ that trains in seconds on 2 CPU cores.
TINY_NETWORK = {
    "patch_size": [16, 32, 32], "stem_kernel": [2, 4, 4], "feature_size": 4, "depths": [1, 1, 1, 1],
    "proj_sizes": [16, 16, 8, 4], "decoder_depth": 1,
}


def phantom(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label = np.zeros(shape, dtype=np.uint8)
    c = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
    r = [rng.uniform(5, 8), rng.uniform(7, 11), rng.uniform(7, 11)]
    label[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1] = 1
    size = [int(rng.integers(6, 10)), int(rng.integers(8, 14)), int(rng.integers(8, 14))]
    for _ in range(50):
        start = [int(rng.integers(1, s - n - 1)) for s, n in zip(shape, size)]
        box = tuple(slice(a, a + n) for a, n in zip(start, size))
        if not label[box].any():
            label[box] = 2
            break
    image = 100 + 10 * rng.standard_normal(shape)
    image[label == 1] += 40
    image[label == 2] += 90
    return image.astype(np.float32), label


def write_phantom_dataset(dst: Path, n_train: int = 3, n_val: int = 1, seed: int = 0) -> Path:
    import SimpleITK as sitk

    dst = Path(dst)
    cases: list[dict[str, Any]] = []
    ids = [f"ph{i:02d}" for i in range(n_train + n_val)]
    for i, case_id in enumerate(ids):
        image, label = phantom(seed + i)
        folder = dst / "cases" / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for arr, name in ((image, "image_mri.nii.gz"), (label, "label.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(img, str(folder / name))
        cases.append({"id": case_id})
    (dst / "dataset.json").write_text(json.dumps({
        "name": "phantom",
        "channels": [{"name": "mri", "modality": "MR"}],
        "labels": {"0": "background", "1": "ellipsoid", "2": "box"},
        "cases": cases,
        "splits": {"train": ids[:n_train], "val": ids[n_train:]},
    }, indent=2))
    (dst / "plan.json").write_text(json.dumps({
        "plan": {"target_spacing": [1.0, 1.0, 1.0], "crop_to_nonzero": True},
        "inputs": [{"name": "mri", "modality": "MR", "normalization": {"scheme": "zscore", "nonzero_mask": False}}],
        "patch_size": TINY_NETWORK["patch_size"],
    }, indent=2))
    return dst


def tiny_config(**changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dataset": "phantom", "variant": "synapse", "network": dict(TINY_NETWORK),
        "batch_size": 2, "epochs": 6, "iterations_per_epoch": 25, "num_workers": 0, "checkpoint_every": 1,
        "val_iterations": 0, "seed": 7,
        # the settings these phantom runs were tuned with (and the demo model was trained with): the encoder's
        # Conv3d trunc_normal(0.02) and batch Dice; the official recipes use PyTorch's init and per-recipe Dice
        "conv_init": "trunc_normal", "batch_dice": True,
    }
    cfg.update(changes)
    return cfg


def write_config(path: Path, **changes: Any) -> Path:
    path.write_text(json.dumps(tiny_config(**changes), indent=2))
    return path
