"""The `Image` type: a 3D scalar volume with its geometry, and the checks every volume passes
whatever it was read from (a 3D scalar image, finite voxels, a grid that can describe a scan).

Arrays are numpy in (z, y, x) order, as SimpleITK's `GetArrayFromImage` gives them; spacing,
origin and direction stay in ITK/LPS (x, y, z) order exactly as SimpleITK reads them, so oblique
and left-handed direction matrices survive a read/write round trip unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputImageError

Triple = tuple[float, float, float]

#: Largest |cos| between two axes of a direction matrix (and largest deviation of an axis length
#: from 1) still taken as orthonormal: rounding in DICOM/NIfTI headers stays far below it
#: (about 1e-6); a sheared grid (e.g. 0.45 in an NRRD "space directions") does not.
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass
class Image:
    """A 3D volume: `array` (z, y, x); `spacing`, `origin` (x, y, z) in mm, LPS; `direction` 3x3
    (columns are the x, y, z axis directions, as ITK). `meta` holds where it came from."""

    array: np.ndarray
    spacing: Triple
    origin: Triple
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    # Geometry ------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """Voxel counts in (x, y, z) order, as ITK."""
        return tuple(int(n) for n in self.array.shape[::-1])  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) indices, shape (..., 3) -> LPS points in mm."""
        index_xyz = np.asarray(index_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ self.direction.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS points (..., 3) -> continuous (x, y, z) indices."""
        points = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        return (points @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing)

    def corners(self) -> np.ndarray:
        """The 8 corners of the volume's extent (voxel edges, not centres), LPS mm, (8, 3)."""
        size = np.asarray(self.size, dtype=np.float64)
        grid = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        return self.index_to_physical(grid * size - 0.5)

    def same_grid(self, other: "Image", tol: float = 1e-4) -> bool:
        """Same size and (within `tol` mm / `tol` in direction cosines) the same geometry."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol, rtol=0)
            and np.allclose(self.origin, other.origin, atol=tol, rtol=0)
            and np.allclose(self.direction, other.direction, atol=tol, rtol=0)
        )

    def with_array(self, array: np.ndarray, **meta: Any) -> "Image":
        """A new image on the same grid holding `array` (same shape)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return replace(self, array=array, direction=self.direction.copy(), meta={**self.meta, **meta})

    # SimpleITK ------------------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, **meta: Any) -> "Image":
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3),
            meta=dict(meta),
        )

    def describe(self) -> str:
        return (
            f"{'x'.join(str(s) for s in self.size)} voxels, spacing "
            f"{' x '.join(f'{s:g}' for s in self.spacing)} mm"
        )


# Checks every volume passes ---------------------------------------------------------------------
def check_geometry(image: Image, where: str) -> None:
    """Refuse geometry that cannot describe a scan: non-finite or non-positive spacing, a
    non-finite origin, or a direction matrix that is not orthonormal (sheared or degenerate axes,
    which ITK accepts from NRRD/MHA headers but resampling and volumes would get wrong)."""
    spacing = np.asarray(image.spacing)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputImageError(f"{where} has voxel spacing {tuple(image.spacing)}: each must be a positive number of mm")
    if not np.all(np.isfinite(image.origin)):
        raise InputImageError(f"{where} has origin {tuple(image.origin)}: it must be finite (mm)")
    d = image.direction
    if not np.all(np.isfinite(d)):
        raise InputImageError(f"{where} has a direction matrix with non-finite values")
    deviation = float(np.abs(d.T @ d - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOLERANCE:
        rows = "; ".join(" ".join(f"{v:.4g}" for v in col) for col in d.T)
        raise InputImageError(
            f"{where} has a direction matrix that is not orthonormal (axis directions {rows}; deviation "
            f"{deviation:.3g} > {ORTHONORMAL_TOLERANCE:g}): its voxel grid is sheared or degenerate, and "
            "distances and volumes computed on it would be wrong. Resample it onto an orthogonal grid "
            "(e.g. in 3D Slicer: Resample Scalar/Vector/DWI Volume) or fix its header"
        )



def check_dimensions(img: sitk.Image, where: str) -> sitk.Image:
    """A scalar 3D image (a 4D image holding one volume becomes that volume), else InputImageError."""
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{where} has {img.GetNumberOfComponentsPerPixel()} values per voxel (a colour or vector "
            "image); a model input must be a scalar 3D volume (CT in HU or one MRI sequence)"
        )
    dim = img.GetDimension()
    size = img.GetSize()
    if dim == 4:
        if size[3] == 1:
            img = img[:, :, :, 0]
        else:
            raise InputImageError(
                f"{where} is a 4D image ({' x '.join(map(str, size))}: {size[3]} volumes); each model "
                "input takes one 3D volume. Split it into 3D files (one per channel or time point) "
                "and pass them as separate inputs, e.g. --input NAME=PATH for a multi-input model"
            )
    elif dim == 2:
        raise InputImageError(
            f"{where} is a 2D image ({size[0]} x {size[1]}); UNETR++ segments 3D volumes. Give a "
            "3D file or a DICOM folder holding the whole series"
        )
    elif dim != 3:
        raise InputImageError(f"{where} has {dim} dimensions; a model input must be a 3D volume")
    check_size(img.GetSize(), where)
    return img


def check_size(size: tuple[int, ...], where: str) -> None:
    """A volume needs at least 2 voxels along each axis (`size` in x, y, z order)."""
    if min(size) < 2:
        raise InputImageError(
            f"{where} holds a single slice ({' x '.join(map(str, size))}): it is 2D data; "
            "UNETR++ segments 3D volumes. Give the whole series"
        )


def check_finite(array: np.ndarray, where: str) -> None:
    """Refuse NaN/Inf voxels, naming the first."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        n = int(bad.sum())
        if n:
            z, y, x = (int(v[0]) for v in np.nonzero(bad))
            raise InputImageError(
                f"{where} has {n} voxel(s) that are NaN or infinite (first at voxel x={x}, y={y}, z={z}); "
                "fix or mask them (e.g. replace with 0) before segmenting"
            )

