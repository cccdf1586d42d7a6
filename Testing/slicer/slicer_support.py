"""Helpers for the headless Slicer tests: small real model packages and volumes read through
storage nodes."""

from __future__ import annotations

from pathlib import Path

import slicer


def make_package(path: Path, variant: str, spacing=(3.0, 3.0, 3.0), patch=(16, 32, 32), stem=(2, 4, 4),
                 name: str | None = None) -> Path:
    """A tiny deterministic-weights package with the official manifest of `variant` (labels,
    terminology, inputs), a coarse plan so the tests run in seconds."""
    from support.packages import tiny_config

    from unetrpp import save_package
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import set_deterministic_weights
    from unetrpp.official_models import official_manifest

    cfg = tiny_config(variant, patch=patch, stem=stem)
    network = set_deterministic_weights(build_network(cfg).float())
    manifest = official_manifest(variant, name=name or f"{variant}-tiny-test")
    manifest["architecture"] = cfg.to_dict()
    manifest["plan"]["target_spacing"] = list(spacing)
    manifest["provenance"] = {"source": "deterministic-weights", "notes": "test package: output is meaningless"}
    return save_package(network, manifest, path)


def load_volume(scene, path: Path, name: str | None = None, cls: str = "vtkMRMLScalarVolumeNode"):
    """Read a file (or one file of a DICOM series: ITK reads the whole series) into a new node."""
    node = scene.AddNewNodeByClass(cls, name or Path(path).name.split(".")[0])
    reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(node), f"could not read {path}"
    return node
