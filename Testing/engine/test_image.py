"""unetrpp.image: reading/writing the real volumes in ../shared/data keeps geometry exactly; each kind
of bad input gets its own clear InputImageError."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from unetrpp.errors import InputImageError
from unetrpp.image import Image, read_image, write_image

from support.dicom import make_enhanced_ct, with_frames

CT = "ct/example_ct_sm.nii.gz"
DICOM = "ct_dicom/example_ct_dicom"
OBLIQUE = "mr_brain/raw_unregistered/TCGA-FG-6692-t1c.nii.gz"
BRATS = "mr_brain/brats_case/t2f.nii.gz"


def _assert_same_geometry(a: Image, b: Image, tol: float = 1e-6) -> None:
    assert a.array.shape == b.array.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol, rtol=0)


@pytest.mark.parametrize("name", [CT, OBLIQUE, BRATS])
def test_read_matches_simpleitk(data_dir, name):
    ref = sitk.ReadImage(str(data_dir / name))
    img = read_image(data_dir / name)
    assert img.size == ref.GetSize()
    assert img.spacing == ref.GetSpacing()
    assert img.origin == ref.GetOrigin()
    assert tuple(img.direction.ravel()) == ref.GetDirection()
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(ref))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", [CT, OBLIQUE])
def test_round_trip_keeps_geometry_and_voxels(data_dir, tmp_path, name, suffix):
    img = read_image(data_dir / name)
    out = write_image(img, tmp_path / f"copy{suffix}")
    back = read_image(out)
    _assert_same_geometry(img, back)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.array.dtype == img.array.dtype
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_oblique_left_handed_geometry_preserved(data_dir, tmp_path):
    img = read_image(data_dir / OBLIQUE)
    assert np.linalg.det(img.direction) < 0  # the raw clinical MRI is left-handed ...
    assert abs(img.direction[0, 2]) > 0.05  # ... and oblique
    back = read_image(write_image(img, tmp_path / "oblique.nrrd"))
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-12)
    # physical position of a voxel is the same before and after
    idx = np.array([17.0, 33.0, 11.0])
    np.testing.assert_allclose(back.index_to_physical(idx), img.index_to_physical(idx), atol=1e-9)
    p = sitk.ReadImage(str(data_dir / OBLIQUE)).TransformContinuousIndexToPhysicalPoint(tuple(idx))
    np.testing.assert_allclose(img.index_to_physical(idx), p, atol=1e-9)
    np.testing.assert_allclose(img.physical_to_index(p), idx, atol=1e-9)


def test_dicom_series_reads_with_geometry(data_dir):
    img = read_image(data_dir / DICOM)
    assert img.size == (512, 512, 20)
    np.testing.assert_allclose(img.spacing, (0.9765625, 0.9765625, 2.0))
    # the files are numbered from the top slice down (reverse order); ITK sorts by position so the
    # origin is the lowest slice and z grows upwards
    assert img.origin[2] == pytest.approx(-804.5)
    np.testing.assert_allclose(img.direction, np.eye(3))
    assert img.array.min() == -1024  # rescale slope/intercept applied: HU
    # the same physical space as the reference label file (which is stored left-handed)
    seg = sitk.ReadImage(str(data_dir / "ct_dicom/example_seg_dicom.nii.gz"))
    np.testing.assert_allclose(Image.from_sitk(seg).corners().min(0), img.corners().min(0), atol=1e-3)


def _copy_series(data_dir: Path, dst: Path, skip: set[int] = frozenset(), rename=None) -> list[Path]:
    files = sorted((data_dir / DICOM).iterdir())
    dst.mkdir()
    out = []
    for i, f in enumerate(files):
        if i in skip:
            continue
        target = dst / (rename(i, f) if rename else f.name)
        shutil.copy(f, target)
        out.append(target)
    return out


def test_dicom_reverse_file_order_gives_same_volume(data_dir, tmp_path):
    ref = read_image(data_dir / DICOM)
    n = 20

    def reverse(i, f):
        return f"slice{n - 1 - i:03d}.dcm"

    files = _copy_series(data_dir, tmp_path / "rev", rename=reverse)
    for f in files:  # also reverse the instance numbers
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)
        ds.save_as(f)
    img = read_image(tmp_path / "rev")
    _assert_same_geometry(ref, img, tol=0)
    np.testing.assert_array_equal(img.array, ref.array)


# Enhanced (multi-frame) DICOM ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def enhanced_ct(data_dir, tmp_path_factory) -> dict[str, Path]:
    """Folders each holding one real Enhanced CT file of the shared series (support/dicom.py):
    frames feet-ward (JPEG 2000, as highdicom writes them), head-ward, and feet-ward uncompressed."""
    return make_enhanced_ct(data_dir, tmp_path_factory.mktemp("enhanced"))


@pytest.mark.parametrize("order", ["feetward", "headward"])
def test_enhanced_ct_reads_as_the_series(data_dir, enhanced_ct, order):
    """One Enhanced CT file, as a folder or as the path, is the same volume as the series it was
    made from: the same voxels in the same order, spacing, origin and direction."""
    ref = read_image(data_dir / DICOM)
    for path in (enhanced_ct[order], enhanced_ct[order] / "enhanced.dcm"):
        img = read_image(path)
        _assert_same_geometry(ref, img, tol=1e-9)
        np.testing.assert_array_equal(img.array, ref.array)
        assert img.array.dtype == ref.array.dtype
        assert img.meta["dicom_encoding"] == "multi-frame" and img.meta["n_frames"] == 20


def test_enhanced_ct_with_a_missing_frame_refused(enhanced_ct, tmp_path):
    plain = pydicom.dcmread(enhanced_ct["plain"] / "enhanced.dcm")
    (tmp_path / "gap").mkdir()
    with_frames(plain, [i for i in range(20) if i != 7]).save_as(tmp_path / "gap" / "e.dcm")
    for path in (tmp_path / "gap", tmp_path / "gap" / "e.dcm"):
        with pytest.raises(InputImageError, match=r"about 1 missing slice\(s\).*4\.000 mm apart.*2\.000 mm"):
            read_image(path)


def test_enhanced_ct_tilted_or_duplicated_frames_refused(enhanced_ct, tmp_path):
    """Frame positions shifted within the plane (gantry tilt) or repeated (several time points):
    the same refusals as for a series."""
    for name, change, message in (
        ("tilt", lambda i, p: [p[0], p[1] + 0.5 * i, p[2]], "shifted within their plane .*gantry tilt"),
        ("same", lambda i, p: [p[0], p[1], -766.5 if i == 3 else p[2]], "two slices at the same position"),
    ):
        ds = pydicom.dcmread(enhanced_ct["plain"] / "enhanced.dcm")
        for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            pos = item.PlanePositionSequence[0]
            pos.ImagePositionPatient = change(i, [float(v) for v in pos.ImagePositionPatient])
        ds.save_as(tmp_path / f"{name}.dcm")
        with pytest.raises(InputImageError, match=message):
            read_image(tmp_path / f"{name}.dcm")


def test_enhanced_ct_geometry_from_shared_groups(enhanced_ct, tmp_path):
    """Orientation and pixel spacing may be per frame instead of shared: the same volume."""
    ds = pydicom.dcmread(enhanced_ct["plain"] / "enhanced.dcm")
    shared = ds.SharedFunctionalGroupsSequence[0]
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PlaneOrientationSequence = shared.PlaneOrientationSequence
        item.PixelMeasuresSequence = shared.PixelMeasuresSequence
    del shared.PlaneOrientationSequence
    del shared.PixelMeasuresSequence
    ds.save_as(tmp_path / "per_frame.dcm")
    ref = read_image(enhanced_ct["plain"])
    img = read_image(tmp_path / "per_frame.dcm")
    _assert_same_geometry(ref, img, tol=0)
    np.testing.assert_array_equal(img.array, ref.array)
    # a frame whose pixel spacing differs from the others: one volume needs one spacing
    ds.PerFrameFunctionalGroupsSequence[4].PixelMeasuresSequence = [pydicom.Dataset()]
    ds.PerFrameFunctionalGroupsSequence[4].PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.5]
    ds.save_as(tmp_path / "mixed_spacing.dcm")
    with pytest.raises(InputImageError, match="pixel spacing"):
        read_image(tmp_path / "mixed_spacing.dcm")


def test_single_dicom_slice_is_2d(data_dir):
    with pytest.raises(InputImageError, match="single slice: it is 2D data"):
        read_image(data_dir / "dicom_single/CT_small.dcm")


def test_dicom_mixed_series_named_and_selectable(data_dir, tmp_path):
    files = _copy_series(data_dir, tmp_path / "mixed")
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1" if i < 12 else "1.2.826.0.1.3680043.2.1125.2"
        ds.save_as(f)
    with pytest.raises(InputImageError) as err:
        read_image(tmp_path / "mixed")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "1.2.826.0.1.3680043.2.1125.1" in msg and "1.2.826.0.1.3680043.2.1125.2" in msg
    assert "(12 files)" in msg and "(8 files)" in msg
    img = read_image(tmp_path / "mixed", series_uid="1.2.826.0.1.3680043.2.1125.2")
    assert img.size == (512, 512, 8)
    assert img.meta["series_uid"] == "1.2.826.0.1.3680043.2.1125.2"
    with pytest.raises(InputImageError, match="no DICOM series with SeriesInstanceUID '9.9'"):
        read_image(tmp_path / "mixed", series_uid="9.9")


def test_dicom_missing_slice_reported(data_dir, tmp_path):
    _copy_series(data_dir, tmp_path / "gap", skip={7})
    with pytest.raises(InputImageError, match=r"about 1 missing slice\(s\).*4\.000 mm apart.*2\.000 mm"):
        read_image(tmp_path / "gap")


def test_dicom_uneven_spacing_reported(data_dir, tmp_path):
    files = _copy_series(data_dir, tmp_path / "uneven")
    ds = pydicom.dcmread(files[5])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 0.7]
    ds.save_as(files[5])
    with pytest.raises(InputImageError, match="unevenly spaced slices"):
        read_image(tmp_path / "uneven")


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")


def test_not_an_image(tmp_path, data_dir):
    for name, content in [("notes.nii.gz", b"hello, not an image\n"), ("table.csv", b"a,b\n1,2\n")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputImageError, match="not an image|damaged"):
            read_image(tmp_path / name)
    with pytest.raises(InputImageError, match="not an image"):
        read_image(data_dir / "mr_cardiac/patient001_frame01.h5")


def test_truncated_file(data_dir, tmp_path):
    packed = (data_dir / CT).read_bytes()
    raw = gzip.decompress(packed)
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "cut.nii.gz").write_bytes(packed[: len(packed) // 2])
    sitk.WriteImage(sitk.ReadImage(str(data_dir / CT)), str(tmp_path / "full.nrrd"), True)
    nrrd = (tmp_path / "full.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(nrrd[: len(nrrd) // 2])
    for name in ("cut.nii", "cut.nii.gz", "cut.nrrd"):
        with pytest.raises(InputImageError, match="damaged or truncated"):
            read_image(tmp_path / name)


def test_empty_folder(tmp_path):
    with pytest.raises(InputImageError, match="without a DICOM series"):
        read_image(tmp_path)


def test_2d_image(tmp_path, data_dir):
    ct = sitk.ReadImage(str(data_dir / CT))
    sitk.WriteImage(ct[:, :, 10], str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputImageError, match="2D image"):
        read_image(tmp_path / "slice.nii.gz")
    sitk.WriteImage(ct[:, :, 10:11], str(tmp_path / "one.nrrd"))
    with pytest.raises(InputImageError, match="single slice"):
        read_image(tmp_path / "one.nrrd")


def test_4d_image(tmp_path, data_dir):
    vols = [sitk.ReadImage(str(data_dir / f"mr_brain/brats_case/{n}.nii.gz"), sitk.sitkFloat32) for n in ("t1c", "t2f")]
    four = sitk.JoinSeries(vols)
    sitk.WriteImage(four, str(tmp_path / "two.nii.gz"))
    with pytest.raises(InputImageError, match=r"4D image .*2 volumes.*--input NAME=PATH"):
        read_image(tmp_path / "two.nii.gz")
    # a 4D file holding a single volume is just that volume
    sitk.WriteImage(sitk.JoinSeries([vols[0]]), str(tmp_path / "one.nii.gz"))
    img = read_image(tmp_path / "one.nii.gz")
    assert img.size == (240, 240, 155)


def test_nan_and_inf_voxels(tmp_path, data_dir):
    img = read_image(data_dir / BRATS)
    arr = img.array.astype(np.float32)
    arr[70, 100, 120] = np.nan
    write_image(img.with_array(arr), tmp_path / "nan.nii.gz")
    with pytest.raises(InputImageError, match=r"1 voxel\(s\) that are NaN or infinite .*x=120, y=100, z=70"):
        read_image(tmp_path / "nan.nii.gz")
    arr[70, 100, 120] = np.inf
    arr[1, 2, 3] = -np.inf
    write_image(img.with_array(arr), tmp_path / "inf.mha")
    with pytest.raises(InputImageError, match=r"2 voxel\(s\)"):
        read_image(tmp_path / "inf.mha")


def test_vector_image(tmp_path, data_dir):
    ct = sitk.ReadImage(str(data_dir / CT))
    sitk.WriteImage(sitk.Compose(ct, ct, ct), str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputImageError, match="3 values per voxel"):
        read_image(tmp_path / "rgb.nrrd")


def test_write_unknown_format(tmp_path, data_dir):
    img = read_image(data_dir / CT)
    with pytest.raises(InputImageError, match="unknown image format"):
        write_image(img, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_one_format_table():
    """unetrpp.formats is the one table every entry point takes its suffixes from; it loads neither
    SimpleITK nor torch (the Slicer module and the server's upload checks import it)."""
    import subprocess
    import sys

    from unetrpp import formats

    assert formats.INPUT_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr", ".mhd")
    assert formats.SINGLE_FILE_INPUT_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".mha")
    assert formats.LABELMAP_SUFFIXES == formats.PROBABILITY_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".mha")
    assert formats.OUTPUT_SUFFIXES == (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")
    assert set(formats.WRITE_SUFFIXES) == set(formats.INPUT_SUFFIXES) | {".seg.nrrd"}
    assert [formats.image_suffix(n) for n in ("a/CT.SEG.NRRD", "ct.nii.gz", "ct.nii", "x.dcm", "x.tar.gz", "x")] == [
        ".seg.nrrd", ".nii.gz", ".nii", ".dcm", ".gz", ""]
    assert formats.strip_suffix("case_01.nii.gz") == "case_01" and formats.format_of("ct.mhd") == "mha"
    code = "import sys, unetrpp.formats; print(sorted({'SimpleITK', 'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
