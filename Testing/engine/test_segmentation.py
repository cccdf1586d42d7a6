"""Segmentation outputs (unetrpp.segmentation) on real labelmaps from ../shared/data: .seg.nrrd read
back by slicerio, SimpleITK and headless Slicer (slicer-core) with names, colours, terminology,
exact voxels and geometry; BraTS region layers; statistics; labelmaps; confidence maps; the
largest-component postprocessing; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from unetrpp.errors import UnetrppError
from unetrpp.image import Image, read_image
from unetrpp.manifest import Manifest
from unetrpp.official_models import official_manifest
from unetrpp.terminology import context_of
from unetrpp.segmentation import (
    LCC_CONNECTIVITY,
    atomic_path,
    ijk_to_lps,
    largest_connected_component,
    region_layers,
    segment_statistics,
    write_labelmap,
    write_probabilities,
    write_seg_nrrd,
)

slicerio = pytest.importorskip("slicerio")

# TotalSegmentator "total" id -> BTCV/Synapse id (../shared/data/SOURCES.md)
TOTALSEG_TO_BTCV = {1: 1, 2: 2, 3: 3, 4: 4, 15: 5, 5: 6, 6: 7, 52: 8, 63: 9, 64: 10, 7: 11, 8: 12, 9: 13}
# BraTS 2023 (1 necrotic core, 2 oedema, 3 enhancing) -> Decathlon (1 oedema, 2 non-enhancing, 3 enhancing)
BRATS2023_TO_DECATHLON = {1: 2, 2: 1, 3: 3}


def manifest(variant: str) -> Manifest:
    data = official_manifest(variant)
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    return Manifest(data)


def remap(image: Image, mapping: dict[int, int]) -> Image:
    lut = np.zeros(int(image.array.max()) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        if src < lut.size:
            lut[src] = dst
    return image.with_array(lut[image.array])


@pytest.fixture(scope="module")
def btcv_labelmap(data_dir) -> Image:
    return remap(read_image(data_dir / "ct" / "example_seg.nii.gz"), TOTALSEG_TO_BTCV)


@pytest.fixture(scope="module")
def brats_labelmap(data_dir) -> Image:
    return remap(read_image(data_dir / "mr_brain" / "brats_case" / "segmentation.nii.gz"), BRATS2023_TO_DECATHLON)


def expected_terminology(term: dict) -> dict:
    """The slicerio reading of a manifest terminology entry."""
    out = {"category": [term["category"]["scheme"], term["category"]["code"], term["category"]["meaning"]],
           "type": [term["type"]["scheme"], term["type"]["code"], term["type"]["meaning"]]}
    if "modifier" in term:
        out["typeModifier"] = [term["modifier"]["scheme"], term["modifier"]["code"], term["modifier"]["meaning"]]
    if "region" in term:
        out["anatomicRegion"] = [term["region"]["scheme"], term["region"]["code"], term["region"]["meaning"]]
    return out


# .seg.nrrd ----------------------------------------------------------------------------------------
def test_seg_nrrd_reads_back_in_slicerio(tmp_path, btcv_labelmap, data_dir):
    m = manifest("synapse")
    present = set(np.unique(btcv_labelmap.array).tolist()) - {0}
    assert len(present) >= 8  # the real CT labels cover most BTCV organs
    out = write_seg_nrrd(btcv_labelmap, m, tmp_path / "ct.seg.nrrd")
    seg = slicerio.read_segmentation(str(out))

    # exact voxels (slicerio reads i, j, k = x, y, z) and geometry
    assert seg["voxels"].shape == btcv_labelmap.size
    np.testing.assert_array_equal(seg["voxels"], btcv_labelmap.array.T)
    source = sitk.ReadImage(str(data_dir / "ct" / "example_seg.nii.gz"))
    expected = np.eye(4)
    expected[:3, :3] = np.asarray(source.GetDirection()).reshape(3, 3) @ np.diag(source.GetSpacing())
    expected[:3, 3] = source.GetOrigin()
    np.testing.assert_allclose(seg["ijkToLPS"], expected, atol=1e-6)

    # one segment per label, in manifest order, with names, colours and SNOMED-CT terminology
    assert [s["name"] for s in seg["segments"]] == [l.name for l in m.labels]
    for s, label in zip(seg["segments"], m.labels):
        assert s["labelValue"] == label.value and s["layer"] == 0
        assert [round(c * 255) for c in s["color"]] == list(label.color)
        term = s["terminology"]
        for key, value in expected_terminology(label.terminology).items():
            assert term[key] == value, (label.name, key)
        assert term["contextName"] == context_of(label.terminology)  # the Slicer list that holds the entry
        mask = slicerio.segment_mask(seg, s)
        assert mask.sum() == (btcv_labelmap.array == label.value).sum()
        if label.value in present:  # extent = bounding box in i, j, k
            ii, jj, kk = np.nonzero(mask)
            assert s["extent"] == [ii.min(), ii.max(), jj.min(), jj.max(), kk.min(), kk.max()]
        else:
            assert s["extent"] == [0, -1, 0, -1, 0, -1]
    kidney_right = next(s for s in seg["segments"] if s["name"] == "right kidney")
    assert kidney_right["terminology"]["type"][1] == "64033007"
    assert kidney_right["terminology"]["typeModifier"][2] == "Right"

    # and SimpleITK reads the same grid (the file is a plain 3D NRRD underneath)
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), btcv_labelmap.array)
    np.testing.assert_allclose(back.GetOrigin(), source.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), source.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), source.GetSpacing(), atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["ct.seg.nrrd"]  # no temporary file left


def test_region_layers_overlap_like_the_brats_regions(tmp_path, brats_labelmap):
    m = manifest("brats")
    labels = brats_labelmap.array
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    out = write_seg_nrrd(brats_labelmap, m, tmp_path / "brain.seg.nrrd")
    seg = slicerio.read_segmentation(str(out))
    assert seg["voxels"].shape == (4, *brats_labelmap.size)  # labels + 3 nested regions, one layer each
    np.testing.assert_array_equal(seg["voxels"][0], labels.T)  # layer 0 is the labelmap, unchanged
    names = [s["name"] for s in seg["segments"]]
    assert names == [l.name for l in m.labels] + [r.name for r in m.regions]
    masks = {s["name"]: slicerio.segment_mask(seg, s) for s in seg["segments"]}
    for region in m.regions:
        np.testing.assert_array_equal(masks[region.name], np.isin(labels, region.labels).T)
        s = next(s for s in seg["segments"] if s["name"] == region.name)
        assert s["layer"] >= 1 and [round(c * 255) for c in s["color"]] == list(region.color)
        assert s["terminology"]["type"][1] == region.terminology["type"]["code"]
    wt, tc, et = masks["whole tumour"], masks["tumour core"], masks["enhancing tumour region"]
    assert et.sum() < tc.sum() < wt.sum()
    assert not (et & ~tc).any() and not (tc & ~wt).any()  # nested: ET in TC in WT
    assert (wt & masks["oedema"]).sum() == masks["oedema"].sum()  # regions overlap the labels

    # without regions: a 3D file with the three labels only
    plain = slicerio.read_segmentation(str(write_seg_nrrd(brats_labelmap, m, tmp_path / "plain.seg.nrrd",
                                                          include_regions=False)))
    assert plain["voxels"].ndim == 3 and len(plain["segments"]) == 3


def test_disjoint_regions_share_a_layer(tmp_path):
    data = official_manifest("brats")
    data["weights"] = {"file": "weights.safetensors", "sha256": "0" * 64}
    data["regions"] = [
        {"name": "a", "labels": [1], "color": [1, 2, 3]},
        {"name": "b", "labels": [2, 3], "color": [4, 5, 6]},
        {"name": "c", "labels": [1, 2], "color": [7, 8, 9]},
    ]
    m = Manifest(data)
    assert region_layers(m.regions) == [[0, 1], [2]]
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[0, :2] = 1
    arr[1, 2:] = 2
    arr[3] = 3
    seg = slicerio.read_segmentation(str(write_seg_nrrd(Image(arr, (1, 1, 2), (0, 0, 0)), m, tmp_path / "r.seg.nrrd")))
    assert seg["voxels"].shape[0] == 3
    for s in seg["segments"][3:]:
        region = next(r for r in m.regions if r.name == s["name"])
        np.testing.assert_array_equal(slicerio.segment_mask(seg, s), np.isin(arr, region.labels).T)


def test_seg_nrrd_rejects_bad_input(tmp_path, btcv_labelmap):
    m = manifest("synapse")
    with pytest.raises(UnetrppError, match=".seg.nrrd"):
        write_seg_nrrd(btcv_labelmap, m, tmp_path / "x.nrrd")
    with pytest.raises(UnetrppError, match="integer"):
        write_seg_nrrd(btcv_labelmap.with_array(btcv_labelmap.array.astype(np.float32)), m, tmp_path / "x.seg.nrrd")
    with pytest.raises(UnetrppError, match="does not exist"):
        write_seg_nrrd(btcv_labelmap, m, tmp_path / "missing" / "x.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


# Statistics --------------------------------------------------------------------------------------------
def test_statistics_volume_is_voxels_times_voxel_volume(brats_labelmap):
    m = manifest("brats")
    img = Image(brats_labelmap.array, (0.5, 1.25, 2.0), (0, 0, 0))  # anisotropic: 1.25 mm^3 per voxel
    stats = segment_statistics(img, m)
    labels = [s for s in stats if s["kind"] == "label"]
    regions = [s for s in stats if s["kind"] == "region"]
    assert [s["value"] for s in labels] == [1, 2, 3] and len(regions) == 3
    for s in labels:
        n = int((img.array == s["value"]).sum())
        assert s["voxels"] == n > 0
        assert s["volume_ml"] == pytest.approx(n * 1.25 / 1000)
    for s, r in zip(regions, m.regions):
        n = int(np.isin(img.array, r.labels).sum())
        assert s["name"] == r.name and s["labels"] == list(r.labels)
        assert s["voxels"] == n and s["volume_ml"] == pytest.approx(n * 1.25 / 1000)


def test_statistics_of_the_ct(btcv_labelmap):
    stats = segment_statistics(btcv_labelmap, manifest("synapse"))
    assert len(stats) == 13
    liver = next(s for s in stats if s["name"] == "liver")
    assert liver["voxels"] == int((btcv_labelmap.array == 6).sum())
    assert liver["volume_ml"] == pytest.approx(liver["voxels"] * 27 / 1000)  # 3 mm isotropic


# Labelmaps, confidence maps ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_write_labelmap_round_trip(tmp_path, btcv_labelmap, suffix):
    labels = btcv_labelmap.with_array(btcv_labelmap.array.astype(np.int32))
    out = write_labelmap(labels, tmp_path / f"labels{suffix}")
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), btcv_labelmap.array)
    np.testing.assert_allclose(back.GetOrigin(), btcv_labelmap.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3)), btcv_labelmap.direction, atol=1e-6)
    big = btcv_labelmap.with_array(btcv_labelmap.array.astype(np.int32) * 100)
    assert sitk.ReadImage(str(write_labelmap(big, tmp_path / f"big{suffix}"))).GetPixelID() == sitk.sitkUInt16
    with pytest.raises(UnetrppError, match="write_seg_nrrd"):
        write_labelmap(btcv_labelmap, tmp_path / "x.seg.nrrd")
    with pytest.raises(UnetrppError):
        write_labelmap(btcv_labelmap, tmp_path / "x.png")


def test_write_probabilities(tmp_path):
    p = np.linspace(0, 1, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = Image(p, (1, 2, 3), (4, 5, 6))
    percent = sitk.ReadImage(str(write_probabilities(img, tmp_path / "conf.nii.gz")))
    assert percent.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(percent), np.rint(p * 100).astype(np.uint8))
    raw = sitk.ReadImage(str(write_probabilities(img, tmp_path / "prob.nrrd", percent=False)))
    assert raw.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(raw), p)
    assert raw.GetSpacing() == (1, 2, 3) and raw.GetOrigin() == (4, 5, 6)


# Postprocessing ----------------------------------------------------------------------------------------
def test_largest_connected_component():
    a = np.zeros((10, 10, 10), np.uint8)
    a[0:3, 0:3, 0:3] = 1  # 27 voxels: kept
    a[6:8, 6:8, 6:8] = 1  # 8 voxels: removed
    a[3, 3, 3] = 1  # touches the big blob only at a corner: kept with 26- (the default), removed with 6-connectivity
    a[0, 9, 0] = 2
    a[9, 9, 9] = 2  # label 2 not asked for: untouched
    img = Image(a, (1, 1, 1), (0, 0, 0))
    kept = largest_connected_component(img, [1], connectivity=6)
    assert isinstance(kept, Image) and img.array is a and (a == 1).sum() == 36  # input unchanged
    assert (kept.array == 1).sum() == 27 and (kept.array == 2).sum() == 2
    assert kept.array[3, 3, 3] == 0 and kept.array[7, 7, 7] == 0
    corner = largest_connected_component(a, [1, 2])
    assert LCC_CONNECTIVITY == 26 and corner[3, 3, 3] == 1 and (corner == 1).sum() == 28 and (corner == 2).sum() == 1
    largest_connected_component(a, [1], connectivity=6, in_place=True)
    assert (a == 1).sum() == 27
    with pytest.raises(UnetrppError):
        largest_connected_component(a, [1], connectivity=8)


# Atomic writes -----------------------------------------------------------------------------------------
def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, partial")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


# Headless Slicer --------------------------------------------------------------------------------------
@pytest.mark.slicer
def test_slicer_storage_node_reads_the_seg_nrrd(tmp_path, btcv_labelmap, brats_labelmap):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        for labelmap, m, layers in ((btcv_labelmap, manifest("synapse"), 1), (brats_labelmap, manifest("brats"), 4)):
            path = write_seg_nrrd(labelmap, m, tmp_path / f"{m.name}.seg.nrrd")
            node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            storage.SetFileName(str(path))
            assert storage.ReadData(node) == 1
            seg = node.GetSegmentation()
            expected = [(l.name, l.value, l.color, l.terminology, lambda a, v=l.value: a == v) for l in m.labels]
            expected += [(r.name, None, r.color, r.terminology, lambda a, r=r: np.isin(a, r.labels)) for r in m.regions]
            assert seg.GetNumberOfSegments() == len(expected)
            assert seg.GetNumberOfLayers() == layers
            for i, (name, value, color, term, select) in enumerate(expected):
                segment = seg.GetNthSegment(i)
                assert segment.GetName() == name
                if value is not None:
                    assert segment.GetLabelValue() == value
                assert [round(c * 255) for c in segment.GetColor()] == list(color)
                tag = vtk.mutable("")
                assert segment.GetTag("TerminologyEntry", tag)
                assert f"SCT^{term['type']['code']}^{term['type']['meaning']}" in str(tag)
                image = segment.GetRepresentation("Binary labelmap")
                scalars = image.GetPointData().GetScalars()
                voxels = numpy_support.vtk_to_numpy(scalars) if scalars is not None else np.zeros(0)
                n = int((voxels == segment.GetLabelValue()).sum())
                assert n == int(select(labelmap.array).sum()), name
    finally:
        scene.Clear(1)
        slicer.mrmlScene = previous
