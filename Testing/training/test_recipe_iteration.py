"""One training iteration of each shipped recipe, GPU-free: the full-size UNETR++ of the recipe's variant
(feature size 16, depths 3-3-3-3, dims 32-256), the official batch size, the recipe's loss, optimiser,
augmentation (dummy 2D for ACDC/Synapse) and sampler, through the real `train()` on the CPU.

The official patches are too slow for a CPU CI (a Synapse step at 64x128x128 and batch 2 is about 300 GFLOP),
so the patch is reduced to the smallest the variant's stem allows, along the same code path; everything
else is the shipped recipe. On a GPU, `benchmarks/train.py --recipes` times full-patch epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from support.phantom import phantom

#: recipe -> (input channels, reduced patch with the variant's stem divisibility, official batch)
RECIPES = {
    "synapse": (1, [32, 64, 64], 2),
    "acdc": (1, [8, 64, 64], 4),
    "lung": (1, [16, 64, 64], 2),
    "brats": (4, [32, 32, 32], 2),
}


def write_dataset(dst: Path, channels: int) -> Path:
    names = [f"ch{i}" for i in range(channels)]
    ids = [f"c{i}" for i in range(2)]
    for i, case in enumerate(ids):
        image, label = phantom(i)
        folder = dst / "cases" / case
        folder.mkdir(parents=True)
        for k, name in enumerate(names):
            sitk.WriteImage(sitk.GetImageFromArray(image + 5 * k), str(folder / f"image_{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "label.nii.gz"))
    (dst / "dataset.json").write_text(json.dumps({
        "name": "phantom", "channels": [{"name": n, "modality": "MR"} for n in names],
        "labels": {"0": "background", "1": "ellipsoid", "2": "box"}, "cases": ids, "splits": {"train": ids}}))
    (dst / "plan.json").write_text(json.dumps({
        "plan": {"target_spacing": [1.0, 1.0, 1.0], "crop_to_nonzero": True},
        "inputs": [{"name": n, "modality": "MR", "normalization": {"scheme": "zscore", "nonzero_mask": False}}
                   for n in names]}))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_one_iteration_of_each_recipe_full_size_network_official_batch(name, tmp_path):
    from unetrpp.network import variant_config
    from unetrpp_train.config import TrainConfig, load_config
    from unetrpp_train.trainer import train

    channels, patch, batch = RECIPES[name]
    shipped = load_config(name)
    assert shipped.batch_size == batch
    data = shipped.to_dict()
    data.update(epochs=1, iterations_per_epoch=1, val_iterations=0, num_workers=0, custom_split=True,
                network={"patch_size": patch})
    # every augmentation transform fires, so the iteration exercises all of them
    data["augment"].update(rotation_prob=1.0, scale_prob=1.0, noise_prob=1.0, blur_prob=1.0, brightness_prob=1.0,
                           contrast_prob=1.0, lowres_prob=1.0, gamma_inverted_prob=1.0, gamma_prob=1.0)
    cfg = TrainConfig.from_dict(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = train(cfg, write_dataset(tmp_path / "ds", channels), tmp_path / "run", device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 1 and np.isfinite(result.final_loss)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    official = variant_config(name).to_dict()
    for key in ("feature_size", "depths", "dims", "num_heads", "stem_kernel", "proj_sizes", "hidden_size"):
        assert run["network"][key] == official[key], key  # the full-size network of the variant
    assert run["config"]["batch_size"] == batch and run["config"]["amp"] is False
    assert run["config"]["batch_dice"] == shipped.batch_dice
    ckpt = torch.load(tmp_path / "run" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert ckpt["next_step"] == 1 and ckpt["optimizer"]["param_groups"][0]["nesterov"]
