#!/usr/bin/env python
"""Render the extension's screenshot: the example CT with the demo model's segments overlaid
(axial and coronal slices side by side), as Slicer shows them: segment colours at 50 % opacity.

    python Utilities/render_screenshot.py                       # -> Resources/Screenshots/UNETRPlusPlus-1.png

It runs the real engine (`unetrpp.pipeline.segment`) with the bundled demo model, so the picture is
what a user gets; it is rendered with numpy + SimpleITK (no Slicer GUI is needed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("render_screenshot")


def window(ct: np.ndarray, level: float = 50.0, width: float = 400.0) -> np.ndarray:
    """CT abdomen window as grey levels 0..255."""
    lo = level - width / 2
    return np.clip((ct - lo) / width * 255.0, 0, 255)


def overlay(grey: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]],
            opacity: float = 0.5) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float64)
    for value, colour in colours.items():
        mask = labels == value
        rgb[mask] = (1 - opacity) * rgb[mask] + opacity * np.asarray(colour, dtype=np.float64)
    return rgb.astype(np.uint8)


def upsample(rgb: np.ndarray, sy: float, sx: float, scale: float) -> np.ndarray:
    """Nearest-neighbour zoom to isotropic pixels of 1/scale mm."""
    ny, nx = int(round(rgb.shape[0] * sy * scale)), int(round(rgb.shape[1] * sx * scale))
    iy = np.minimum((np.arange(ny) / (sy * scale)).astype(int), rgb.shape[0] - 1)
    ix = np.minimum((np.arange(nx) / (sx * scale)).astype(int), rgb.shape[1] - 1)
    return rgb[iy][:, ix]


def render(model_path: Path, ct_path: Path, out: Path, scale: float = 1.0) -> Path:
    import unetrpp
    from unetrpp.pipeline import SegmentOptions, segment

    model = unetrpp.load(model_path)
    result = segment(model, {"ct": ct_path}, SegmentOptions(device="cpu"))
    image = sitk.ReadImage(str(ct_path))
    label_image = sitk.GetImageFromArray(result.labelmap.array)
    label_image.CopyInformation(image)
    # LPS index order: axial slices then read as radiologists do (anterior up, patient's right on the left)
    image, label_image = sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(label_image, "LPS")
    ct = sitk.GetArrayFromImage(image).astype(np.float64)  # z, y, x
    labels = sitk.GetArrayFromImage(label_image)
    sx, sy, sz = image.GetSpacing()
    colours = {lab.value: tuple(lab.color) for lab in model.manifest.labels}

    # the axial slice with most liver, the coronal slice through the kidneys' centre (head up)
    z = int(np.argmax((labels == 6).sum(axis=(1, 2))))
    kidneys = np.argwhere(np.isin(labels, (2, 3)))
    y = int(kidneys[:, 1].mean()) if len(kidneys) else labels.shape[1] // 2
    axial = upsample(overlay(window(ct[z]), labels[z], colours), sy, sx, scale)
    coronal = upsample(overlay(window(ct[::-1, y, :]), labels[::-1, y, :], colours), sz, sx, scale)
    height = max(axial.shape[0], coronal.shape[0])

    def centre(a: np.ndarray) -> np.ndarray:
        top = (height - a.shape[0]) // 2
        return np.pad(a, ((top, height - a.shape[0] - top), (0, 0), (0, 0)))

    gap = np.zeros((height, 8, 3), dtype=np.uint8)
    picture = np.concatenate([centre(axial), gap, centre(coronal)], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(out))
    log.info("wrote %s (%d x %d)", out, picture.shape[1], picture.shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "Resources" / "models" / "demo-abdomen-ct")
    ap.add_argument("--input", type=Path, default=REPO / "Resources" / "examples" / "example_ct_sm.nii.gz")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "Resources" / "Screenshots" / "UNETRPlusPlus-1.png")
    ap.add_argument("--scale", type=float, default=1.0, help="output pixels per mm")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    render(args.model, args.input, args.output, args.scale)


if __name__ == "__main__":
    main()
