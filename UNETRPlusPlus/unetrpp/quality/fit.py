"""The model card of a training run, as the export writes it (torch: runs the network on the
validation cases to fit the calibration temperature and the in-domain uncertainty reference).

    add_card(manifest, network, run["dataset"])   # unetrpp_train.export, before save_package
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .card import add_reference_uncertainty, calibration, card_from_dataset, case_files

log = logging.getLogger(__name__)

#: validation cases predicted for the calibration (the first ones of the split)
MAX_CALIBRATION_CASES = 5


def _validation_probabilities(network: Any, manifest: Mapping[str, Any], root: Path,
                              case_ids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    import json

    import torch

    from ..image import read_image
    from ..manifest import inputs_of
    from ..predict import predict_probabilities
    from ..preprocess import PreprocessSpec, preprocess

    data = json.loads((root / "dataset.json").read_text())
    spec = PreprocessSpec(manifest["name"], inputs_of(manifest), manifest["plan"])
    inference = manifest.get("inference", {})
    device = next(network.parameters()).device
    out = []
    for cid in case_ids:
        image_files, label_file = case_files(root, data, cid, [i.name for i in spec.inputs])
        if label_file is None:
            continue
        images = {name: read_image(path) for name, path in image_files.items()}
        volume, _, label = preprocess(images, spec, label=read_image(label_file))
        p = predict_probabilities(network, torch.from_numpy(volume), patch_size=manifest["architecture"]["patch_size"],
                                  overlap=inference.get("overlap", 0.5), mirror_axes=(), device=device)
        out.append((p.numpy(), label))
    return out


def add_card(manifest: dict[str, Any], network: Any, dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Put the card into `manifest` (in place): statistics of the training cases, and, with
    validation cases, the temperature fitted on them and each label's in-domain entropy. A dataset
    that is no longer on disk leaves the manifest without a card (logged): no reference."""
    root = Path(str(dataset.get("root", "")))
    if not (root / "dataset.json").is_file():
        log.warning("model card: the training data %s is not on disk; the package gets no card", root)
        return manifest
    values = [int(l["value"]) for l in manifest["labels"]]
    card = card_from_dataset(root, list(dataset.get("train_cases", [])), manifest["inputs"], values)
    val = list(dataset.get("val_cases", []))[:MAX_CALIBRATION_CASES]
    cases = _validation_probabilities(network, manifest, root, val) if val else []
    if cases:
        probs = np.concatenate([p.reshape(p.shape[0], -1) for p, _ in cases], axis=1)
        labels = np.concatenate([y.ravel() for _, y in cases])
        card["calibration"] = calibration(probs, labels, fitted_on=f"{len(val)} validation case(s)", cases=len(val))
        add_reference_uncertainty(card, [p for p, _ in cases], card["calibration"]["temperature"])
    manifest["card"] = card
    log.info("model card: %d training case(s)%s", card["cases"],
             f", temperature {card['calibration']['temperature']}" if "calibration" in card else "")
    return manifest


__all__ = ["add_card"]
