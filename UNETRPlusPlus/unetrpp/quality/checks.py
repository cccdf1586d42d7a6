"""Input checks before inference: does the scan look like what the model was trained on?

`check_inputs(images, manifest)` returns a list of `Check`s (name, status ok / review / fail, a
message a clinician can read, details). Checks run on a regular subsample of each volume (at most
`card.MAX_SAMPLE` voxels), so they cost a small fraction of a run. They never raise: a run goes on
and carries the flags; `--strict` refuses a run with a failed input check (`QualityRefusedError`).

- modality: a CT model needs Hounsfield units (air near -1000 HU); an MRI (all values >= 0, no
  air) fails, and so does a CT stored without its rescale (air near 0, tissue near +1024). An MR
  model given a CT in HU fails.
- intensity: the scan's body intensities against the card's (CT: the share of body voxels inside the
  training range; MR: the z-scored profile).
- spacing / extent: voxel spacing much coarser than the training scans'; a scan covering far less
  (structures cut, volumes are lower bounds) or far more than the training scans.
- orientation: a voxel order other than the training scans' (the networks are not flip-invariant);
  says which order was used and offers the card's (`plan.orientation`).
- sequences (several inputs): the same volume given twice, or inputs that look more like each
  other's sequence than like their own (from the card's profiles).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np

from . import worst
from .card import CT_AIR_HU, body_mask, geometry, profile, sample

log = logging.getLogger(__name__)

OK, REVIEW, FAIL = "ok", "review", "fail"

#: CT in HU: at least this share of voxels is air (<= -900 HU) - outside the body, lungs, bowel gas.
MIN_AIR_FRACTION = 0.01
#: ... and at least this share of the voxels above -500 HU lies within -150..150 HU (fat, water, soft tissue).
MIN_SOFT_TISSUE_FRACTION = 0.5
#: the offset of a CT stored without its rescale intercept
RESCALE_OFFSET = 1024.0
#: spacing coarser than the training maximum by this factor: review
SPACING_FACTOR = 1.5
#: extent below this fraction of the training minimum, or above 1/this of the maximum: review
EXTENT_FACTOR = 0.5
#: CT: share of body voxels inside the card's body range [p1, p99] for ok / for review (below: fail)
CT_INSIDE_OK, CT_INSIDE_REVIEW = 0.9, 0.6
#: MR: mean absolute difference of z-scored percentiles for ok / review (above: fail)
PROFILE_OK, PROFILE_REVIEW = 0.35, 0.8
#: two inputs this correlated are the same sequence given twice
DUPLICATE_CORRELATION = 0.995


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, **self.details}


def summary(checks: Sequence[Check]) -> dict[str, Any]:
    """The report's `quality` entry: {"status": worst, "checks": [...]}."""
    return {"status": worst(c.status for c in checks), "checks": [c.as_json() for c in checks]}


def _card_input(manifest: Any, name: str) -> dict[str, Any]:
    for entry in manifest.card.get("inputs", []):
        if entry.get("name") == name:
            return entry
    return {}


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


AXES = ("head-feet", "front-back", "left-right")


# Modality ----------------------------------------------------------------------------------------
def ct_signature(values: np.ndarray, offset: float = 0.0) -> tuple[float, float]:
    """(share of voxels <= -900 HU, share of voxels above -500 HU within -150..150 HU) of `values`
    read as HU + `offset`."""
    v = np.asarray(values, dtype=np.float32) - np.float32(offset)
    tissue = v > CT_AIR_HU
    n = max(int(tissue.sum()), 1)
    return float((v <= -900).mean()), float(((v > -150) & (v < 150) & tissue).sum() / n)


