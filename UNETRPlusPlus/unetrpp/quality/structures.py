"""Result checks after inference, per structure: plausibility and calibrated uncertainty.

`uncertainty(probabilities, temperature)` -> (argmax, normalised predictive entropy) on the network
grid, computed in slabs (bounded memory). `check_structures(...)` -> per label value the report's
segment `quality` entry ({"status", "reasons", "uncertainty", "partial"}) and one run-level `Check`
naming the doubtful structures:

- volume against the card's range (a structure cut by the field of view only counts when too large:
  its volume is a lower bound);
- `partial`: the structure touches the edge of the scan (or of the region of interest): a flag next
  to the volume, not by itself a reason for doubt;
- fragmentation: a large share of the structure outside its largest connected piece;
- an expected structure (present in most training scans) missing, or a structure found that no
  training scan had;
- uncertainty: mean predictive entropy (softmax with the card's temperature, divided by log K, so
  0 = certain, 1 = uniform) inside the structure and in a band across its border; the mirrored
  predictions' disagreement where a caller measured it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import worst
from .card import fragment_fraction
from .checks import FAIL, OK, REVIEW, Check

log = logging.getLogger(__name__)

#: mean normalised entropy inside a structure above the card's in-domain reference (`entropy.inside`
#: of the label) by this much: uncertain (review) / unreliable (fail)
ENTROPY_DELTA_REVIEW, ENTROPY_DELTA_FAIL = 0.08, 0.2
#: ... across its border, above the card's `entropy.border`: review
BORDER_DELTA_REVIEW = 0.15
#: without a reference in the card (uncalibrated models): absolute limits inside / across the border
ENTROPY_INSIDE_REVIEW, ENTROPY_INSIDE_FAIL, ENTROPY_BORDER_REVIEW = 0.15, 0.35, 0.45
#: share of the structure outside its largest piece (beyond the card's own value) for review
FRAGMENT_REVIEW = 0.2
#: volume tolerance around the card's range: this factor with fewer than 10 training cases, else 1.5
VOLUME_FACTOR_FEW, VOLUME_FACTOR = 2.0, 1.5
#: a structure present in at least this share of training scans is expected
EXPECTED_PRESENCE = 0.5
#: voxels (z, y, x slabs) per entropy chunk
_SLAB_VOXELS = 1 << 22
#: network grids above this many voxels get their entropy at every `entropy_step`-th voxel per axis
#: (the argmax, partial and fragments stay at full resolution): keeps the checks at about 1 % of a
#: run on large grids (a 0.76 mm abdomen is ~40 M voxels x 14 classes)
ENTROPY_FULL_VOXELS = 1 << 23


def entropy_step(shape: Sequence[int]) -> int:
    n = int(np.prod([int(v) for v in shape]))
    return 1 if n <= ENTROPY_FULL_VOXELS else int(math.ceil((n / ENTROPY_FULL_VOXELS) ** (1 / 3)))


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def uncertainty(probabilities: Any, temperature: float = 1.0, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(argmax labels uint8/uint16, entropy float32 in 0..1) of class probabilities (K, D, H, W), after
    the temperature (softmax(log p / T)). With `step` > 1 the entropy is computed at every step-th
    voxel per axis (shape ceil(D / step), ...); the labels always at full resolution."""
    p_all = _numpy(probabilities)
    k = p_all.shape[0]
    shape = p_all.shape[1:]
    labels = np.empty(shape, dtype=np.uint8 if k <= 256 else np.uint16)
    entropy = np.empty(tuple(-(-n // step) for n in shape), dtype=np.float32)
    chunk = max(1, _SLAB_VOXELS // max(int(np.prod(shape[1:])), 1))
    chunk = -(-chunk // step) * step  # a multiple of step: every chunk starts on a sampled slice
    inv_t = np.float32(1.0 / temperature)
    norm = np.float32(1.0 / math.log(k)) if k > 1 else np.float32(0.0)
    for z in range(0, shape[0], chunk):
        full = p_all[:, z:z + chunk]
        labels[z:z + chunk] = full.argmax(0)
        p = np.asarray(full[:, ::step, ::step, ::step] if step > 1 else full, dtype=np.float32)
        logp = np.log(np.maximum(p, np.float32(1e-12)))
        if temperature != 1.0:
            logp *= inv_t
            logp -= logp.max(0, keepdims=True)
            p = np.exp(logp)
            s = p.sum(0, keepdims=True)
            p /= s
            logp -= np.log(s)
        entropy[z // step:z // step + p.shape[1]] = -(p * logp).sum(0) * norm
    np.clip(entropy, 0.0, 1.0, out=entropy)
    return labels, entropy


def touching_edges(labelmap: np.ndarray, box: Sequence[slice] | None = None) -> set[int]:
    """Label values on any of the six faces of `labelmap[box]` (the scan, or its region of interest)."""
    a = labelmap if box is None else labelmap[tuple(box)]
    found: set[int] = set()
    for axis in range(3):
        for index in (0, a.shape[axis] - 1):
            face = np.take(a, index, axis=axis)
            found.update(int(v) for v in np.unique(face) if v)
    return found


def _band_means(mask: np.ndarray, entropy: np.ndarray) -> tuple[float, float]:
    from scipy import ndimage

    inside = float(entropy[mask].mean())
    band = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    return inside, float(entropy[band].mean()) if band.any() else inside


def _padded(box: tuple[slice, ...], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))


def per_structure_measures(labels: np.ndarray, entropy: np.ndarray, values: Sequence[int],
                           skip_fragments: Sequence[int] = (), step: int = 1) -> dict[int, dict[str, float]]:
    """Per label value present on the network grid: inside/border entropy and fragment fraction.
    `entropy` may be sampled at every step-th voxel (`uncertainty(..., step)`); the bands are then
    taken on the sampled grid, the fragments on the full one."""
    from scipy import ndimage

    sub = labels[::step, ::step, ::step] if step > 1 else labels
    top = max(values, default=0)
    boxes = ndimage.find_objects(labels, max_label=top)
    sub_boxes = ndimage.find_objects(sub, max_label=top) if step > 1 else boxes
    out: dict[int, dict[str, float]] = {}
    for v in values:
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            continue
        sub_box = sub_boxes[v - 1] if v <= len(sub_boxes) else None
        if sub_box is not None:
            sub_box = _padded(sub_box, sub.shape)
            inside, border = _band_means(sub[sub_box] == v, entropy[sub_box])
        else:  # smaller than the sampling: the sampled voxels nearest to its voxels
            where = (np.argwhere(labels[box] == v) + [b.start for b in box]) // step
            inside = border = float(entropy[tuple(where.T)].mean())
        box = _padded(box, labels.shape)
        out[v] = {"inside": inside, "border": border,
                  "fragments": 0.0 if v in skip_fragments else fragment_fraction(labels[box] == v)}
    return out


def _volume_reason(volume: float, ref: Mapping[str, float], cases: int, partial: bool) -> str | None:
    if not ref or "min" not in ref or "max" not in ref:
        return None
    f = VOLUME_FACTOR_FEW if cases < 10 else VOLUME_FACTOR
    lo, hi = ref["min"] / f, ref["max"] * f
    if volume > hi:
        return f"volume {volume:.0f} mL is larger than in any training scan ({ref['min']:.0f}-{ref['max']:.0f} mL)"
    if volume < lo and not partial:
        return f"volume {volume:.1f} mL is smaller than in any training scan ({ref['min']:.0f}-{ref['max']:.0f} mL)"
    return None


def _uncertainty_reasons(m: Mapping[str, float], ref: Mapping[str, float] | None) -> list[tuple[str, str]]:
    inside, border = m["inside"], m["border"]
    if ref and "inside" in ref:
        base, base_border = float(ref["inside"]), float(ref.get("border", ref["inside"]))
        fail, review, border_review = base + ENTROPY_DELTA_FAIL, base + ENTROPY_DELTA_REVIEW, base_border + BORDER_DELTA_REVIEW
        known = f" (on the validation scans {base:.2f})"
    else:
        fail, review, border_review = ENTROPY_INSIDE_FAIL, ENTROPY_INSIDE_REVIEW, ENTROPY_BORDER_REVIEW
        known = ""
    if inside > fail:
        return [(FAIL, f"very uncertain: mean entropy {inside:.2f} inside{known}")]
    if inside > review:
        return [(REVIEW, f"uncertain: mean entropy {inside:.2f} inside{known}")]
    if border > border_review:
        return [(REVIEW, f"uncertain border: mean entropy {border:.2f} at the border")]
    return []


def check_structures(segments: Sequence[Mapping[str, Any]], manifest: Any, *,
                     measures: Mapping[int, Mapping[str, float]], partial: set[int],
                     mirror_disagreement: Mapping[int, float] | None = None) -> tuple[dict[int, dict[str, Any]], Check]:
    """Per label value (every manifest label in `segments`: {"value", "name", "volume_ml"}) the segment's
    quality entry, and the run-level "structures" check."""
    card = manifest.card
    refs = {int(l["value"]): l for l in card.get("labels", [])}
    cases = int(card.get("cases", 0))
    out: dict[int, dict[str, Any]] = {}
    doubtful: list[str] = []
    for seg in segments:
        v = int(seg["value"])
        volume = float(seg.get("volume_ml", 0.0))
        ref = refs.get(v, {})
        m = measures.get(v)
        reasons: list[tuple[str, str]] = []
        is_partial = v in partial and volume > 0
        if volume <= 0:
            if ref.get("presence", 0) >= EXPECTED_PRESENCE:
                reasons.append((REVIEW, f"not found, although present in {ref['presence']:.0%} of the training scans "
                                        "(outside the scan, removed, or missed)"))
            unc = None
        else:
            if ref and ref.get("presence", 1) == 0:
                reasons.append((REVIEW, "found, but absent from every training scan: the model never learnt it"))
            r = _volume_reason(volume, ref.get("volume_ml", {}), cases, is_partial)
            if r:
                reasons.append((REVIEW, r))
            unc = None
            if m is not None:
                unc = {"inside": round(m["inside"], 4), "border": round(m["border"], 4),
                       "mirror_disagreement": None if mirror_disagreement is None else
                       round(float(mirror_disagreement.get(v, 0.0)), 4)}
                reasons.extend(_uncertainty_reasons(m, ref.get("entropy")))
                allowed = FRAGMENT_REVIEW + float(ref.get("fragment_fraction", 0.0))
                if m["fragments"] > allowed:
                    reasons.append((REVIEW, f"fragmented: {m['fragments']:.0%} of it lies outside its largest piece"))
        status = worst(s for s, _ in reasons)
        entry = {"status": status, "reasons": [r for _, r in reasons], "uncertainty": unc, "partial": is_partial}
        out[v] = entry
        if status != OK:
            doubtful.append(f"{seg['name']} ({'; '.join(entry['reasons'])})")
    status = worst(e["status"] for e in out.values())
    n_found = sum(1 for s in segments if s.get("volume_ml", 0) > 0)
    cut = [s["name"] for s in segments if out[int(s["value"])]["partial"]]
    if doubtful:
        message = f"Doubtful structures: {'; '.join(doubtful)}."
    else:
        message = f"All {n_found} structures found look plausible."
    if cut:
        message += f" Cut by the field of view (volume is a lower bound): {', '.join(cut)}."
    check = Check("structures", status, message,
                  {"doubtful": [s["name"] for s in segments if out[int(s["value"])]["status"] != OK], "partial": cut})
    if status != OK:
        log.warning("quality structures (%s): %s", status, message)
    return out, check


__all__ = ["check_structures", "per_structure_measures", "touching_edges", "uncertainty"]
