"""A training recipe fully resolved: what `unetrpp-train train` will run, as one JSON-able dict (printed by
`unetrpp-train recipe NAME`). Every value comes from the TrainConfig the trainer uses, so the printout
cannot drift from the code; official file:line references are in `OFFICIAL_SOURCES` and docs/training.md.
"""

from __future__ import annotations

from typing import Any

from unetrpp.network import variant_config

from .augment import sampling_size
from .config import OFFICIAL_SOURCES, TrainConfig
from .official import has_official_split, split_counts


def _rng(lo: float, hi: float) -> list[float]:
    return [float(lo), float(hi)]


def augmentation(cfg: TrainConfig) -> dict[str, Any]:
    """One entry per transform, in the order they run, with its probability and range."""
    a = cfg.augment
    if not a.enabled:
        return {"enabled": False}
    spatial_axes = "in-plane (2-D per z slice, dummy 2D)" if a.dummy_2d else "3-D"
    rotation = ({"about": "z", "degrees": [-a.rotation_deg[0], a.rotation_deg[0]]} if a.dummy_2d else
                {"about": ["z", "y", "x"], "degrees": [[-d, d] for d in a.rotation_deg]})
    return {
        "enabled": True,
        "dummy_2d": a.dummy_2d,
        "rotation": {"probability": a.rotation_prob, **rotation, "mode": spatial_axes},
        "scaling": {"probability": a.scale_prob, "range": _rng(*a.scale_range), "half_below_1": True,
                    "mode": spatial_axes},
        "elastic": {"probability": a.elastic_prob, "alpha": _rng(*a.elastic_alpha), "sigma": _rng(*a.elastic_sigma)},
        "spatial_interpolation": {"image": "cubic spline, zeros outside", "label": "linear per label"},
        "gaussian_noise": {"probability": a.noise_prob, "sigma": _rng(*a.noise_sigma)},
        "gaussian_blur": {"probability": a.blur_prob, "probability_per_channel": a.blur_p_per_channel,
                          "sigma": _rng(*a.blur_sigma)},
        "brightness_multiplicative": {"probability": a.brightness_prob, "range": _rng(*a.brightness_range),
                                      "per_channel": True},
        "contrast": {"probability": a.contrast_prob, "range": _rng(*a.contrast_range), "half_below_1": True,
                     "preserve_range": True, "per_channel": True},
        "low_resolution": {"probability": a.lowres_prob, "probability_per_channel": a.lowres_p_per_channel,
                           "zoom": _rng(*a.lowres_zoom), "downsample": "nearest", "upsample": "cubic",
                           "axes": "y, x" if a.dummy_2d else "z, y, x"},
        "gamma_inverted": {"probability": a.gamma_inverted_prob, "range": _rng(*a.gamma_range), "half_below_1": True,
                           "retain_stats": True, "per_channel": True},
        "gamma": {"probability": a.gamma_prob, "range": _rng(*a.gamma_range), "half_below_1": True,
                  "retain_stats": True, "per_channel": True},
        "mirror": {"probability_per_axis": a.mirror_prob, "axes": [["z", "y", "x"][i] for i in a.mirror_axes]},
    }


def resolve_recipe(cfg: TrainConfig) -> dict[str, Any]:
    base = variant_config(cfg.variant)
    patch = list(cfg.network.get("patch_size") or base.patch_size)
    out: dict[str, Any] = {
        "dataset": cfg.dataset,
        "variant": cfg.variant,
        "config_hash": cfg.config_hash(),
        "batch_size": cfg.batch_size,
        "patch_size": patch,
        "stem_kernel": list(cfg.network.get("stem_kernel") or base.stem_kernel),
        "sampled_region": list(sampling_size(patch, cfg.augment)),
        "amp": cfg.amp,
        "batch_dice": cfg.batch_dice,
        "initialisation": {"official": "official: encoder Linear trunc_normal(0.02), Conv3d PyTorch default",
                           "trunc_normal": "encoder Linear and Conv3d trunc_normal(0.02) (not the official)"}[cfg.conv_init],
        "loss": {"dice": "soft Dice without background, " + ("over the whole batch" if cfg.batch_dice else
                                                             "per sample, averaged"),
                 "cross_entropy": True, "deep_supervision_weights": [round(w, 6) for w in cfg.ds_weights]},
        "epochs": cfg.epochs,
        "iterations_per_epoch": cfg.iterations_per_epoch,
        "val_iterations": cfg.val_iterations,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum if cfg.optimizer == "sgd" else None,
                      "nesterov": cfg.nesterov if cfg.optimizer == "sgd" else False, "weight_decay": cfg.weight_decay},
        "schedule": {"name": "poly", "exponent": cfg.poly_exponent, "per": "epoch"},
        "grad_clip": cfg.grad_clip,
        "oversample_foreground": cfg.oversample_foreground,
        "augmentation": augmentation(cfg),
        "split": ({**split_counts(cfg.dataset), "required": not cfg.custom_split} if has_official_split(cfg.dataset)
                  else {"train": None, "test": None, "note": f"no official split for {cfg.dataset!r}: "
                        f"the dataset's '{cfg.split}' split is used"}),
        "official_sources": OFFICIAL_SOURCES,
    }
    return out


def recipe_text(r: dict[str, Any]) -> str:
    """The resolved recipe as aligned `key: value` lines (nested entries indented)."""
    lines = [f"recipe {r['dataset']} (variant {r['variant']}, config hash {r['config_hash']})"]

    def walk(d: dict[str, Any], indent: int) -> None:
        for k, v in d.items():
            if k == "official_sources":
                continue
            if isinstance(v, dict):
                lines.append(" " * indent + f"{k}:")
                walk(v, indent + 2)
            else:
                lines.append(" " * indent + f"{k}: {v}")

    walk({k: v for k, v in r.items() if k not in ("dataset", "variant", "config_hash")}, 2)
    return "\n".join(lines)
