"""Build small real model packages for tests: tiny UNETR++ configs with deterministic weights and
the official manifests (labels, plan, terminology) of a variant."""

from __future__ import annotations

from pathlib import Path

from unetrpp import save_package
from unetrpp.network import NetworkConfig, build_network
from unetrpp.network.deterministic import set_deterministic_weights
from unetrpp.official_models import official_manifest


def tiny_config(variant: str = "synapse", patch=(32, 64, 64), stem=(2, 4, 4)) -> NetworkConfig:
    base = {"synapse": (1, 14, "paired", 1, True), "acdc": (1, 4, "paired", 2, False),
            "brats": (4, 4, "shared_ef", 1, True), "lung": (1, 2, "paired", 2, False)}[variant]
    in_ch, out_ch, attention, conv_blocks, tied = base
    return NetworkConfig(
        in_channels=in_ch, out_channels=out_ch, patch_size=patch, stem_kernel=stem, feature_size=8,
        depths=(1, 1, 1, 1), proj_sizes=(16, 16, 16, 8), decoder_proj_size=16, decoder_depth=1,
        attention=attention, conv_blocks=conv_blocks, tied_ef=tied, variant=f"{variant}-tiny",
    )


def make_tiny_package(path: Path, variant: str = "synapse", **config_changes) -> Path:
    cfg = tiny_config(variant)
    if config_changes:
        cfg = cfg.replace(**config_changes)
    network = set_deterministic_weights(build_network(cfg).float())
    manifest = official_manifest(variant, name=f"{variant}-tiny-test")
    manifest["architecture"] = cfg.to_dict()
    manifest["provenance"] = {"source": "deterministic-weights", "notes": "test package: output is meaningless"}
    return save_package(network, manifest, path)
