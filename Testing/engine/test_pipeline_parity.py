"""Whole-pipeline parity with the official UNETR++ inference (../shared/pipeline, recorded with the
official code in its pinned environment): the same raw image and the same weights through
`unetrpp.pipeline.segment`, as a user runs it, give the official network input, labels and
confidence on the input grid.

Weights: the deterministic rule (version 2, `unetrpp.network.deterministic`) computed in float64,
stored as float32 in an official-format checkpoint (`state_dict` with `module.` prefixes, deep
supervision heads included) and imported with `unetrpp import-official`'s function, as the shared
README's "To reproduce" says. Bounds are the shared README's: network input within 1e-4, labels
agreeing on >= 99.95 % of voxels, max confidence difference <= 1e-3, identical geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from unetrpp import load
from unetrpp.image import read_image
from unetrpp.network import build_network
from unetrpp.network.deterministic import set_deterministic_weights
from unetrpp.official import import_official_checkpoint
from unetrpp.pipeline import SegmentOptions, segment
from unetrpp.preprocess import preprocess
from support.official_checkpoint import official_container, save_as_numpy1

CASES = ["synapse_ct_crop", "synapse_ct_mirror", "tumor_mri_resampled"]
MRI_FILES = {"flair": "input_flair", "t1": "input_t1", "t1gd": "input_t1gd", "t2": "input_t2"}


@pytest.fixture(scope="module")
def official_packages(tmp_path_factory):
    """variant -> model package imported from an official-format checkpoint of deterministic weights."""
    root = tmp_path_factory.mktemp("official-packages")
    out = {}
    for variant in ("synapse", "brats"):
        net = set_deterministic_weights(build_network(variant, deep_supervision=True).double()).float()
        ckpt = root / f"{variant}_model_final_checkpoint.model"
        # the published container (numpy-1 pickle of nnU-Net v1's save_checkpoint), as a user downloads it
        save_as_numpy1(official_container({"module." + k: v for k, v in net.state_dict().items()}), ckpt)
        out[variant] = load(import_official_checkpoint(ckpt, variant, root / variant))
        del net
    return out


def case_inputs(case_dir, variant):
    if variant == "synapse":
        return {"ct": case_dir / "input_image.nii.gz"}
    return {name: case_dir / f"{stem}.nii.gz" for name, stem in MRI_FILES.items()}


@pytest.mark.parametrize("case", CASES)
def test_network_input_equals_official(pipeline_dir, case):
    """The preprocessing alone (fast): the official network input, to float32 rounding."""
    case_dir = pipeline_dir / case
    info = json.loads((case_dir / "case.json").read_text())
    from unetrpp.official_models import official_manifest
    from unetrpp.manifest import Manifest

    data = official_manifest(info["project_model_variant"])
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    manifest = Manifest(data)
    images = {n: read_image(p) for n, p in case_inputs(case_dir, info["project_model_variant"]).items()}
    x, state = preprocess(images, manifest)
    official = np.load(case_dir / "official_preprocessed.npz")["data"]
    props = info["official_properties"]
    assert list(state.network_shape) == props["size_after_resampling"]
    assert [[s.start, s.stop] for s in state.crop_box] == props["crop_bbox"]
    assert x.shape == official.shape
    print(f"{case}: network input max difference {float(np.abs(x - official).max()):.3g}")
    assert float(np.abs(x - official).max()) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_segment_agrees_with_official(pipeline_dir, official_packages, tmp_path, case):
    case_dir = pipeline_dir / case
    info = json.loads((case_dir / "case.json").read_text())
    variant = info["project_model_variant"]
    settings = info["settings"]
    assert settings["step_size"] == 0.5 and settings["gaussian"] and not settings["mixed_precision"]
    model = official_packages[variant]
    mirror = settings["mirroring"]
    assert not mirror or list(settings["mirror_axes"]) == list(model.manifest.inference["mirror_axes"])
    out, conf = tmp_path / "labels.nii.gz", tmp_path / "confidence.nii.gz"
    torch.set_num_threads(2)
    result = segment(model, case_inputs(case_dir, variant), SegmentOptions(
        output=out, probabilities=conf, device="cpu", amp=False, overlap=settings["overlap"], fast=not mirror,
        backend="torch"))  # the parity of the default PyTorch path; other backends: benchmarks/precision.py
    assert result.report["options"]["mirror_axes"] == list(settings["mirror_axes"])

    official_labels = sitk.ReadImage(str(case_dir / "official_labels.nii.gz"))
    official_conf = sitk.ReadImage(str(case_dir / "official_confidence.nii.gz"))
    ours_labels, ours_conf = sitk.ReadImage(str(out)), sitk.ReadImage(str(conf))
    for ours, official in ((ours_labels, official_labels), (ours_conf, official_conf)):
        assert ours.GetSize() == official.GetSize()
        np.testing.assert_allclose(ours.GetSpacing(), official.GetSpacing(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours.GetOrigin(), official.GetOrigin(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours.GetDirection(), official.GetDirection(), rtol=0, atol=1e-6)
    labels = sitk.GetArrayFromImage(ours_labels)
    expected = sitk.GetArrayFromImage(official_labels)
    agreement = float((labels == expected).mean())
    confidence_diff = float(np.abs(sitk.GetArrayFromImage(ours_conf) - sitk.GetArrayFromImage(official_conf)).max())
    print(f"{case}: labels agree on {agreement:.6f} of {labels.size} voxels, max confidence difference {confidence_diff:.2e}")
    assert agreement >= 0.9995, f"{case}: labels agree on {agreement:.5f} of voxels"
    assert confidence_diff <= 1e-3, f"{case}: max confidence difference {confidence_diff:.2e}"
    # the labels are not trivial: several classes, as the official run found
    assert len(np.unique(expected)) > 1
