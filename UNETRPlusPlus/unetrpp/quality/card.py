"""The model card as data: what a model was trained on, computed from its training cases.

The manifest's optional `card` section (schema version 2) holds, per input, the modality, the
intensity distribution inside the labelled structures ("foreground", nnU-Net's statistic) and of the
whole scan above air ("body"), a z-scored profile (the signature of an MR sequence), the voxel
spacing, the scan extent and the voxel order; per label, how often it is present, its volume range
and how fragmented it is; and a calibration temperature fitted on validation cases. A field that is
missing means "no reference": the check that needs it says so instead of guessing.

Spacing and extent are given along the patient axes (head-feet, front-back, left-right, written
z, y, x) whatever the voxel order of a scan, so scans stored in different orders compare.

Everything here is numpy/SimpleITK only (no torch): the export calls `card_from_cases` /
`card_from_dataset` and `fit_temperature`; the official import calls `official_card`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Percentiles recorded for intensity distributions.
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
#: CT voxels at or below this many HU are air (outside the body, lungs, bowel gas).
CT_AIR_HU = -500.0
#: At most this many voxels enter one intensity statistic (a regular subsample beyond it).
MAX_SAMPLE = 1 << 21


def _key(q: float) -> str:
    return f"{q:g}"


def percentiles(values: np.ndarray, qs: Sequence[float] = PERCENTILES) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {_key(q): round(float(v), 4) for q, v in zip(qs, np.percentile(values, qs))}


def sample(array: np.ndarray, limit: int = MAX_SAMPLE) -> np.ndarray:
    """A regular strided view of a (z, y, x) array with at most about `limit` voxels."""
    if array.size <= limit:
        return array
    step = int(math.ceil((array.size / limit) ** (1 / 3)))
    return array[::step, ::step, ::step]


def body_mask(array: np.ndarray, modality: str) -> np.ndarray:
    """Voxels of the scan above air: CT above -500 HU, MR non-zero and above 1 % of the maximum."""
    if modality == "CT":
        return array > CT_AIR_HU
    a = np.asarray(array, dtype=np.float32)
    top = float(a.max(initial=0.0))
    return a > max(0.01 * top, 0.0)


def intensity(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    return {"percentiles": percentiles(values), "mean": round(float(values.mean()), 4),
            "std": round(float(values.std()), 4)}


def profile(body_values: np.ndarray) -> dict[str, float]:
    """Percentiles of the body intensities z-scored per scan: a sequence's signature (T1, T2 and
    FLAIR differ in skew and tails), comparable across scanners and scalings."""
    v = np.asarray(body_values, dtype=np.float64)
    if v.size < 2 or v.std() == 0:
        return {}
    return percentiles((v - v.mean()) / v.std(), (1, 5, 25, 50, 75, 95, 99))


# Geometry along patient axes -------------------------------------------------------------------
def patient_axes(direction: np.ndarray) -> list[int]:
    """For each image axis (x, y, z), the patient axis it runs along most (0 = L-R, 1 = P-A, 2 = I-S)."""
    d = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    return [int(np.argmax(d[:, i])) for i in range(3)]


def patient_zyx(values_xyz: Sequence[float], direction: np.ndarray) -> list[float]:
    """Per-image-axis values (x, y, z) re-ordered to the patient axes (I-S, P-A, L-R) = "z, y, x"."""
    out = [0.0, 0.0, 0.0]
    for axis, p in enumerate(patient_axes(direction)):
        out[2 - p] = float(values_xyz[axis])
    return out


def orientation_code(direction: np.ndarray) -> str:
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        tuple(float(v) for v in np.asarray(direction, dtype=float).ravel()))


def geometry(image: Any) -> dict[str, Any]:
    """spacing and extent (mm, patient axes z, y, x) and orientation code of an `unetrpp.image.Image`."""
    size = image.size
    spacing = image.spacing
    return {
        "spacing_mm": patient_zyx(spacing, image.direction),
        "extent_mm": patient_zyx([n * s for n, s in zip(size, spacing)], image.direction),
        "orientation": orientation_code(image.direction),
    }


# Labels ------------------------------------------------------------------------------------------
def fragment_fraction(mask: np.ndarray) -> float:
    """Fraction of a mask's voxels outside its largest 26-connected component."""
    from scipy import ndimage

    total = int(mask.sum())
    if total == 0:
        return 0.0
    components, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return 0.0
    sizes = np.bincount(components.ravel())[1:]
    return float(1.0 - sizes.max() / total)


