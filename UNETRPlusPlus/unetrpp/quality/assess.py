"""The checks of one run, put together: before inference (`assess_inputs`) and after it
(`assess_result`), and how they enter the report (`add_to_report`).

Report keys (issue 19; the Slicer table, server, CLI and batch summary read them):

    report["quality"] = {"status": "ok" | "review" | "fail",
                         "checks": [{"name", "status", "message", ...details}]}
    report["segments"][i]["quality"] = {"status", "reasons": [...], "uncertainty": {"inside",
                                        "border", "mirror_disagreement"} | None, "partial": bool}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checks import Check, check_inputs, summary
from .structures import check_structures, entropy_step, per_structure_measures, touching_edges, uncertainty

log = logging.getLogger(__name__)


def temperature_of(manifest: Any) -> float:
    return float(manifest.card.get("calibration", {}).get("temperature", 1.0))


def assess_inputs(images: Mapping[str, Any], manifest: Any) -> list[Check]:
    """Input checks against the card, with the voxel order this run uses (the plan's orientation)."""
    return check_inputs(images, manifest, orientation_used=manifest.preprocessing_plan.orientation)


@dataclass
class ResultQuality:
    segments: dict[int, dict[str, Any]]  # label value -> the segment's quality entry
    check: Check  # the run-level "structures" check
    entropy: np.ndarray = field(repr=False)  # normalised entropy on the network grid (every step-th voxel)
    seconds: float = 0.0
    step: int = 1  # the entropy was sampled at every step-th voxel per axis (large grids)


def assess_result(labelmap: Any, probabilities: Any, state: Any, manifest: Any,
                  segments: Sequence[Mapping[str, Any]], *,
                  mirror_disagreement: Mapping[int, float] | None = None,
                  maps: tuple[np.ndarray, np.ndarray] | None = None) -> ResultQuality:
    """Plausibility and calibrated uncertainty per structure, from the labelmap on the input grid
    (`partial`), the class probabilities on the network grid and the report's segments (volumes).
    `maps`: `uncertainty(probabilities, temperature_of(manifest), entropy_step(grid))` computed by
    the caller (slab by slab, unetrpp.preprocess.SlabLabels), in place of `probabilities` (None)."""
    t = time.perf_counter()
    if maps is not None:
        labels, entropy = maps
        step = entropy_step(labels.shape)
    else:
        step = entropy_step(probabilities.shape[1:])
        labels, entropy = uncertainty(probabilities, temperature_of(manifest), step)
    values = [int(s["value"]) for s in segments]
    lcc = list(manifest.inference_defaults.largest_component_labels)
    measures = per_structure_measures(labels, entropy, values, skip_fragments=lcc, step=step)
    partial = touching_edges(labelmap.array, getattr(state, "roi_box", None))
    per, check = check_structures(segments, manifest, measures=measures, partial=partial,
                                  mirror_disagreement=mirror_disagreement)
    return ResultQuality(per, check, entropy, time.perf_counter() - t, step)


def uncertainty_map(result: ResultQuality, state: Any) -> Any:
    """The entropy (0..1) on the input grid, as an `Image` (linear resampling; 0 outside the crop). On
    large grids, where the entropy was sampled at every step-th voxel, each sample fills its block."""
    from ..preprocess import array_to_input_grid

    e = result.entropy
    shape = tuple(state.network_shape)
    if result.step > 1:
        for axis in range(3):
            e = np.repeat(e, result.step, axis=axis)
        e = np.ascontiguousarray(e[: shape[0], : shape[1], : shape[2]])
    return array_to_input_grid(e, state, order=1, fill=0.0)


def add_to_report(report: dict[str, Any], input_checks: Sequence[Check], result: ResultQuality | None) -> dict[str, Any]:
    """report["quality"] and each segment's "quality" (see the module docstring)."""
    checks = list(input_checks) + ([result.check] if result is not None else [])
    report["quality"] = summary(checks)
    if result is not None:
        for seg in report.get("segments", []):
            entry = result.segments.get(int(seg["value"]))
            if entry is not None:
                seg["quality"] = entry
    return report


def input_failures(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


__all__ = ["ResultQuality", "add_to_report", "assess_inputs", "assess_result", "input_failures", "temperature_of",
           "uncertainty_map"]
