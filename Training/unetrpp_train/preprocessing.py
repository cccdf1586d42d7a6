"""Preprocess one training case (images + label) with the engine's preprocessing, the one inference uses.

`unetrpp.preprocess.preprocess(images, spec, label=...)` does what nnU-Net v1's training
preprocessing does with a case (crop to the non-zero region, resample the images and the label,
normalise), so training and inference cannot drift apart: the label is resampled as the official
code resamples it (`resize_segmentation`, order `plan.label_order`, nearest along a separately
resampled axis) and the non-zero mask for normalisation comes from it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def preprocess_spec(plan: dict[str, Any]) -> Any:
    """The engine's view of a training plan file (inputs with their normalisation, and the plan)."""
    from unetrpp.manifest import InputSpec
    from unetrpp.preprocess import PreprocessSpec

    inputs = [InputSpec(name=i["name"], modality=i.get("modality", ""), normalization=dict(i["normalization"]))
              for i in plan["inputs"]]
    return PreprocessSpec(name="training", inputs=inputs, plan=plan["plan"])


def preprocess_training_case(images: Sequence[Any], label: Any, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """images: SimpleITK images (one per input, same grid); label: SimpleITK image.
    Returns (C, D, H, W) float32 and (D, H, W) label array on the plan's grid."""
    import SimpleITK as sitk
    from unetrpp.image import Image
    from unetrpp.preprocess import preprocess

    spec = preprocess_spec(plan)
    named = {
        s.name: Image(sitk.GetArrayFromImage(img), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                      np.asarray(img.GetDirection(), dtype=float).reshape(3, 3))
        for s, img in zip(spec.inputs, images)
    }
    array, _, seg = preprocess(named, spec, label=sitk.GetArrayFromImage(label))
    return array, seg