def label_statistics(label: np.ndarray, voxel_ml: float, values: Iterable[int]) -> dict[int, dict[str, float]]:
    """Per label value present: {"volume_ml", "fragment_fraction"} (computed inside its bounding box)."""
    from scipy import ndimage

    values = sorted(int(v) for v in values)
    boxes = ndimage.find_objects(label.astype(np.int32, copy=False), max_label=max(values, default=0))
    out: dict[int, dict[str, float]] = {}
    for v in values:
        box = boxes[v - 1] if v - 1 < len(boxes) else None
        if box is None:
            continue
        mask = label[box] == v
        out[v] = {"volume_ml": float(mask.sum()) * voxel_ml, "fragment_fraction": fragment_fraction(mask)}
    return out


# The card ----------------------------------------------------------------------------------------
def _range(rows: list[list[float]]) -> dict[str, list[float]]:
    a = np.asarray(rows, dtype=float)
    return {"min": [round(float(v), 4) for v in a.min(0)], "median": [round(float(v), 4) for v in np.median(a, 0)],
            "max": [round(float(v), 4) for v in a.max(0)]}


def card_from_cases(cases: Iterable[tuple[Mapping[str, Any], np.ndarray | None]],
                    inputs: Sequence[Mapping[str, Any]], label_values: Sequence[int], *,
                    source: str = "training cases", notes: str | None = None) -> dict[str, Any]:
    """The card of a model from its training cases: `cases` yields ({input name: Image}, label array on
    the first input's grid (z, y, x), or None); `inputs` are the manifest's input entries (name,
    modality); `label_values` the manifest's label values. Pooled intensities are subsampled
    (`MAX_SAMPLE` voxels per scan)."""
    names = [str(i["name"]) for i in inputs]
    modality = {str(i["name"]): str(i.get("modality", "")) for i in inputs}
    fg: dict[str, list[np.ndarray]] = {n: [] for n in names}
    body: dict[str, list[np.ndarray]] = {n: [] for n in names}
    profiles: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    geo: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    present: dict[int, list[dict[str, float]]] = {int(v): [] for v in label_values}
    n_cases = 0
    for images, label in cases:
        n_cases += 1
        for name in names:
            img = images[name]
            a = img.array
            small = sample(a)
            b = small[body_mask(small, modality[name])]
            body[name].append(np.asarray(b, dtype=np.float32))
            profiles[name].append(profile(b))
            geo[name].append(geometry(img))
            if label is not None:
                f = a[label > 0]
                if f.size > MAX_SAMPLE:
                    f = f[:: int(math.ceil(f.size / MAX_SAMPLE))]
                fg[name].append(np.asarray(f, dtype=np.float32))
        if label is not None:
            ml = float(np.prod(images[names[0]].spacing)) / 1000.0
            for v, stats in label_statistics(label, ml, present).items():
                present[v].append(stats)
    if n_cases == 0:
        raise ValueError("a model card needs at least one training case")
    card_inputs = []
    for name in names:
        entry: dict[str, Any] = {"name": name}
        if modality[name] in ("CT", "MR"):
            entry["modality"] = modality[name]
        if fg[name]:
            entry["foreground"] = intensity(np.concatenate(fg[name]))
        entry["body"] = intensity(np.concatenate(body[name]))
        keys = set.intersection(*(set(p) for p in profiles[name])) if all(profiles[name]) else set()
        if keys:
            entry["profile"] = {k: round(float(np.median([p[k] for p in profiles[name]])), 4)
                                for k in sorted(keys, key=float)}
        entry["spacing_mm"] = _range([g["spacing_mm"] for g in geo[name]])
        entry["extent_mm"] = _range([g["extent_mm"] for g in geo[name]])
        codes = {g["orientation"] for g in geo[name]}
        entry["orientation"] = codes.pop() if len(codes) == 1 else None
        card_inputs.append({k: v for k, v in entry.items() if v != {}})
    labels = []
    for v in sorted(present):
        rows = present[v]
        entry = {"value": v, "presence": round(len(rows) / n_cases, 4)}
        if rows:
            vols = [r["volume_ml"] for r in rows]
            entry["volume_ml"] = {"min": round(min(vols), 3), "median": round(float(np.median(vols)), 3),
                                  "max": round(max(vols), 3)}
            entry["fragment_fraction"] = round(max(r["fragment_fraction"] for r in rows), 4)
        labels.append(entry)
    card: dict[str, Any] = {"source": source, "cases": n_cases, "inputs": card_inputs, "labels": labels}
    if notes:
        card["notes"] = notes
    return card


