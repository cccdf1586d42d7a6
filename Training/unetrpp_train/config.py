"""Training configuration: one JSON recipe per benchmark (configs/<dataset>.json), overridable from
the command line. The recipe's canonical JSON is hashed; the hash goes into every checkpoint and
into the exported model package's provenance.

Defaults reproduce the official UNETR++ trainers (Amshaker/unetr_plus_plus @ dcba1c6, paths below relative
to unetr_pp/; nnU-Net v1 derived): SGD lr 1e-2, momentum 0.99 Nesterov, weight decay 3e-5, poly decay
(exponent 0.9) per epoch, 1000 epochs x 250 iterations, gradient clipping at norm 12, float32 (no AMP),
Dice + cross-entropy with deep-supervision weights 4/7, 2/7, 1/7, and nnU-Net's "moreDA" augmentation
with a third of the patches forced to contain foreground. Where a value is the official one, the field's
docstring names the file:line it comes from; docs/training.md has the side-by-side table.
`unetrpp-train recipe NAME` prints a recipe fully resolved.
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
from unetrpp.jsonio import read_json_file

from .datasets import KINDS

log = logging.getLogger(__name__)

KNOWN_DATASETS = tuple(KINDS)  # the one table: unetrpp_train.datasets


class ConfigError(UnetrppError, ValueError):
    """A training configuration that cannot be used (unknown key, bad value, missing file)."""


@dataclass
class AugmentConfig:
    """nnU-Net v1 "moreDA" augmentation as the official trainers configure it
    (training/data_augmentation/data_augmentation_moreDA.py:45-111 with default_data_augmentation.py:35-104 and
    the trainers' setup_DA_params, e.g. unetr_pp_trainer_acdc.py:431-483), transforms of batchgenerators 0.21.
    Probabilities are per sample unless the name says per channel."""

    enabled: bool = True
    dummy_2d: bool = False
    """the plan's do_dummy_2D_data_aug (Trainer_*.py process_plans): spatial transform in-plane only (rotation
    about the z axis up to rotation_deg[0], in-plane scaling) and no low-resolution simulation along z"""
    rotation_prob: float = 0.2
    """p_rot (default_data_augmentation.py:55)"""
    rotation_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    """max rotation about the (z, y, x) array axes in degrees (unetr_pp_trainer_*.py setup_DA_params: +-30;
    dummy 2D: +-180 about z only, default_data_augmentation.py:96-98)"""
    scale_prob: float = 0.2
    """p_scale (default_data_augmentation.py:48)"""
    scale_range: tuple[float, float] = (0.7, 1.4)
    """(unetr_pp_trainer_acdc.py:478); half of the factors below 1, half above (batchgenerators
    augment_spatial); a factor s > 1 samples s times the patch extent (zoom out)"""
    sampling_scale_range: tuple[float, float] = (0.85, 1.25)
    """scale range the official code sizes the sampled region with: get_patch_size runs before scale_range is
    raised to 0.7-1.4 (unetr_pp_trainer_acdc.py:464-478)"""
    elastic_prob: float = 0.0
    """do_elastic False in every official trainer (unetr_pp_trainer_acdc.py:479); nnU-Net's default is 0.2"""
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    elastic_alpha: tuple[float, float] = (0.0, 900.0)
    noise_prob: float = 0.1
    """GaussianNoiseTransform(p_per_sample=0.1) (data_augmentation_moreDA.py:79)"""
    noise_sigma: tuple[float, float] = (0.0, 0.1)
    """batchgenerators' noise_variance (0, 0.1) is used as the standard deviation (augment_gaussian_noise
    draws it uniformly and passes it to np.random.normal as sigma)"""
    blur_prob: float = 0.2
    blur_p_per_channel: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    """GaussianBlurTransform((0.5, 1), different_sigma_per_channel, p_per_sample 0.2, p_per_channel 0.5)
    (data_augmentation_moreDA.py:80-81): one sigma for all axes, drawn per channel"""
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    """BrightnessMultiplicativeTransform (data_augmentation_moreDA.py:82): one factor per channel"""
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    """ContrastAugmentationTransform (data_augmentation_moreDA.py:90): per channel, half below 1, range kept"""
    lowres_prob: float = 0.25
    lowres_p_per_channel: float = 0.5
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    """SimulateLowResolutionTransform (data_augmentation_moreDA.py:91-94): per channel zoom, nearest
    downsampling, cubic upsampling; z kept in dummy 2D"""
    gamma_inverted_prob: float = 0.1
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    """GammaTransform per channel, retain_stats, half of the gammas below 1 (data_augmentation_moreDA.py:95-102)"""
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    mirror_prob: float = 0.5
    """per axis (batchgenerators augment_mirroring)"""


#: recipe fields whose value differs between the four official trainers, with where the official value comes from
OFFICIAL_SOURCES = {
    "amp": "run/run_training.py:69 (--fp32 defaults to True: no mixed precision)",
    "batch_size": "run/default_configuration.py:56 (ACDC 4), :63 (Synapse 2); Lung and BraTS: the plans' 3d_fullres "
                  "batch size, 2 by nnU-Net v1's planner (experiment_planner_baseline_3DUNet_v21.py)",
    "batch_dice": "run/default_configuration.py:93-98 (batch Dice only with more than one plans stage)",
    "epochs": "unetr_pp_trainer_*.py __init__ max_num_epochs = 1000",
    "iterations_per_epoch": "network_trainer_*.py __init__ num_batches_per_epoch = 250",
    "val_iterations": "network_trainer_*.py __init__ num_val_batches_per_epoch = 50",
    "optimizer": "unetr_pp_trainer_*.py initialize_optimizer_and_scheduler: SGD(lr 1e-2, momentum 0.99, nesterov); "
                 "Trainer_*.py __init__ weight_decay 3e-5",
    "poly_exponent": "unetr_pp_trainer_*.py maybe_update_lr: poly_lr(epoch, 1000, 1e-2, 0.9)",
    "grad_clip": "unetr_pp_trainer_*.py run_iteration: clip_grad_norm_(..., 12)",
    "ds_weights": "unetr_pp_trainer_*.py initialize: 1/2**i for 3 outputs, normalised",
    "oversample_foreground": "Trainer_*.py __init__ oversample_foreground_percent = 0.33",
}


