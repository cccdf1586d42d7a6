"""Experiment planning: target spacing, normalisation and patch size from a converted dataset's training
cases, written to DST/plan.json in the model manifest's format (`plan` and `inputs[].normalization` of
UNETRPlusPlus/unetrpp/schema/model-v1.schema.json), so export copies both verbatim into the package.

Rules (nnU-Net v1 `ExperimentPlanner3D_v21`, which the official UNETR++ plans derive from):

* Target spacing: the per-axis median of the training cases' spacings. When the dataset is anisotropic
  (the coarsest median spacing is more than `anisotropy_threshold` (3) times the finest other one AND the
  median shape along that axis times 3 is smaller than the smallest other median extent in voxels), the
  coarse axis gets the 10th percentile of its spacings instead (never finer than the finest other axis).
* CT channels: foreground voxels (label > 0) of every training case, every `sample_stride`-th (10, as
  nnU-Net v1) in C order, pooled; clip range = their 0.5 and 99.5 percentiles; mean and sd (population)
  of the pooled samples before clipping (``ct_stats="unclipped"``, the default: what nnU-Net v1's
  DatasetAnalyzer stores as intensity properties and its preprocessor then uses) or after clipping
  (``"clipped"``, an option). Inference clips, then (x - mean) / sd.
* MR channels: per-image z-score; on the non-zero mask for BraTS (skull-stripped brains), as the
  official plans do.
* Patch size: fixed per variant as in the paper (synapse/btcv 64x128x128, acdc 16x160x160, brats 128^3,
  lung 32x192x192), overridable (small demo configurations).

All sizes and spacings in plan.json are in array order (z, y, x).
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from unetrpp.atomic import write_text
from unetrpp.errors import UnetrppError
from unetrpp.manifest import Plan
from unetrpp.official_models import official_manifest

from .layout import PLAN_FILE, case_paths, load_dataset, split_cases

log = logging.getLogger(__name__)

PLANNER_VERSION = 1
PATCH_SIZES = {"synapse": [64, 128, 128], "acdc": [16, 160, 160], "brats": [128, 128, 128], "lung": [32, 192, 192]}
VARIANT_ALIASES = {"btcv": "synapse", "tumor": "brats"}
ANISOTROPY_THRESHOLD = float(Plan.anisotropy_threshold)  # the engine's one default (unetrpp.manifest.Plan)
CT_PERCENTILES = (0.5, 99.5)


class PlanningError(UnetrppError, ValueError):
    """The dataset cannot be planned (no training cases, no foreground, unknown variant)."""


def variant_name(name: str) -> str:
    v = VARIANT_ALIASES.get(name.lower(), name.lower())
    if v not in PATCH_SIZES:
        raise PlanningError(f"unknown variant {name!r}; choose one of synapse, btcv, acdc, brats, lung")
    return v


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   threshold: float = ANISOTROPY_THRESHOLD) -> tuple[list[float], str]:
    """(target spacing, rule used) from per-case spacings and shapes, both in the same axis order."""
    sp = np.asarray(spacings, dtype=float)
    sh = np.asarray(shapes, dtype=float)
    target = np.median(sp, axis=0)
    median_shape = np.median(sh, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(sp.shape[1]) if i != worst]
    finest_other = max(target[i] for i in others)
    aniso_spacing = target[worst] > threshold * finest_other
    aniso_voxels = median_shape[worst] * threshold < min(median_shape[i] for i in others)
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(sp[:, worst], 10))
        if coarse < finest_other:
            coarse = max(finest_other, coarse) + 1e-5
        target[worst] = coarse
        return [float(v) for v in target], f"median; anisotropic: axis {worst} uses the 10th percentile of its spacings"
    return [float(v) for v in target], "median"


def ct_statistics(samples: np.ndarray, mode: str = "unclipped") -> dict[str, Any]:
    """Normalisation of a CT channel from pooled foreground samples."""
    if samples.size == 0:
        raise PlanningError("no foreground voxels (label > 0) in the training cases: CT statistics need labelled voxels")
    values = samples.astype(np.float64)
    lo, hi = (float(v) for v in np.percentile(values, CT_PERCENTILES))
    if mode == "clipped":
        values = np.clip(values, lo, hi)
    elif mode != "unclipped":
        raise PlanningError(f"CT statistics mode {mode!r}: use clipped or unclipped")
    std = float(values.std())
    if std <= 0:
        raise PlanningError("the foreground intensities of the training cases are constant (sd 0)")
    return {"scheme": "ct", "clip": [lo, hi], "mean": float(values.mean()), "std": std}


def foreground_samples(image: np.ndarray, label: np.ndarray, stride: int) -> np.ndarray:
    values = image[label > 0]
    values = values[np.isfinite(values)]
    return values[::stride]


def _official_input(variant: str, name: str) -> dict[str, Any]:
    for item in official_manifest(variant)["inputs"]:
        if item["name"] == name:
            return item
    return {}


def _check_schema(plan: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
    import jsonschema

    schema = json.loads(resources.files("unetrpp").joinpath("schema/model-v1.schema.json").read_text())
    for key, value in (("plan", plan), ("inputs", inputs)):
        sub = dict(schema["properties"][key], **{"$defs": schema.get("$defs", {})})
        try:
            jsonschema.validate(value, sub)
        except jsonschema.ValidationError as exc:  # a planner bug, not a user error
            raise RuntimeError(f"planned {key} breaks the manifest schema: {exc.message}") from exc


def plan_dataset(dst: str | os.PathLike[str], variant: str | None = None, patch_size: Sequence[int] | None = None,
                 split: str = "train", sample_stride: int = 10, ct_stats: str = "unclipped",
                 write: bool = True) -> dict[str, Any]:
    """Compute the plan of the converted dataset in DST (and write DST/plan.json atomically)."""
    data = load_dataset(dst)
    variant = variant_name(variant or data.get("variant") or data.get("dataset", ""))
    ids = split_cases(data, split)
    if not ids:
        raise PlanningError(f"split {split!r} of {Path(dst) / 'dataset.json'} is empty")
    if sample_stride < 1:
        raise PlanningError("sample stride must be >= 1")
    channels = data["channels"]
    spacings, shapes = [], []
    samples: dict[str, list[np.ndarray]] = {c["name"]: [] for c in channels if c["modality"] == "CT"}
    for case_id in ids:
        images, label_path = case_paths(data, case_id)
        rec = data["cases"][case_id]
        spacings.append(list(rec["spacing"])[::-1])
        shapes.append(list(rec["size"])[::-1])
        if samples:
            label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
            for name in samples:
                image = sitk.GetArrayFromImage(sitk.ReadImage(str(images[name])))
                samples[name].append(foreground_samples(image, label, sample_stride))
    spacing, rule = target_spacing(spacings, shapes)
    inputs = []
    intensity: dict[str, Any] = {}
    for ch in channels:
        item: dict[str, Any] = {"name": ch["name"], "modality": ch["modality"]}
        official = _official_input(variant, ch["name"])
        for key in ("description", "aliases"):
            if key in official:
                item[key] = official[key]
        if ch["modality"] == "CT":
            pooled = np.concatenate(samples[ch["name"]]) if samples[ch["name"]] else np.zeros(0)
            item["normalization"] = ct_statistics(pooled, ct_stats)
            intensity[ch["name"]] = {"samples": int(pooled.size), "stats": ct_stats, "stride": sample_stride,
                                     "min": float(pooled.min()), "max": float(pooled.max()),
                                     "median": float(np.median(pooled))}
        else:
            item["normalization"] = {"scheme": "zscore", "nonzero_mask": variant == "brats"}
        inputs.append(item)
    plan = {"target_spacing": spacing, "crop_to_nonzero": True, "anisotropy_threshold": ANISOTROPY_THRESHOLD}
    _check_schema(plan, inputs)
    patch = [int(v) for v in (patch_size or PATCH_SIZES[variant])]
    if len(patch) != 3 or min(patch) < 1:
        raise PlanningError(f"patch size {patch} must be three positive integers (z y x)")
    median_shape = np.median(np.asarray(shapes, float) * np.asarray(spacings, float) / np.asarray(spacing), axis=0)
    result = {
        "plan": plan,
        "inputs": inputs,
        "patch_size": patch,
        "variant": variant,
        "dataset": data.get("name"),
        "planner": {
            "version": PLANNER_VERSION,
            "split": split,
            "cases": len(ids),
            "axes": "z, y, x",
            "spacing_rule": rule,
            "median_spacing": [float(v) for v in np.median(np.asarray(spacings, float), axis=0)],
            "median_shape_at_target_spacing": [float(v) for v in median_shape],
            "patch_rule": "given" if patch_size else f"paper's fixed patch for {variant}",
            "intensity": intensity,
        },
    }
    if write:
        out = Path(dst) / PLAN_FILE
        write_text(out, json.dumps(result, indent=2) + "\n")
        log.info("plan written to %s: spacing %s mm (%s), patch %s", out, spacing, rule, patch)
    return result