def _read(path: Path) -> Any:
    from ..image import read_image

    return read_image(path)


def case_files(root: Path, data: Mapping[str, Any], case_id: str,
               channels: Sequence[str]) -> tuple[dict[str, Path], Path | None]:
    """({channel: image path}, label path or None) of one case of a training dataset folder, as
    `unetrpp_train.data.read_dataset` finds them: dataset.json's "cases" as a mapping or a list of
    records ({"id", "images", "label"}) or ids; missing paths default to cases/<id>/image_<channel>.nii.gz
    and cases/<id>/label.nii.gz."""
    raw = data.get("cases") or {}
    rec: Any = raw.get(case_id, {}) if isinstance(raw, Mapping) else next(
        (r for r in raw if isinstance(r, Mapping) and str(r.get("id", r.get("case_id"))) == case_id), {})
    rec = rec if isinstance(rec, Mapping) else {}
    given = rec.get("images") if isinstance(rec.get("images"), Mapping) else {}
    folder = root / "cases" / case_id
    images = {ch: root / given[ch] if given.get(ch) else folder / f"image_{ch}.nii.gz" for ch in channels}
    label = root / rec["label"] if rec.get("label") else folder / "label.nii.gz"
    return images, label if label.is_file() else None


def card_from_dataset(root: str | os.PathLike[str], case_ids: Sequence[str], inputs: Sequence[Mapping[str, Any]],
                      label_values: Sequence[int], **options: Any) -> dict[str, Any]:
    """`card_from_cases` over cases of a converted training dataset (dataset.json under `root`; see
    `case_files`)."""
    root = Path(root)
    data = json.loads((root / "dataset.json").read_text())
    channels = [str(i["name"]) for i in inputs]

    def cases() -> Iterable[tuple[dict[str, Any], np.ndarray | None]]:
        for cid in case_ids:
            image_files, label_file = case_files(root, data, cid, channels)
            images = {name: _read(path) for name, path in image_files.items()}
            yield images, (_read(label_file).array if label_file is not None else None)

    return card_from_cases(cases(), inputs, label_values, **options)


# The official models -----------------------------------------------------------------------------
OFFICIAL_NOTES = ("From the official training plans: the foreground intensity range (CT clip at the 0.5/99.5 "
                  "percentiles, mean, standard deviation) and the median spacing (the target spacing). No "
                  "reference for the scan extent, voxel order, body intensities, label presence and volumes, "
                  "and no calibration: the official plans do not state them.")