@dataclass
class TrainConfig:
    dataset: str = "custom"
    """synapse | btcv | acdc | brats | lung | custom: selects the network variant and label names"""
    variant: str = "synapse"
    """official network variant whose settings are the base of `network`; "auto" (own data, the nnunet
    recipe): the variant, stem, patch, batch Dice and dummy-2D augmentation the plan chose (plan.json
    "recipe", see `resolve_for_plan`)"""
    network: dict[str, Any] = field(default_factory=dict)
    """overrides of unetrpp.network.NetworkConfig fields (patch_size, feature_size, stem_kernel ...)"""
    batch_size: int = 2
    """per process (ACDC 4: run/default_configuration.py:56; Synapse 2: :63; Lung/BraTS 2 from the plans)"""
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
    batch_dice: bool = False
    """Dice over the whole batch (True) or per sample, averaged (False). Official: batch Dice only when the
    nnU-Net plans have more than one stage (run/default_configuration.py:93-98); see docs/training.md"""
    oversample_foreground: float = 0.33
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    amp: bool = False
    """mixed precision (float16 autocast + GradScaler, CUDA only). Official: off (run/run_training.py:69,
    --fp32 defaults to True); `unetrpp-train train --amp` turns it on"""
    custom_split: bool = False
    """train a benchmark recipe on a split other than the official lists (splits/<dataset>.json)"""
    conv_init: str = "official"
    """official: the encoder's 3-D convolutions keep PyTorch's default initialisation, only its linear layers
    get trunc_normal(0.02) (network_architecture/synapse/model_components.py:43-50); trunc_normal: the encoder's
    Conv3d get trunc_normal(0.02) too (this project's behaviour before issue 10, with which the demo model was
    trained; the demo recipe and the tests' phantom runs keep it)"""
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
        aug = dict(data.pop("augment", {}) or {})
        if "noise_variance" in aug:  # recipes before the official noise semantics: variance v -> sigma in (0, v)
            v = aug.pop("noise_variance")
            aug.setdefault("noise_sigma", (0.0, float(v)) if isinstance(v, (int, float)) else tuple(v))
        aug.pop("elastic_magnitude", None)  # renamed elastic_alpha (batchgenerators' name)
        aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        bad = set(aug) - aug_known
        if bad:
            raise ConfigError(f"unknown augmentation setting(s): {', '.join(sorted(bad))}")
        tuples = {f.name for f in dataclasses.fields(AugmentConfig) if f.type.startswith("tuple")}
        aug = {k: tuple(v) if k in tuples else v for k, v in aug.items()}
        if "ds_weights" in data:
            data["ds_weights"] = tuple(data["ds_weights"])
        try:
            cfg = cls(**data, augment=AugmentConfig(**aug))
        except TypeError as exc:
            raise ConfigError(f"training recipe: {exc}") from exc
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
        if self.conv_init not in ("official", "trunc_normal"):
            fail("conv_init", f"must be 'official' or 'trunc_normal', got {self.conv_init!r}")

    def config_hash(self) -> str:
        """SHA256 (first 16 hex digits) of the canonical JSON of the recipe."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_for_plan(cfg: TrainConfig, plan: dict[str, Any]) -> TrainConfig:
    """The recipe with variant "auto" resolved from plan.json's "recipe" (written by `unetrpp-train plan` for
    own data): variant, stem kernel and patch (unless the recipe sets them in `network`), batch Dice and
    dummy-2D augmentation. Any other recipe is returned unchanged."""
    if cfg.variant != "auto":
        return cfg
    chosen = plan.get("recipe")
    if not isinstance(chosen, dict) or not {"variant", "stem_kernel", "patch_size"} <= set(chosen):
        raise ConfigError("this recipe takes its configuration from the plan (variant auto), but plan.json has no "
                          "'recipe': run `unetrpp-train plan DST --variant auto` first")
    data = cfg.to_dict()
    data["variant"] = chosen["variant"]
    net = dict(data.get("network") or {})
    net.setdefault("stem_kernel", list(chosen["stem_kernel"]))
    net.setdefault("patch_size", list(chosen["patch_size"]))
    data["network"] = net
    data["batch_dice"] = bool(chosen.get("batch_dice", data["batch_dice"]))
    data["augment"] = dict(data["augment"], dummy_2d=bool(chosen.get("dummy_2d", False)))
    if data["augment"]["dummy_2d"]:
        data["augment"]["rotation_deg"] = [180.0, 0.0, 0.0]
    return TrainConfig.from_dict(data)


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
    data = read_json_file(path, str(path), error=ConfigError)  # the one bounded reader
    cfg = TrainConfig.from_dict(data)
    log.info("training recipe %s (config hash %s)", path, cfg.config_hash())
    return cfg
