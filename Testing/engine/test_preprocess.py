"""unetrpp.preprocess on the real volumes in ../shared/data: a structure thresholded from the input
survives forward + inverse (Dice 1.0 without resampling, > 0.95 with, oblique included); the inverse
lands exactly on the first input's grid; multi-input alignment, ROI and normalisation."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from scipy import ndimage

from unetrpp.errors import InputImageError
from unetrpp.image import Image, read_image
from unetrpp.manifest import Manifest
from unetrpp.official_models import official_manifest
from unetrpp.preprocess import (
    array_to_input_grid,
    forward_array,
    labels_to_input_grid,
    preprocess,
    resize,
    separate_z_axis,
)

CT = "ct/example_ct_sm.nii.gz"
DICOM = "ct_dicom/example_ct_dicom"
RAW = "mr_brain/raw_unregistered/TCGA-FG-6692-{}.nii.gz"
BRATS = "mr_brain/brats_case/{}.nii.gz"


def manifest(variant: str, **plan) -> Manifest:
    data = official_manifest(variant)
    data["plan"].update(plan)
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    return Manifest(data)


def mri_manifest(nonzero: bool, **plan) -> Manifest:
    data = official_manifest("acdc")
    data["inputs"][0]["normalization"] = {"scheme": "zscore", "nonzero_mask": nonzero}
    data["plan"].update(plan)
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    return Manifest(data)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def two_class(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float32)
    return np.stack([1 - p, p])


def assert_on_grid(out: Image, ref: Image) -> None:
    assert out.array.shape == ref.array.shape
    assert out.spacing == ref.spacing and out.origin == ref.origin
    np.testing.assert_array_equal(out.direction, ref.direction)


@pytest.fixture(scope="module")
def ct(data_dir) -> Image:
    return read_image(data_dir / CT)


def ct_threshold_round_trip(img: Image, m: Manifest, hu: float):
    """Threshold the *preprocessed* CT at the HU value mapped through the manifest's normalisation,
    invert, and compare with the same threshold on the input."""
    x, state = preprocess({"ct": img}, m)
    n = m.inputs[0].normalization
    t = np.float32((hu - n["mean"]) / n["std"])
    out = labels_to_input_grid(two_class(x[0] > t), state)
    assert_on_grid(out, img)
    return dice(out.array, img.array > hu), state


def test_ct_no_resampling_dice_is_exact(ct):
    d, state = ct_threshold_round_trip(ct, manifest("synapse", target_spacing=[3.0, 3.0, 3.0]), 200.5)
    assert not state.resampled
    assert d == 1.0


def test_ct_resampled_to_synapse_spacing(ct):
    d, state = ct_threshold_round_trip(ct, manifest("synapse"), -199.5)  # the body
    assert state.network_shape == (30, 400, 483)  # round(shape * 3 / 0.7578) in-plane
    assert state.separate_axis == 0  # target spacing 3 / 0.7578 > 3: nnU-Net resamples z apart
    assert d > 0.95


def test_dicom_series_resampled(data_dir):
    img = read_image(data_dir / DICOM)
    d, state = ct_threshold_round_trip(img, manifest("synapse"), -199.5)
    assert state.network_shape == (13, 660, 660)
    assert d > 0.95


def test_ct_normalisation_values(ct):
    m = manifest("synapse", target_spacing=[3.0, 3.0, 3.0])
    x, _ = preprocess([ct], m)
    n = m.inputs[0].normalization
    expected = (np.clip(ct.array.astype(np.float32), *n["clip"]) - n["mean"]) / n["std"]
    np.testing.assert_allclose(x[0], expected, rtol=1e-5, atol=1e-5)


def test_oblique_left_handed_mri_resampled(data_dir):
    img = read_image(data_dir / RAW.format("t1c"))
    assert np.linalg.det(img.direction) < 0
    m = mri_manifest(False, target_spacing=[4.0, 1.2, 1.2])
    x, state = preprocess([img], m)
    assert state.separate_axis == 0  # 5.5 / 0.898 > 3
    assert state.resampled
    assert abs(float(x[0].mean())) < 1e-3 and abs(float(x[0].std()) - 1) < 1e-3  # z-score
    head = img.array > np.percentile(img.array, 60)
    forward = forward_array(head, state, order=1)
    out = labels_to_input_grid(two_class(forward), state)
    assert_on_grid(out, img)
    assert dice(out.array, head) > 0.95


def test_oblique_reoriented_no_resampling_exact(data_dir):
    img = read_image(data_dir / RAW.format("fla"))
    for code in ("LPS", "RAS", "SAR"):
        m = mri_manifest(False, target_spacing=_spacing_after_orient(img, code), orientation=code)
        x, state = preprocess([img], m)
        assert not state.resampled, code
        structure = img.array > np.percentile(img.array, 75)
        out = labels_to_input_grid(two_class(forward_array(structure, state, order=1)), state)
        assert_on_grid(out, img)
        assert dice(out.array, structure) == 1.0, code
    assert state.oriented_shape == (img.size[0], img.size[1], img.size[2])  # SAR: array z is the old x


def _spacing_after_orient(img: Image, code: str) -> list[float]:
    import SimpleITK as sitk

    return list(sitk.DICOMOrient(img.to_sitk(), code).GetSpacing()[::-1])


def test_brats_four_inputs_crop_and_nonzero_zscore(data_dir):
    m = manifest("brats")
    images = {n: read_image(data_dir / BRATS.format(f)) for n, f in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w"))}
    x, state = preprocess(images, m)
    assert x.shape[0] == 4
    assert not state.resampled
    assert x.shape[1:] == tuple(s.stop - s.start for s in state.crop_box)
    assert np.prod(x.shape[1:]) < 0.5 * 240 * 240 * 155  # the brain's box is much smaller than the volume
    inside = x[0] != 0
    assert abs(float(x[0][inside].mean())) < 1e-2 and abs(float(x[0][inside].std()) - 1) < 1e-2
    ref = images["flair"]
    tumour = read_image(data_dir / BRATS.format("segmentation")).array > 0
    out = labels_to_input_grid(two_class(forward_array(tumour, state, order=1)), state)
    assert_on_grid(out, ref)
    assert dice(out.array, tumour) == 1.0


def test_brats_resampled(data_dir):
    m = manifest("brats", target_spacing=[1.5, 1.3, 1.3])
    images = {n: read_image(data_dir / BRATS.format(f)) for n, f in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w"))}
    x, state = preprocess(images, m)
    assert state.resampled and state.separate_axis is None
    tumour = read_image(data_dir / BRATS.format("segmentation")).array > 0
    out = labels_to_input_grid(two_class(forward_array(tumour, state, order=1)), state)
    assert dice(out.array, tumour) > 0.95


def test_running_argmax_equals_full_argmax(ct):
    m = manifest("synapse", target_spacing=[5.0, 2.1, 2.1])
    x, state = preprocess([ct], m)
    rng = np.random.default_rng(0)
    probs = rng.random((5, *state.network_shape), dtype=np.float32)
    labels, confidence = labels_to_input_grid(probs, state, with_confidence=True)
    crop = tuple(s.stop - s.start for s in state.crop_box)
    full = np.stack([resize(p, crop, 1, state.separate_axis, 0) for p in probs])
    expected = np.zeros(ct.array.shape, np.uint8)
    expected[state.crop_box] = full.argmax(0)
    np.testing.assert_array_equal(labels.array, expected)
    np.testing.assert_allclose(confidence.array[state.crop_box], full.max(0))
    assert labels.array.dtype == np.uint8


def test_unregistered_inputs_resampled_with_offset_warning(data_dir, caplog):
    m = manifest("brats", target_spacing=[5.5, 0.8984375, 0.8984375])
    files = {"flair": "fla", "t1": "t1c", "t1gd": "t1c", "t2": "t2"}
    images = {n: read_image(data_dir / RAW.format(f)) for n, f in files.items()}
    with caplog.at_level(logging.WARNING, logger="unetrpp.preprocess"):
        x, state = preprocess(images, m)
    warned = " ".join(state.warnings)
    assert "input 't1' (256x224x26 voxels" in warned and "input 't2' (224x256x26 voxels" in warned
    assert "not on the grid of input 'flair'" in warned
    assert "origin offset (-7.2, -0.1, -0.4) mm, centre offset (-0.0, -0.0, +0.0) mm" in warned  # t2
    assert len(state.warnings) == 3  # t1, t1gd (the same file) and t2
    assert any("resampled onto 'flair'" in r.getMessage() for r in caplog.records)
    assert x.shape[0] == 4
    np.testing.assert_array_equal(x[1], x[2])  # the same file twice gives the same channel


def test_disjoint_inputs_rejected(data_dir):
    m = manifest("brats")
    images = {n: read_image(data_dir / BRATS.format(f)) for n, f in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w"))}
    moved = images["t2"]
    images["t2"] = Image(moved.array, moved.spacing, tuple(np.add(moved.origin, (0, 0, 500.0))), moved.direction)
    with pytest.raises(InputImageError, match="'t2' .* does not overlap input 'flair' in physical space"):
        preprocess(images, m)


def test_wrong_input_names_and_count(ct):
    m = manifest("synapse")
    with pytest.raises(InputImageError, match="takes 1 input\\(s\\) named ct; got 1: t1"):
        preprocess({"t1": ct}, m)
    with pytest.raises(InputImageError, match="takes 1 input"):
        preprocess([ct, ct], m)


def test_roi_restricts_work_and_keeps_grid(ct):
    m = manifest("synapse", target_spacing=[3.0, 3.0, 3.0])
    lo = ct.index_to_physical(np.array([20, 30, 5]))
    hi = ct.index_to_physical(np.array([80, 70, 20]))
    roi = (np.minimum(lo, hi).tolist(), np.maximum(lo, hi).tolist())
    x, state = preprocess([ct], m, roi=roi)
    assert state.roi_box == (slice(5, 21), slice(30, 71), slice(20, 81))
    assert x.shape[1:] == (16, 41, 61)
    n = m.inputs[0].normalization
    t = np.float32((200.5 - n["mean"]) / n["std"])
    out = labels_to_input_grid(two_class(x[0] > t), state)
    assert_on_grid(out, ct)
    inside = np.zeros(ct.array.shape, bool)
    inside[state.roi_box] = True
    np.testing.assert_array_equal(out.array.astype(bool), (ct.array > 200.5) & inside)
    with pytest.raises(InputImageError, match="does not overlap the input"):
        preprocess([ct], m, roi=((0, 0, 2000), (10, 10, 2010)))
    with pytest.raises(InputImageError, match="each max must be greater than its min"):
        preprocess([ct], m, roi=((10, 0, 0), (0, 10, 10)))


def test_array_to_input_grid(ct):
    m = manifest("synapse")
    x, state = preprocess([ct], m)
    back = array_to_input_grid(forward_array(ct.array, state, order=3), state, order=1)
    assert_on_grid(back, ct)
    err = np.abs(back.array - ct.array)
    assert np.median(err) < 5.0  # HU; cubic up + linear down is close to the original


def test_separate_z_rule():
    assert separate_z_axis((5.5, 0.9, 0.9), (5.5, 0.9, 0.9), 3) == 0
    assert separate_z_axis((1.0, 1.0, 1.0), (3.0, 0.76, 0.76), 3) == 0  # decided by the target
    assert separate_z_axis((1.0, 1.0, 1.0), (1.5, 1.0, 1.0), 3) is None
    assert separate_z_axis((0.9, 5.5, 5.5), (0.9, 5.5, 5.5), 3) is None  # two coarse axes


# Resource bound (issue 12 item 6) ------------------------------------------------------------------
def test_network_grid_over_the_limit_is_refused_before_allocating(ct):
    import tracemalloc

    from unetrpp.errors import ResourceLimitError, UnetrppError
    from unetrpp.preprocess import MAX_NETWORK_VOXELS

    huge = Image(ct.array, (5000.0, 5000.0, 5000.0), ct.origin, ct.direction)  # mm instead of µm-scale
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError, match=f"more than the limit of {MAX_NETWORK_VOXELS:,} voxels") as err:
            preprocess([huge], manifest("synapse"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err.value, UnetrppError)
    assert "30 x 101 x 122 voxels at 5000 x 5000 x 5000 mm" in str(err.value)
    assert peak < 64 * 2**20  # refused from the geometry, before any resampling buffer exists
    # just under the limit is accepted: the geometry alone decides
    x, state = preprocess([ct], manifest("synapse", target_spacing=[3.0, 3.0, 3.0]))
    assert np.prod(state.network_shape) < MAX_NETWORK_VOXELS


def test_cli_refuses_huge_spacing_with_error_and_exit_2(ct, data_dir, tmp_path):
    import subprocess
    import sys

    import SimpleITK as sitk
    from segment_helpers import make_package

    pkg = make_package(tmp_path / "synapse-tiny")
    img = sitk.ReadImage(str(data_dir / CT))
    img.SetSpacing((5000.0, 5000.0, 5000.0))
    src = tmp_path / "huge-spacing.nii.gz"
    sitk.WriteImage(img, str(src))
    out = tmp_path / "out.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "unetrpp", "segment", "--model", str(pkg), str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr
    assert "limit of 134,217,728 voxels" in error[0] and "Check the voxel spacing" in error[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["huge-spacing.nii.gz", "synapse-tiny"]


# Optional label (training: nnU-Net's run_case(data, seg)) --------------------------------------------
def test_label_goes_through_the_same_crop_and_resampling(data_dir):
    images = {n: read_image(data_dir / BRATS.format(f)) for n, f in (("flair", "t2f"), ("t1", "t1n"), ("t1gd", "t1c"), ("t2", "t2w"))}
    tumour = read_image(data_dir / BRATS.format("segmentation"))
    x0, state0 = preprocess(images, manifest("brats"))
    x, state, seg = preprocess(images, manifest("brats"), label=tumour)
    assert not state.resampled
    np.testing.assert_array_equal(seg, tumour.array[state.crop_box])  # no resampling: the label as it is
    # the normalisation mask is the official one: non-zero voxels or labelled ones (a few tumour
    # voxels of this case are 0 in every channel); with the label inside the non-zero region the
    # network input is the same as without a label
    nonzero = np.any([img.array != 0 for img in images.values()], axis=0)
    assert ((tumour.array > 0) & ~nonzero).any()
    x_inside, _, _ = preprocess(images, manifest("brats"), label=tumour.array * nonzero)
    np.testing.assert_array_equal(x_inside, x0)
    assert not np.array_equal(x, x0)

    x, state, seg = preprocess(images, manifest("brats", target_spacing=[1.5, 1.3, 1.3]), label=tumour)
    assert seg.shape == x.shape[1:] == state.network_shape and seg.dtype == np.uint8
    assert set(np.unique(seg)) <= set(np.unique(tumour.array))
    for value in (1, 2, 3):  # each class mapped back onto the input grid
        back = labels_to_input_grid(two_class(seg == value), state)
        assert dice(back.array, tumour.array == value) > 0.85, value

    with pytest.raises(InputImageError, match="must be on its image's grid"):
        preprocess(images, manifest("brats"), label=tumour.array[:, :, :-1])
    with pytest.raises(InputImageError, match="negative"):
        preprocess(images, manifest("brats"), label=-tumour.array.astype(np.int16))


@pytest.mark.parametrize("smooth", [True, False])
def test_separate_z_export_equals_every_class_resampled(ct, smooth):
    """The default export (in-plane bilinear only where neighbouring labels differ, nearest along
    z) gives the labels and confidence of resampling every class in full and taking the argmax."""
    lo = ct.index_to_physical(np.array([10, 10, 3]))
    hi = ct.index_to_physical(np.array([70, 60, 24]))
    roi = (np.minimum(lo, hi).tolist(), np.maximum(lo, hi).tolist())
    m = manifest("synapse", target_spacing=[4.5, 1.3, 1.1])  # z: 22 -> 15 slices, separate (4.5 / 1.1 > 3)
    x, state = preprocess([ct], m, roi=roi)
    assert state.separate_axis == 0 and state.network_shape[0] != state.crop_box[0].stop - state.crop_box[0].start
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, *state.network_shape))
    if smooth:  # organ-like regions
        logits = np.stack([ndimage.gaussian_filter(l, 3) * 40 for l in logits])
    probs = np.exp(logits - logits.max(0))
    probs = (probs / probs.sum(0)).astype(np.float32)
    labels, confidence = labels_to_input_grid(probs, state, with_confidence=True)
    crop = tuple(s.stop - s.start for s in state.crop_box)
    full = np.stack([resize(p, crop, 1, 0, 0) for p in probs])
    box = tuple(slice(r.start + c.start, r.start + c.stop) for r, c in zip(state.roi_box, state.crop_box))
    assert len(np.unique(full.argmax(0))) == 6
    assert float((labels.array[box] == full.argmax(0)).mean()) >= 0.99999
    np.testing.assert_allclose(confidence.array[box], full.max(0), rtol=0, atol=1e-6)
    outside = np.ones(ct.array.shape, bool)
    outside[box] = False
    assert not labels.array[outside].any() and not confidence.array[outside].any()


@pytest.mark.parametrize("target_z,cuts", [(4.5, (0, 4, 9)), (3.5, (0, 5, 6, 13))])
def test_slab_labels_equal_the_whole_volume_export(ct, target_z, cuts):
    """SlabLabels (the probabilities handed over slab by slab, as predict_slabs does) gives the
    labelmap and confidence of labels_to_input_grid and the labels and entropy of the quality
    module's uncertainty on the whole volume, bit for bit, for float16 probabilities, whatever the
    slab boundaries (entropy sampled every 2nd voxel: boundaries off the sampling grid included)."""
    from unetrpp.preprocess import SlabLabels
    from unetrpp.quality.structures import uncertainty

    lo = ct.index_to_physical(np.array([10, 10, 3]))
    hi = ct.index_to_physical(np.array([70, 60, 24]))
    roi = (np.minimum(lo, hi).tolist(), np.maximum(lo, hi).tolist())
    m = manifest("synapse", target_spacing=[target_z, 1.3, 1.1])  # z: 22 -> 15 (or 19) slices, separate axis 0
    _, state = preprocess([ct], m, roi=roi)
    assert SlabLabels.applies(state) and state.network_shape[0] > cuts[-1]
    cuts = (*cuts, state.network_shape[0])
    rng = np.random.default_rng(2)
    logits = np.stack([ndimage.gaussian_filter(l, 2) * 40 for l in rng.normal(size=(5, *state.network_shape))])
    probs = np.exp(logits - logits.max(0))
    probs = (probs / probs.sum(0)).astype(np.float16)
    labels, confidence = labels_to_input_grid(probs, state, with_confidence=True)
    net_labels, entropy = uncertainty(probs, 1.5, 2)
    slabs = SlabLabels(state, 5, with_confidence=True, quality=(1.5, 2))
    for a, b in zip(cuts, cuts[1:]):
        slabs(a, probs[:, a:b].copy())
    got_labels, got_confidence = slabs.finish()
    np.testing.assert_array_equal(got_labels.array, labels.array)
    np.testing.assert_array_equal(got_confidence.array, confidence.array)
    assert got_labels.spacing == labels.spacing and got_labels.origin == labels.origin
    got_net, got_entropy = slabs.uncertainty_maps()
    np.testing.assert_array_equal(got_net, net_labels)
    np.testing.assert_array_equal(got_entropy, entropy)
    with pytest.raises(ValueError, match="in order"):
        SlabLabels(state, 5)(3, probs[:, 3:5])


# unetrpp.resampling: the pinned scikit-image 0.18.1 behaviours -------------------------------------
def test_resampling_pinned_skimage_behaviours(ct):
    from unetrpp.resampling import nearest_indices, resample, resize_slices, skimage_resize

    a = ct.array[:, 20:60, 30:70].astype(np.float64)  # (30, 40, 40)
    # 2-D cubic convolution keeps constants and clips every slice to its own range
    flat = np.full((3, 7, 9), 5.0)
    np.testing.assert_array_equal(resize_slices(flat, (11, 4), 3, np.empty((3, 11, 4))), 5.0)
    up = resize_slices(a, (97, 83), 3, np.empty((30, 97, 83)))
    assert np.all(up.min(axis=(1, 2)) >= a.min(axis=(1, 2))) and np.all(up.max(axis=(1, 2)) <= a.max(axis=(1, 2)))
    # a 3-D array whose last axis keeps its size takes 0.18.1's 2-D path (per slice along that
    # axis, clipped to the whole array's range), not the 3-D B-spline
    same_last = skimage_resize(a, (45, 50, 40), 3)
    from unetrpp.resampling import _warp_stack  # the per-slice warp before clipping

    per_slice = np.moveaxis(_warp_stack(np.moveaxis(a, 2, 0), (45, 50), 3), 0, 2)
    np.testing.assert_array_equal(same_last, np.clip(per_slice, a.min(), a.max()))
    spline = skimage_resize(a, (45, 50, 41), 3)
    assert np.abs(spline[..., :40] - same_last).max() > 1.0
    # separate z with nearest neighbour along z: resizing only the picked slices changes nothing
    fast = resample(a, (12, 50, 61), 3, axis=0)
    every = resize_slices(a, (50, 61), 3, np.empty((30, 50, 61), np.float32))
    np.testing.assert_array_equal(fast, every[nearest_indices(30, 12)])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("shape,new_shape", [((23, 17, 19), (50, 40, 31)), ((31, 29, 27), (9, 8, 7)),
                                             ((12, 40, 33), (30, 21, 50))])
def test_slab_resampling_equals_the_whole_volume_call(monkeypatch, shape, new_shape, order, dtype):
    """`resample` without a separate axis into float32 (the export of isotropic plans) reads the
    input slab by slab and writes float32 directly: bit for bit skimage 0.18.1's whole-volume
    map_coordinates in float64, clipped to the input's range, then rounded to float32."""
    import unetrpp.resampling as resampling
    from unetrpp.resampling import pixel_centres, resample

    x = np.random.default_rng(3).random(shape).astype(dtype)
    grid = np.array(np.meshgrid(*(pixel_centres(n, m) for n, m in zip(shape, new_shape)), indexing="ij"))
    whole = ndimage.map_coordinates(x.astype(np.float64), grid, order=order, mode="nearest")
    expected = np.clip(whole, float(x.min()), float(x.max())).astype(np.float32)
    monkeypatch.setattr(resampling, "BATCH_ELEMENTS", 4 * int(np.prod(new_shape[1:])))  # 4 rows per slab
    got = resample(x, new_shape, order, None, out=np.empty(new_shape, np.float32))
    np.testing.assert_array_equal(got, expected)
    monkeypatch.undo()
    np.testing.assert_array_equal(resample(x, new_shape, order, None), expected)  # one slab
