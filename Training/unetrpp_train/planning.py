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
* Own data (variant ``auto``, `convert nnunet`): the configuration is chosen from the data by
  `choose_configuration` (stem from the anisotropy, patch from the median image at the target spacing
  within the Synapse patch's voxel budget, batch Dice and dummy-2D augmentation by nnU-Net v1's rules) and
  written to plan.json as ``recipe``; the ``nnunet`` training recipe takes it from there.

All sizes and spacings in plan.json are in array order (z, y, x).
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from unetrpp.atomic import write_text
from unetrpp.errors import UnetrppError
from unetrpp.manifest import Plan
from unetrpp.official_models import official_manifest

from .datasets import PATCH_SIZES, VARIANT_ALIASES
from .layout import PLAN_FILE, case_paths, load_dataset, split_cases

log = logging.getLogger(__name__)

PLANNER_VERSION = 1
ANISOTROPY_THRESHOLD = float(Plan.anisotropy_threshold)  # the engine's one default (unetrpp.manifest.Plan)
CT_PERCENTILES = (0.5, 99.5)


class PlanningError(UnetrppError, ValueError):
    """The dataset cannot be planned (no training cases, no foreground, unknown variant)."""


@dataclass(frozen=True)
class TrainingPlan:
    """DST/plan.json, typed: what planning decided for a dataset. Written only through `write` (by
    `plan_dataset`, which the demo dataset uses too, and by `unetrpp-train finetune` for the parent's plan);
    read by the trainer (`unetrpp_train.data.read_plan`), `recipe --data` and export (via run.json)."""

    plan: dict[str, Any]
    """the manifest's `plan` (target spacing z, y, x; crop to non-zero; ...)"""
    inputs: list[dict[str, Any]]
    """the manifest's `inputs`, each with its normalisation"""
    patch_size: list[int] | None = None
    """network patch (z, y, x); None: the recipe's"""
    variant: str | None = None
    recipe: dict[str, Any] | None = None
    """own data (variant auto): the configuration `choose_configuration` chose"""
    details: dict[str, Any] = field(default_factory=dict)
    """anything else planning records (dataset name, planner rules and statistics)"""

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan.json") -> "TrainingPlan":
        if not isinstance(data, dict):
            raise PlanningError(f"{where} must hold a JSON object; run `unetrpp-train plan` again")
        if "plan" not in data and "target_spacing" in data:  # the early flat form
            data = {"plan": {k: v for k, v in data.items() if k != "inputs"}, "inputs": data.get("inputs", [])}
        if "target_spacing" not in (data.get("plan") or {}):
            raise PlanningError(f"{where} has no plan.target_spacing")
        if not data.get("inputs"):
            raise PlanningError(f"{where} has no 'inputs' (normalisation per channel)")
        known = {"plan", "inputs", "patch_size", "variant", "recipe"}
        return cls(plan=dict(data["plan"]), inputs=[dict(i) for i in data["inputs"]],
                   patch_size=[int(v) for v in data["patch_size"]] if data.get("patch_size") else None,
                   variant=data.get("variant"), recipe=data.get("recipe"),
                   details={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plan": self.plan, "inputs": self.inputs}
        if self.patch_size is not None:
            out["patch_size"] = list(self.patch_size)
        if self.variant is not None:
            out["variant"] = self.variant
        out.update(self.details)
        if self.recipe is not None:
            out["recipe"] = self.recipe
        return out

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> "TrainingPlan":
        file = Path(root) / PLAN_FILE
        if not file.is_file():
            raise PlanningError(f"{file} is missing: run `unetrpp-train plan {root}` first")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeError) as exc:
            raise PlanningError(f"{file} is not valid JSON ({exc}); run `unetrpp-train plan {root}` again") from exc
        return cls.from_dict(data, str(file))

    def write(self, root: str | os.PathLike[str]) -> Path:
        out = Path(root) / PLAN_FILE
        write_text(out, json.dumps(self.to_dict(), indent=2) + "\n")
        return out


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


#: own data: the patch holds at most as many voxels as the paper's Synapse patch (64 x 128 x 128)
PATCH_BUDGET = 64 * 128 * 128
#: nnU-Net v1 (experiment_planner_baseline_3DUNet.py): a low-resolution stage (and with it batch Dice in the
#: official trainers) when the median image holds at least this many patches
LOWRES_RATIO = 4.0


def choose_configuration(median_shape: Sequence[float], spacing: Sequence[float],
                         patch_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The UNETR++ configuration for own data (array order z, y, x): median image size at the target
    spacing and the target spacing in, the recipe entries of plan.json out.

    - stem kernel (the first, patch-embedding downsampling) from the anisotropy r = z spacing / finest
      in-plane spacing: (4, 4, 4) when r < 1.5 (BraTS), (2, 4, 4) when r < 6 (Synapse, 3 vs 0.76 mm), else
      (1, 4, 4) (ACDC, 10 vs 1.56 mm); the patch must be a multiple of 8 x stem per axis.
    - patch: the median image rounded up to those multiples, then the axis with the largest physical extent
      shrunk one multiple at a time until it holds at most PATCH_BUDGET voxels (the paper's Synapse patch).
    - batch Dice when the median image holds >= 4 patches (the official trainers use batch Dice exactly when
      nnU-Net's planner adds a low-resolution stage); dummy-2D augmentation when the largest in-plane
      patch edge is more than 3 times the patch depth (nnU-Net v1's do_dummy_2D_data_aug rule).
    """
    shape = [float(v) for v in median_shape]
    sp = [float(v) for v in spacing]
    ratio = sp[0] / min(sp[1:])
    stem_z = 4 if ratio < 1.5 else 2 if ratio < 6 else 1
    stem = [stem_z, 4, 4]
    unit = [8 * k for k in stem]
    rules = [f"anisotropy {ratio:.2f} (z {sp[0]:.3g} mm / in-plane {min(sp[1:]):.3g} mm): stem {stem}"]
    if patch_size:
        patch = [int(v) for v in patch_size]
        bad = [i for i in range(3) if patch[i] % unit[i]]
        if bad:
            raise PlanningError(f"patch size {patch} must be a multiple of {unit} (8 x the stem {stem} chosen for this "
                                "data's anisotropy)")
        rules.append("patch given")
    else:
        patch = [max(u, int(np.ceil(m / u)) * u) for m, u in zip(shape, unit)]
        while int(np.prod(patch)) > PATCH_BUDGET:
            candidates = [i for i in range(3) if patch[i] > unit[i]]
            axis = max(candidates, key=lambda i: (patch[i] * sp[i], patch[i]))
            patch[axis] -= unit[axis]
        rules.append(f"patch: median image {[round(v) for v in shape]} rounded up to multiples of {unit}, the longest "
                     f"physical axis shrunk until <= {PATCH_BUDGET} voxels")
    patches = float(np.prod(shape)) / float(np.prod(patch))
    batch_dice = patches >= LOWRES_RATIO
    dummy_2d = max(patch[1:]) / patch[0] > ANISOTROPY_THRESHOLD
    rules.append(f"median image / patch = {patches:.2f}: batch Dice {'on' if batch_dice else 'off'} (on from "
                 f"{LOWRES_RATIO:g}, nnU-Net's low-resolution-stage rule)")
    rules.append(f"patch in-plane / depth = {max(patch[1:]) / patch[0]:.2f}: dummy-2D augmentation "
                 f"{'on' if dummy_2d else 'off'} (on above {ANISOTROPY_THRESHOLD:g})")
    return {"variant": "synapse", "stem_kernel": stem, "patch_size": patch, "batch_dice": bool(batch_dice),
            "dummy_2d": bool(dummy_2d), "rules": rules}


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
    requested = str(variant or data.get("variant") or data.get("dataset", ""))
    auto = requested.lower() == "auto"
    variant = "synapse" if auto else variant_name(requested)
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
        official = {} if auto else _official_input(variant, ch["name"])
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
    if patch_size is not None and (len(patch_size) != 3 or min(patch_size) < 1):
        raise PlanningError(f"patch size {list(patch_size)} must be three positive integers (z y x)")
    median_shape = np.median(np.asarray(shapes, float) * np.asarray(spacings, float) / np.asarray(spacing), axis=0)
    recipe = choose_configuration(median_shape, spacing, patch_size) if auto else None
    patch = [int(v) for v in (recipe["patch_size"] if recipe else patch_size or PATCH_SIZES[variant])]
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
            "patch_rule": "given" if patch_size else ("chosen from the data (recipe.rules)" if auto else
                                                        f"paper's fixed patch for {variant}"),
            "intensity": intensity,
        },
    }
    if recipe:
        result["recipe"] = recipe
    if write:
        out = TrainingPlan.from_dict(result).write(dst)
        log.info("plan written to %s: spacing %s mm (%s), patch %s", out, spacing, rule, patch)
    return result
