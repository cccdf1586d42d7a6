"""The one-page HTML report of a run (`--report-html`): the quality verdict and the input checks, then
per structure its volume (a lower bound when cut by the field of view), status, reasons, uncertainty
and key images (an axial and a coronal slice through it, the segmentation overlaid on the scan).

Self-contained: images are PNGs embedded as data URIs (encoded here with zlib, no imaging library),
no script from elsewhere, no external resources. Images are shown in radiological convention (the
patient's right on the image's left, anterior/superior up) whatever the stored voxel order.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: longest side of a key image, in pixels
KEY_IMAGE_PIXELS = 256
STATUS_COLOURS = {"ok": "#2e7d32", "review": "#ef6c00", "fail": "#c62828"}


def png(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array (rows, cols, 3) as PNG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _lps(image: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array reoriented so that x runs to the patient's left, y to posterior, z to superior."""
    import SimpleITK as sitk

    img = sitk.DICOMOrient(image.to_sitk(), "LPS")
    return sitk.GetArrayFromImage(img), tuple(img.GetSpacing())


def _window(array: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return -160.0, 240.0  # abdominal soft-tissue window
    lo, hi = np.percentile(array[:: max(1, array.shape[0] // 16)], [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _resize(a: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Nearest-neighbour resize to square pixels, the longer side KEY_IMAGE_PIXELS."""
    h, w = a.shape[:2]
    height, width = h * row_mm, w * col_mm
    scale = KEY_IMAGE_PIXELS / max(height, width)
    rows = max(1, int(round(height * scale)))
    cols = max(1, int(round(width * scale)))
    ri = np.minimum((np.arange(rows) / rows * h).astype(int), h - 1)
    ci = np.minimum((np.arange(cols) / cols * w).astype(int), w - 1)
    return a[ri][:, ci]


def _overlay(gray: np.ndarray, labels: np.ndarray, colours: Mapping[int, Sequence[int]], focus: int) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    for value, colour in colours.items():
        m = labels == value
        if m.any():
            alpha = 0.55 if value == focus else 0.2
            rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, np.float32)
    # the focused structure's outline, opaque
    m = labels == focus
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    rgb[edge] = np.asarray(colours.get(focus, (255, 255, 0)), np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def key_images(image: Any, labelmap: Any, colours: Mapping[int, Sequence[int]], modality: str,
               values: Sequence[int]) -> dict[int, tuple[bytes, bytes]]:
    """Per label value present: (axial PNG, coronal PNG) through the structure's centre."""
    from scipy import ndimage

    scan, (sx, sy, sz) = _lps(image)
    labels, _ = _lps(labelmap)
    lo, hi = _window(scan, modality)
    gray = ((np.clip(scan.astype(np.float32), lo, hi) - lo) / (hi - lo) * 255.0)
    boxes = ndimage.find_objects(labels.astype(np.int32), max_label=max(values, default=0))
    out: dict[int, tuple[bytes, bytes]] = {}
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            continue
        sub = np.argwhere(labels[box] == v)
        cz, cy, _ = (sub.mean(0) + [b.start for b in box]).round().astype(int)
        # axial: rows = y (anterior at the top), cols = x (patient right on the left)
        axial = _overlay(gray[cz], labels[cz], colours, v)
        # coronal: rows = z flipped (superior at the top), cols = x
        coronal = _overlay(gray[::-1, cy, :], labels[::-1, cy, :], colours, v)
        out[v] = (png(_resize(axial, sy, sx)), png(_resize(coronal, sz, sx)))
    return out


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _badge(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#555")
    return f'<span class="badge" style="background:{colour}">{html.escape(status or "-")}</span>'


def render(report: Mapping[str, Any], image: Any, labelmap: Any, manifest: Any) -> str:
    """The HTML page of `report` (with its `quality` keys), the first input `image` and `labelmap`."""
    e = html.escape
    quality = report.get("quality", {})
    model = report.get("model", {})
    colours = {l.value: l.color for l in manifest.labels}
    modality = manifest.inputs[0].modality if manifest.inputs else ""
    segments = report.get("segments", [])
    found = [int(s["value"]) for s in segments if s.get("voxels", 0) or s.get("volume_ml", 0) > 0]
    images = key_images(image, labelmap, colours, modality, found) if found else {}
    source = next(iter(report.get("inputs", {}).values()), {}).get("source", "")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Segmentation report: {e(str(source))}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        ".badge{color:#fff;border-radius:4px;padding:1px 6px;font-weight:bold}"
        "img{margin:2px;border:1px solid #999;max-width:256px}.small{color:#555;font-size:90%}</style>",
        "</head><body>",
        f"<h1>Segmentation report {_badge(quality.get('status', ''))}</h1>",
        f"<p>Scan: <code>{e(str(source))}</code><br>Model: {e(str(model.get('title', model.get('name', ''))))} "
        f"({e(str(model.get('name', '')))} {e(str(model.get('version', '')))})<br>"
        "<b>Not a medical device.</b> Review every structure before use.</p>",
        "<h2>Checks</h2><table><tr><th>check</th><th>status</th><th>finding</th></tr>",
    ]
    for c in quality.get("checks", []):
        parts.append(f"<tr><td>{e(str(c.get('name', '')))}</td><td>{_badge(str(c.get('status', '')))}</td>"
                     f"<td>{e(str(c.get('message', '')))}</td></tr>")
    parts.append("</table><h2>Structures</h2><table><tr><th>structure</th><th>volume</th><th>status</th>"
                 "<th>reasons</th><th>uncertainty (entropy inside / border)</th><th>axial, coronal</th></tr>")
    for s in segments:
        q = s.get("quality", {})
        v = int(s["value"])
        volume = float(s.get("volume_ml", 0.0))
        shown = (f"&ge; {volume:.1f} mL<br><span class='small'>cut by the field of view: a lower bound</span>"
                 if q.get("partial") else f"{volume:.1f} mL")
        unc = q.get("uncertainty") or {}
        unc_text = f"{unc['inside']:.2f} / {unc['border']:.2f}" if "inside" in unc else "-"
        reasons = "<br>".join(e(str(r)) for r in q.get("reasons", [])) or "-"
        pics = "".join(_img(b, f"{s['name']} {kind}") for b, kind in zip(images.get(v, ()), ("axial", "coronal")))
        parts.append(f"<tr><td>{e(str(s['name']))}</td><td>{shown}</td><td>{_badge(str(q.get('status', '')))}</td>"
                     f"<td>{reasons}</td><td>{unc_text}</td><td>{pics or '-'}</td></tr>")
    parts.append("</table>")
    warnings = report.get("warnings", [])
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(str(w))}</li>" for w in warnings) + "</ul>")
    parts.append("<p class='small'>Status: ok = nothing found that casts doubt; review = look at it before use; "
                 "fail = not meaningful as is. Uncertainty is the mean predictive entropy (0 certain, 1 uniform) with "
                 "the model's calibration temperature.</p></body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["key_images", "png", "render"]
