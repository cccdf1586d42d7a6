"""Issue 12, corrupt and spoofed input volumes: every compressed stream is verified before use
(gzip CRC32 and length, zlib Adler-32) in every container unetrpp reads (.nii.gz, gzip NRRD
attached and detached, compressed MetaImage attached and detached), NIfTI data shorter than its
header are refused, and sheared/degenerate grids (NRRD, MetaImage, NIfTI sform, DICOM orientation
and gantry tilt) are refused instead of giving wrong distances. The CLI cases run the real
`unetrpp segment` with the bundled demo model."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from unetrpp.errors import InputImageError
from unetrpp.image import ORTHONORMAL_TOLERANCE, read_image

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "Resources" / "models" / "demo-abdomen-ct"
EXAMPLE_CT = REPO / "Resources" / "examples" / "example_ct_sm.nii.gz"
CLI = [sys.executable, "-m", "unetrpp"]


@pytest.fixture(scope="module")
def ct() -> sitk.Image:
    return sitk.ReadImage(str(EXAMPLE_CT))


def segment(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "segment", "--model", str(DEMO_MODEL), "--fast", "--progress", "none", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), proc.stderr


# Damaged compressed data ------------------------------------------------------------------------
def _flip_middle(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    for i in range(64):
        b[mid + i] ^= 0x5A
    return bytes(b)


def _flip_at(offset: int):
    def damage(data: bytes) -> bytes:
        b = bytearray(data)
        b[offset] ^= 0xFF
        return bytes(b)
    return damage


DAMAGES = {
    "64 bytes in the middle": _flip_middle,
    "gzip CRC32 trailer": _flip_at(-8),
    "gzip length trailer": _flip_at(-1),
    "cut at three quarters": lambda d: d[: len(d) * 3 // 4],
    "garbage appended": lambda d: d + b"\x00\x01garbage",
}


def _write(ct: sitk.Image, folder: Path, name: str) -> Path:
    """The example CT in one container; returns the file whose compressed bytes are damaged."""
    path = folder / name
    sitk.WriteImage(ct, str(path), True)
    if name.endswith(".nhdr"):  # ITK writes the detached gzip data beside the header
        return next(p for p in folder.iterdir() if p.name.startswith("ct.") and p.suffix == ".gz")
    if name.endswith(".mhd"):
        return folder / "ct.zraw"
    return path


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.nhdr", "ct.mha", "ct.mhd"])
def test_damaged_compressed_data_refused(ct, tmp_path, name, damage):
    data_file = _write(ct, tmp_path, name)
    header = tmp_path / name
    assert read_image(header).array.tolist() == sitk.GetArrayFromImage(ct).tolist()  # intact: reads
    # (MetaImage holds a zlib stream: the last 8 bytes are deflate data and its Adler-32)
    data_file.write_bytes(DAMAGES[damage](data_file.read_bytes()))
    with pytest.raises(InputImageError, match="damaged or truncated"):
        read_image(header)


def test_multi_member_gzip_reads(ct, tmp_path):
    """Concatenated gzip members are one valid stream (as `cat a.gz b.gz`): read, not refused."""
    raw = gzip.decompress(EXAMPLE_CT.read_bytes())
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(read_image(tmp_path / "two.nii.gz").array, sitk.GetArrayFromImage(ct))


def test_valid_gzip_of_short_data_refused(tmp_path):
    """A perfectly valid gzip stream that holds fewer bytes than the NIfTI header announces (ITK
    fills the tail with zeros) is refused, whatever the last slice holds."""
    raw = gzip.decompress(EXAMPLE_CT.read_bytes())
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 5000]))
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) - 5000])
    for name in ("short.nii.gz", "short.nii"):
        with pytest.raises(InputImageError, match=rf"holds {len(raw) - 5000} of the {len(raw)} bytes"):
            read_image(tmp_path / name)


def test_gzip_file_with_a_plain_name_is_verified(tmp_path):
    """Verification follows the content (gzip magic), not the file name."""
    (tmp_path / "ct.img.gz").write_bytes(_flip_middle(EXAMPLE_CT.read_bytes()))
    with pytest.raises(InputImageError, match="damaged or truncated"):
        read_image(tmp_path / "ct.img.gz")


@pytest.mark.slow
def test_cli_refuses_corrupt_gzip_before_any_work(tmp_path):
    """Issue 12 case 1: 64 corrupted bytes in the gzip stream were segmented with exit 0; a wrong
    CRC trailer too. Now: exit 2, one error line, no output, the input unchanged."""
    for name, damage in (("mid.nii.gz", _flip_middle), ("crc.nii.gz", _flip_at(-8))):
        src = tmp_path / name
        src.write_bytes(damage(EXAMPLE_CT.read_bytes()))
        before = src.read_bytes()
        proc = segment([src, "-o", tmp_path / f"{name}.seg.nrrd"], tmp_path)
        assert_refused(proc, "damaged or truncated.*gzip data fail their check")
        assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crc.nii.gz", "mid.nii.gz"]  # no output, no partial file


# Sheared and degenerate grids --------------------------------------------------------------------
def _nrrd_with_directions(ct: sitk.Image, path: Path, directions: str) -> Path:
    sitk.WriteImage(ct, str(path), False)
    head, sep, data = path.read_bytes().partition(b"\n\n")
    head = re.sub(rb"space directions: [^\n]*", b"space directions: " + directions.encode(), head)
    path.write_bytes(head + sep + data)
    return path


def _mha_with_matrix(ct: sitk.Image, path: Path, matrix: str) -> Path:
    sitk.WriteImage(ct, str(path), False)
    path.write_bytes(re.sub(rb"TransformMatrix = [^\n]*", b"TransformMatrix = " + matrix.encode(), path.read_bytes()))
    return path


def test_sheared_grids_refused(ct, tmp_path):
    """Issue 12 case 2: a non-orthonormal direction matrix was accepted silently."""
    cases = [
        _nrrd_with_directions(ct, tmp_path / "shear.nrrd", "(-3,0,0) (1.5,-3,0) (0,0,3)"),
        _mha_with_matrix(ct, tmp_path / "shear.mha", "1 0 0 0.5 1 0 0 0 1"),
        _mha_with_matrix(ct, tmp_path / "skew.mha", "1 0 0 0 1 0 0 0.2 1"),
    ]
    for path in cases:
        with pytest.raises(InputImageError, match="direction matrix that is not orthonormal"):
            read_image(path)


def test_nifti_sform_shear_refused(tmp_path):
    """A NIfTI whose only transform (sform) is sheared: ITK refuses it; the message says why."""
    n = nib.load(str(EXAMPLE_CT))
    affine = n.affine.copy()
    affine[0, 1] += 1.5
    img = nib.Nifti1Image(np.asarray(n.dataobj), affine)
    img.set_qform(None, 0)
    nib.save(img, str(tmp_path / "shear.nii.gz"))
    with pytest.raises(InputImageError, match="orthonormal"):
        read_image(tmp_path / "shear.nii.gz")


def test_rounding_in_directions_accepted(ct, tmp_path):
    """Header rounding (1e-6) is far inside the tolerance: an oblique scan still reads."""
    c, s = np.cos(0.3), np.sin(0.3)
    path = _mha_with_matrix(ct, tmp_path / "oblique.mha", f"{c:.6f} {s:.6f} 0 {-s:.6f} {c:.6f} 0 0 0 1")
    img = read_image(path)
    assert np.abs(img.direction.T @ img.direction - np.eye(3)).max() < ORTHONORMAL_TOLERANCE


def test_cli_refuses_sheared_nrrd(ct, tmp_path):
    src = _nrrd_with_directions(ct, tmp_path / "shear.nrrd", "(-3,0,0) (1.5,-3,0) (0,0,3)")
    proc = segment([src, "-o", tmp_path / "out.nii.gz"], tmp_path)
    assert_refused(proc, "not orthonormal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shear.nrrd"]


def _dicom_copy(src: Path, dst: Path, change) -> Path:
    dst.mkdir()
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(dst / f.name)
    return dst


def test_dicom_non_orthogonal_orientation_refused(data_dir, tmp_path):
    """GDCM silently replaces a non-orthonormal ImageOrientationPatient by the identity."""
    def shear(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0.3, 0.953939, 0]
    folder = _dicom_copy(data_dir / "ct_dicom/example_ct_dicom", tmp_path / "dcm", shear)
    with pytest.raises(InputImageError, match="ImageOrientationPatient .* is not two orthogonal unit vectors"):
        read_image(folder)


def test_dicom_mixed_orientations_refused(data_dir, tmp_path):
    first = []

    def rotate_one(ds):
        if not first:
            first.append(ds)
            ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    folder = _dicom_copy(data_dir / "ct_dicom/example_ct_dicom", tmp_path / "dcm", rotate_one)
    with pytest.raises(InputImageError, match="mixes slice orientations|not orthonormal|shifted"):
        read_image(folder)


def test_dicom_gantry_tilt_refused(data_dir):
    """The real gantry-tilted Siemens headers in ../shared (SOURCES.md: SimpleITK reads them
    silently as a sheared stack)."""
    with pytest.raises(InputImageError, match="shifted within their plane .*gantry tilt"):
        read_image(data_dir / "ct_dicom/odd_geometry/sliceincrement_002")


def test_untouched_dicom_still_reads(data_dir):
    img = read_image(data_dir / "ct_dicom/example_ct_dicom")
    np.testing.assert_allclose(img.direction, np.eye(3), atol=1e-9)


def test_in_memory_sheared_image_refused_by_the_api():
    """Images handed to the engine in memory get the same geometry check as files."""
    from unetrpp.pipeline import segment

    img = read_image(EXAMPLE_CT)
    img.direction = np.array([[1.0, 0.4, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputImageError, match="not orthonormal"):
        segment(DEMO_MODEL, img)


# Paths that are not files or folders --------------------------------------------------------------
def _special_paths(tmp_path: Path) -> dict[str, Path]:
    """A symbolic link loop, a link to nothing, a FIFO (reading it would block), a character device."""
    import os

    (tmp_path / "a.nii.gz").symlink_to(tmp_path / "b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    os.mkfifo(tmp_path / "fifo.nii.gz")
    (tmp_path / "zero.nii.gz").symlink_to("/dev/zero")
    return {"symbolic link loop": tmp_path / "a.nii.gz", "which does not exist": tmp_path / "dangling.nii.gz",
            "a FIFO": tmp_path / "fifo.nii.gz", "a character device": tmp_path / "zero.nii.gz"}


def test_special_paths_are_input_errors(tmp_path):
    from unetrpp.errors import classify
    from unetrpp.image import source_files

    for what, path in _special_paths(tmp_path).items():
        with pytest.raises(InputImageError, match=what) as err:
            read_image(path)
        assert classify(err.value).category == "input"
    # the output plan resolves input paths (to protect them): a loop is an input error there too
    with pytest.raises(InputImageError, match="symbolic link loop"):
        source_files(tmp_path / "a.nii.gz")


def test_cli_refuses_special_paths(tmp_path):
    paths = _special_paths(tmp_path)
    for what in ("symbolic link loop", "a FIFO"):
        proc = segment([paths[what], "-o", tmp_path / f"{what.replace(' ', '_')}.seg.nrrd"], tmp_path)
        assert_refused(proc, what)


def test_dicom_folder_with_special_entries_refused(data_dir, tmp_path):
    """GDCM's folder scan silently drops slices beside a FIFO and finds no series beside a link loop:
    such a folder is refused, naming the entry, instead of giving a volume with slices missing."""
    import os

    for what, make in (("a FIFO", lambda p: os.mkfifo(p / "zz")),
                       ("a symbolic link loop", lambda p: ((p / "a").symlink_to(p / "b"), (p / "b").symlink_to(p / "a")))):
        folder = tmp_path / what.replace(" ", "_")
        shutil.copytree(data_dir / "ct_dicom/example_ct_dicom", folder)
        make(folder)
        with pytest.raises(InputImageError, match=f"DICOM folder .* which is {what}"):
            read_image(folder)