def looks_like(values: np.ndarray) -> str:
    """"CT" (HU), "CT without rescale", "MR" (no negative values, not a shifted CT) or "unknown"."""
    air, soft = ct_signature(values)
    if air >= MIN_AIR_FRACTION and soft >= MIN_SOFT_TISSUE_FRACTION:
        return "CT"
    lowest = float(np.min(values)) if values.size else 0.0
    if lowest >= -50:
        air, soft = ct_signature(values, RESCALE_OFFSET)
        if air >= MIN_AIR_FRACTION and soft >= MIN_SOFT_TISSUE_FRACTION:
            return "CT without rescale"
        if lowest >= 0:
            return "MR"
    return "unknown"


def check_modality(name: str, modality: str, values: np.ndarray) -> Check:
    kind = looks_like(values)
    d = {"input": name, "looks_like": kind}
    if modality == "CT":
        if kind == "CT":
            return Check("modality", OK, f"{name}: a CT in Hounsfield units, as the model expects.", d)
        if kind == "CT without rescale":
            return Check("modality", FAIL, (
                f"{name}: looks like a CT stored without its rescale: air is near 0 instead of -1000 HU and soft "
                "tissue near +1024. The model expects Hounsfield units, so its result on these values is not "
                "meaningful. Re-export the scan with the rescale slope/intercept applied."), d)
        if kind == "MR":
            return Check("modality", FAIL, (
                f"{name}: does not look like a CT: no voxel is near air (-1000 HU) and no value is negative, as in "
                "an MRI. This model was trained on CT only; its result on this scan is not meaningful."), d)
        return Check("modality", REVIEW, (
            f"{name}: intensities do not look like a CT in Hounsfield units (too little air near -1000 HU or soft "
            "tissue near 0 HU). Check that the scan is a CT in HU."), d)
    if modality == "MR":
        if kind == "CT":
            return Check("modality", FAIL, (
                f"{name}: looks like a CT in Hounsfield units (air near -1000 HU), but this input expects an MRI; "
                "the result is not meaningful."), d)
        return Check("modality", OK, f"{name}: MR intensities (arbitrary units, normalised per scan).", d)
    return Check("modality", OK, f"{name}: no modality stated by the model.", d)


# Intensity ---------------------------------------------------------------------------------------
def check_intensity(name: str, modality: str, values: np.ndarray, card: Mapping[str, Any], modality_ok: bool) -> Check:
    d: dict[str, Any] = {"input": name}
    if not modality_ok:
        return Check("intensity", REVIEW, f"{name}: intensities not compared with the training scans (the modality "
                                          "check did not pass).", d)
    body = values[body_mask(values, modality)]
    if body.size == 0:
        return Check("intensity", FAIL, f"{name}: the scan holds no tissue (every voxel is air or zero).", d)
    ref = card.get("body", {}).get("percentiles", {})
    if modality == "CT" and "1" in ref and "99" in ref:
        lo, hi = ref["1"], ref["99"]
        inside = float(((body >= lo) & (body <= hi)).mean())
        d.update(inside_training_range=round(inside, 3), training_range=[lo, hi],
                 median=round(float(np.median(body)), 1))
        status = OK if inside >= CT_INSIDE_OK else REVIEW if inside >= CT_INSIDE_REVIEW else FAIL
        text = {OK: "like the training scans", REVIEW: "partly unlike the training scans",
                FAIL: "unlike the training scans"}[status]
        return Check("intensity", status, (
            f"{name}: {inside:.0%} of the tissue voxels lie within the training scans' range {lo:.0f}..{hi:.0f} HU "
            f"({text})."), d)
    ref_profile = card.get("profile", {})
    mine = profile(body)
    keys = [k for k in ref_profile if k in mine]
    if modality == "MR" and keys:
        distance = float(np.mean([abs(mine[k] - ref_profile[k]) for k in keys]))
        d["profile_distance"] = round(distance, 3)
        status = OK if distance <= PROFILE_OK else REVIEW if distance <= PROFILE_REVIEW else FAIL
        text = {OK: "like", REVIEW: "partly unlike", FAIL: "unlike"}[status]
        return Check("intensity", status, f"{name}: the intensity distribution is {text} the training scans' "
                                          f"(profile distance {distance:.2f}).", d)
    fg = card.get("foreground", {}).get("percentiles", {})
    if modality == "CT" and "0.5" in fg and "99.5" in fg:  # the official plans: the labelled structures' range
        lo, hi = fg["0.5"], fg["99.5"]
        inside = float(((body >= lo) & (body <= hi)).mean())
        d.update(inside_training_range=round(inside, 3), training_range=[lo, hi], reference="foreground")
        status = OK if inside >= CT_INSIDE_REVIEW else REVIEW
        return Check("intensity", status, f"{name}: {inside:.0%} of the tissue voxels lie within the intensity range "
                                          f"of the training structures ({lo:.0f}..{hi:.0f} HU).", d)
    return Check("intensity", OK, f"{name}: no reference intensities in the model card; not compared.",
                 {**d, "reference": None})


