"""Small real model packages for the segmentation pipeline/CLI tests: tiny UNETR++ networks with
deterministic weights and the official manifests (labels, terminology, regions), with a coarse
target spacing so that a real volume needs one or two sliding windows on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

from unetrpp import save_package
from unetrpp.network import NetworkConfig, build_network
from unetrpp.network.deterministic import set_deterministic_weights
from unetrpp.official_models import official_manifest


def tiny_network_config(in_channels: int, out_channels: int, attention: str = "paired") -> NetworkConfig:
    return NetworkConfig(
        in_channels=in_channels, out_channels=out_channels, patch_size=(32, 64, 64), stem_kernel=(2, 4, 4),
        feature_size=8, depths=(1, 1, 1, 1), proj_sizes=(16, 16, 16, 8), decoder_proj_size=16, decoder_depth=1,
        attention=attention, variant="custom",
    )


def make_package(path: Path, variant: str = "synapse", target_spacing=(6.0, 6.0, 6.0), **changes) -> Path:
    """The official `variant` manifest with a tiny network (outputs are meaningless, geometry is real)."""
    channels = {"synapse": (1, 14, "paired"), "brats": (4, 4, "shared_ef"), "acdc": (1, 4, "paired")}[variant]
    cfg = tiny_network_config(*channels)
    network = set_deterministic_weights(build_network(cfg).float())
    manifest = official_manifest(variant, name=f"{variant}-tiny-test")
    manifest["architecture"] = cfg.to_dict()
    manifest["plan"]["target_spacing"] = list(target_spacing)
    manifest["provenance"] = {"source": "deterministic-weights", "notes": "test package: output is meaningless"}
    for section, values in changes.items():
        manifest[section].update(values)
    return save_package(network, manifest, path)
