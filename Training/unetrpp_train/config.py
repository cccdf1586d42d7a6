"""Training configuration: one JSON recipe per benchmark (configs/<dataset>.json), overridable from
the command line. The recipe's canonical JSON is hashed; the hash goes into every checkpoint and
into the exported model package's provenance.

Defaults reproduce the official UNETR++ trainers (Amshaker/unetr_plus_plus @ dcba1c6,
`unetr_pp_trainer_<dataset>.py`, nnU-Net v1 derived): SGD lr 1e-2, momentum 0.99 Nesterov,
weight decay 3e-5, poly decay (exponent 0.9) per epoch, 1000 epochs x 250 iterations, gradient
clipping at norm 12, Dice + cross-entropy with deep-supervision weights 4/7, 2/7, 1/7, and
nnU-Net's "moreDA" augmentation (rotation +-30 deg, scaling 0.7-1.4, no elastic deformation,
gamma, mirroring, brightness/contrast, low-resolution simulation, Gaussian noise/blur) with a
third of the patches forced to contain foreground.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetrpp.errors import UnetrppError

log = logging.getLogger(__name__)

KNOWN_DATASETS = ("synapse", "btcv", "acdc", "brats", "lung")


class ConfigError(UnetrppError, ValueError):
    """A training configuration that cannot be used (unknown key, bad value, missing file)."""


@dataclass
class AugmentConfig:
    """nnU-Net "moreDA"-style augmentation; probabilities are per patch unless noted."""

    enabled: bool = True
    rotation_prob: float = 0.2
    rotation_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    """max rotation about the (z, y, x) array axes in degrees"""
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    elastic_prob: float = 0.0
    """the official UNETR++ trainers set do_elastic False; nnU-Net's default would be 0.2"""
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    elastic_magnitude: tuple[float, float] = (0.0, 200.0)
    noise_prob: float = 0.1
    noise_variance: float = 0.1
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    lowres_prob: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.3
    gamma_inverted_prob: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    mirror_prob: float = 0.5
    """per axis"""


@dataclass
class TrainConfig:
    dataset: str = "custom"
    """synapse | btcv | acdc | brats | lung | custom: selects the network variant and label names"""
    variant: str = "synapse"
    """official network variant whose settings are the base of `network`"""
    network: dict[str, Any] = field(default_factory=dict)
    """overrides of unetrpp.network.NetworkConfig fields (patch_size, feature_size, stem_kernel ...)"""
    batch_size: int = 2
    """per process; the official plans use 2 (nnFormer-derived plans files)"""
    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 0
    """patch-level validation batches after each epoch (official: 50; 0 disables)"""
    optimizer: str = "sgd"
    """sgd (the paper's) or adamw (betas 0.9/0.999; converges faster on tiny demo runs)"""
    lr: float = 1e-2
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    ds_weights: tuple[float, ...] = (4 / 7, 2 / 7, 1 / 7)
    batch_dice: bool = True
    oversample_foreground: float = 0.33
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = True
    """mixed precision (float16 autocast + GradScaler); used on CUDA only"""
    num_workers: int = 4
    seed: int = 12345
    checkpoint_every: int = 50
    """epochs between checkpoints (the last epoch always writes one)"""
    checkpoint_every_iterations: int = 0
    """additionally checkpoint every N iterations inside an epoch (0: off)"""
    tensorboard: bool = False
    split: str = "train"
    """name of the training split in dataset.json"""
    val_split: str = "val"
    notes: str = ""

    # ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = copy.deepcopy(data)
        data.pop("_comment", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        aug = data.pop("augment", {}) or {}
        aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        bad = set(aug) - aug_known
        if bad:
            raise ConfigError(f"unknown augmentation setting(s): {', '.join(sorted(bad))}")
        tuples = {"rotation_deg", "scale_range", "elastic_sigma", "elastic_magnitude", "blur_sigma",
                  "brightness_range", "contrast_range", "lowres_zoom", "gamma_range", "mirror_axes"}
        aug = {k: tuple(v) if k in tuples else v for k, v in aug.items()}
        if "ds_weights" in data:
            data["ds_weights"] = tuple(data["ds_weights"])
        cfg = cls(**data, augment=AugmentConfig(**aug))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ConfigError(f"training setting '{name}' {why}")

        for name in ("batch_size", "epochs", "iterations_per_epoch"):
            if int(getattr(self, name)) < 1:
                fail(name, f"must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adamw"):
            fail("optimizer", f"must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr <= 0:
            fail("lr", "must be > 0")
        if not 0 <= self.oversample_foreground <= 1:
            fail("oversample_foreground", "must be within [0, 1]")
        if len(self.ds_weights) < 1 or any(w < 0 for w in self.ds_weights):
            fail("ds_weights", "must be non-negative, one per network output")
        if self.checkpoint_every < 1:
            fail("checkpoint_every", "must be >= 1 (epochs)")

    def config_hash(self) -> str:
        """SHA256 (first 16 hex digits) of the canonical JSON of the recipe."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_path(name: str) -> Path | None:
    """The shipped recipe for a benchmark dataset name, or None."""
    path = Path(__file__).resolve().parent / "configs" / f"{name.lower()}.json"
    return path if path.is_file() else None


def load_config(config_or_dataset: str | Path) -> TrainConfig:
    """Load a recipe from a JSON file, or the shipped recipe of a dataset name."""
    path = Path(config_or_dataset)
    if not path.is_file():
        shipped = config_path(str(config_or_dataset))
        if shipped is None:
            raise ConfigError(
                f"{config_or_dataset!r} is neither a JSON file nor a known dataset "
                f"({', '.join(KNOWN_DATASETS)})"
            )
        path = shipped
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    cfg = TrainConfig.from_dict(data)
    log.info("training recipe %s (config hash %s)", path, cfg.config_hash())
    return cfg