# Geometry ----------------------------------------------------------------------------------------
def check_spacing(name: str, image: Any, card: Mapping[str, Any]) -> Check:
    spacing = geometry(image)["spacing_mm"]
    ref = card.get("spacing_mm", {})
    top = ref.get("max") or ref.get("median")
    d = {"input": name, "spacing_mm": [round(s, 3) for s in spacing]}
    if not top:
        return Check("spacing", OK, f"{name}: no reference spacing in the model card; not compared.", {**d, "reference": None})
    coarse = [i for i in range(3) if spacing[i] > SPACING_FACTOR * top[i]]
    d["training_max_mm" if "max" in ref else "training_median_mm"] = top
    if coarse:
        where = ", ".join(f"{AXES[i]} {spacing[i]:.2g} mm (training at most {top[i]:.2g})" for i in coarse)
        return Check("spacing", REVIEW, f"{name}: voxels are much coarser than in the training scans: {where}. Small "
                                        "structures and borders may be missed.", d)
    return Check("spacing", OK, f"{name}: voxel spacing {_fmt(spacing)} mm is within the training range or finer.", d)


def check_extent(name: str, image: Any, card: Mapping[str, Any]) -> Check:
    extent = geometry(image)["extent_mm"]
    ref = card.get("extent_mm", {})
    d = {"input": name, "extent_mm": [round(e, 1) for e in extent]}
    if not ref.get("min") or not ref.get("max"):
        return Check("extent", OK, f"{name}: no reference scan extent in the model card; not compared.", {**d, "reference": None})
    lo, hi = ref["min"], ref["max"]
    d.update(training_min_mm=lo, training_max_mm=hi)
    small = [i for i in range(3) if extent[i] < EXTENT_FACTOR * lo[i]]
    large = [i for i in range(3) if extent[i] > hi[i] / EXTENT_FACTOR]
    if small:
        where = ", ".join(f"{AXES[i]} {extent[i]:.0f} mm (training at least {lo[i]:.0f})" for i in small)
        return Check("extent", REVIEW, f"{name}: the scan covers much less than the training scans: {where}. Structures "
                                       "may be cut by the field of view; their volumes are then lower bounds.", d)
    if large:
        where = ", ".join(f"{AXES[i]} {extent[i]:.0f} mm (training at most {hi[i]:.0f})" for i in large)
        return Check("extent", REVIEW, f"{name}: the scan covers much more than the training scans: {where}. Parts of "
                                       "the body the model never saw may get labels.", d)
    return Check("extent", OK, f"{name}: the scan's extent ({_fmt(extent)} mm) is like the training scans'.", d)


def check_orientation(name: str, image: Any, card: Mapping[str, Any], used: str | None) -> Check:
    mine = geometry(image)["orientation"]
    trained = card.get("orientation")
    d = {"input": name, "orientation": mine, "used": used or mine, "training_orientation": trained}
    if not trained:
        return Check("orientation", OK, f"{name}: voxel order {mine}; the model card does not state the training "
                                        "voxel order.", {**d, "reference": None})
    if (used or mine) == trained:
        how = f"reoriented from {mine} to {used}" if used and used != mine else f"stored voxel order {mine}"
        return Check("orientation", OK, f"{name}: {how}, as the training scans.", d)
    d["suggest_orientation"] = trained
    return Check("orientation", REVIEW, (
        f"{name}: the voxels are stored in another order ({used or mine}) than the training scans ({trained}); the "
        f"network is not mirror-invariant, so labels can differ. This run used the stored order; reorienting to "
        f"{trained} (the model plan's 'orientation') matches the training data."), d)