def official_card(inputs: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> dict[str, Any]:
    """What the official plans state (intensity properties, spacing); "no reference" for the rest."""
    out = []
    for i in inputs:
        entry: dict[str, Any] = {"name": i["name"], "modality": i["modality"]}
        norm = i.get("normalization", {})
        if norm.get("scheme") == "ct":
            lo, hi = norm["clip"]
            entry["foreground"] = {"percentiles": {"0.5": float(lo), "99.5": float(hi)},
                                   "mean": float(norm["mean"]), "std": float(norm["std"])}
        entry["spacing_mm"] = {"median": [float(s) for s in plan["target_spacing"]]}
        out.append(entry)
    return {"source": "official plans", "inputs": out, "notes": OFFICIAL_NOTES}


# Calibration -------------------------------------------------------------------------------------
def apply_temperature(probabilities: np.ndarray, temperature: float, axis: int = 0) -> np.ndarray:
    """softmax(log p / T) along `axis` (the class axis), float32."""
    p = np.asarray(probabilities, dtype=np.float32)
    if temperature == 1.0:
        return p
    logp = np.log(np.maximum(p, 1e-12)) / np.float32(temperature)
    logp -= logp.max(axis=axis, keepdims=True)
    e = np.exp(logp)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: probabilities (K, N), labels (N,) integer classes."""
    p = np.asarray(probabilities)
    conf = p.max(0)
    correct = p.argmax(0) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(float(conf[sel].mean()) - float(correct[sel].mean()))
    return float(total / max(conf.size, 1))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.25, 8.0),
                    max_voxels: int = 1 << 18, seed: int = 0) -> float:
    """The temperature minimising the negative log-likelihood of `labels` (N,) under
    softmax(log p / T) of probabilities (K, N); golden-section search on log T over `bounds`
    (a voxel subsample of at most `max_voxels`)."""
    p = np.asarray(probabilities, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64).ravel()
    if p.shape[1] > max_voxels:
        idx = np.random.default_rng(seed).choice(p.shape[1], max_voxels, replace=False)
        p, y = p[:, idx], y[idx]
    logp = np.log(np.maximum(p, 1e-12))

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(0, keepdims=True)
        lse = np.log(np.exp(z).sum(0))
        return float(np.mean(lse - z[y, np.arange(y.size)]))

    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(25):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return round(math.exp((a + b) / 2), 4)


def add_reference_uncertainty(card: dict[str, Any], probabilities: Sequence[Any], temperature: float) -> dict[str, Any]:
    """Store per label the mean entropy inside / across the border of the predicted structure (the
    median over the validation cases' class probabilities (K, D, H, W) on the network grid), with
    `temperature`: the in-domain reference the uncertainty check compares a run with."""
    from .structures import per_structure_measures, uncertainty

    rows: dict[int, list[dict[str, float]]] = {}
    values = [int(l["value"]) for l in card.get("labels", [])]
    for p in probabilities:
        labels, entropy = uncertainty(p, temperature)
        for v, m in per_structure_measures(labels, entropy, values).items():
            rows.setdefault(v, []).append(m)
    for entry in card.get("labels", []):
        got = rows.get(int(entry["value"]))
        if got:
            entry["entropy"] = {k: round(float(np.median([g[k] for g in got])), 4) for k in ("inside", "border")}
    return card


def calibration(probabilities: np.ndarray, labels: np.ndarray, *, fitted_on: str, cases: int = 1) -> dict[str, Any]:
    """The card's `calibration` entry: the fitted temperature and the ECE before/after on the same voxels."""
    p = np.asarray(probabilities, dtype=np.float32).reshape(probabilities.shape[0], -1)
    y = np.asarray(labels).ravel()
    t = fit_temperature(p, y)
    return {"temperature": t, "cases": int(cases), "fitted_on": fitted_on,
            "ece_before": round(expected_calibration_error(p, y), 5),
            "ece_after": round(expected_calibration_error(apply_temperature(p, t), y), 5)}


__all__ = [
    "PERCENTILES", "add_reference_uncertainty", "apply_temperature", "body_mask", "calibration", "card_from_cases", "card_from_dataset",
    "expected_calibration_error", "fit_temperature", "fragment_fraction", "geometry", "official_card",
    "orientation_code", "patient_zyx", "percentiles", "profile",
]