# Several inputs -----------------------------------------------------------------------------------
def check_sequences(samples: Mapping[str, np.ndarray], manifest: Any) -> Check | None:
    names = list(samples)
    if len(names) < 2:
        return None
    flat = {n: np.asarray(samples[n], dtype=np.float64).ravel() for n in names}
    same = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = flat[a], flat[b]
            if x.shape == y.shape and x.std() > 0 and y.std() > 0:
                if float(np.corrcoef(x, y)[0, 1]) >= DUPLICATE_CORRELATION:
                    same.append((a, b))
    if same:
        pairs = "; ".join(f"{a} and {b}" for a, b in same)
        return Check("sequences", FAIL, f"The same scan seems to be given for several inputs ({pairs}); each input "
                                        "needs its own sequence.", {"duplicates": [list(p) for p in same]})
    refs = {n: _card_input(manifest, n).get("profile", {}) for n in names}
    if not all(refs.values()):
        return Check("sequences", OK, "The inputs are distinct scans; the model card has no sequence profiles to "
                                      "compare them with.", {"reference": None})
    mine = {}
    for n in names:
        mr = [s.modality for s in manifest.inputs if s.name == n] or ["MR"]
        body = flat[n][body_mask(flat[n], mr[0])]
        mine[n] = profile(body)

    def cost(assign: Sequence[str]) -> float:  # image of input names[i] compared with the card of assign[i]
        total = 0.0
        for n, ref_name in zip(names, assign):
            keys = [k for k in refs[ref_name] if k in mine[n]]
            total += float(np.mean([abs(mine[n][k] - refs[ref_name][k]) for k in keys])) if keys else 0.0
        return total

    given = cost(names)
    if len(names) <= 6:
        best = min(permutations(names), key=cost)
        if cost(best) < 0.7 * given and list(best) != names:
            swaps = ", ".join(f"the scan given as {n} looks like {b}" for n, b in zip(names, best) if n != b)
            return Check("sequences", REVIEW, f"The inputs may be assigned to the wrong sequences: {swaps}.",
                         {"suggested": dict(zip(names, best)), "cost_given": round(given, 3),
                          "cost_suggested": round(cost(best), 3)})
    return Check("sequences", OK, "Each input looks like the sequence it is assigned to.", {"cost_given": round(given, 3)})


# All input checks --------------------------------------------------------------------------------
def check_inputs(images: Mapping[str, Any], manifest: Any, *, orientation_used: str | None = None) -> list[Check]:
    """The input checks of `images` ({manifest input name: Image}) against `manifest`'s card."""
    checks: list[Check] = []
    samples: dict[str, np.ndarray] = {}
    for spec in manifest.inputs:
        image = images.get(spec.name)
        if image is None:
            continue
        card = _card_input(manifest, spec.name)
        values = np.asarray(sample(image.array))
        samples[spec.name] = values
        modality = check_modality(spec.name, spec.modality, values)
        checks.append(modality)
        checks.append(check_intensity(spec.name, spec.modality, values, card, modality.status == OK))
        checks.append(check_spacing(spec.name, image, card))
        checks.append(check_extent(spec.name, image, card))
        checks.append(check_orientation(spec.name, image, card, orientation_used))
    if len({v.shape for v in samples.values()}) == 1:
        seq = check_sequences(samples, manifest)
        if seq is not None:
            checks.append(seq)
    for c in checks:
        if c.status != OK:
            log.warning("quality %s (%s): %s", c.name, c.status, c.message)
    return checks


__all__ = ["Check", "FAIL", "OK", "REVIEW", "check_inputs", "check_modality", "looks_like", "summary"]
