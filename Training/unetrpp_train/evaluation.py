"""Evaluation as the paper reports it: per-case and mean Dice and HD95 per evaluated class.

`unetrpp-train evaluate --data DST (--model PACKAGE | --predictions DIR) [--split val|test] -o OUTDIR`

* Predictions come from the engine's own inference (`unetrpp.pipeline.segment`: preprocessing from the
  manifest's plan, sliding window, Gaussian weighting, mirroring, back onto the input grid) with
  ``--model``, or from label files ``DIR/<case id>.nii.gz`` (also .nii, .nrrd, .mha) on the cases' grids.
* Classes come from dataset.json ``evaluation.classes``: each is the union of its labels, so the same code
  scores the Synapse 8-organ table (labels 1 2 3 4 6 7 8 11), ACDC RV/MYO/LV and BraTS regions
  (WT {1,2,3}, TC {2,3}, ET {3}).
* Dice: MONAI ``compute_dice``. HD95: surface voxels and distances from MONAI (``get_mask_edges``,
  ``get_surface_distance``, Euclidean), pooled over both directions and the 95th percentile taken of the
  pooled distances (the medpy ``hd95`` definition the Synapse/ACDC tables of nnFormer/UNETR++ use).
  Reported in mm (the reference's voxel spacing) and in voxels (unit spacing, as in the paper's table).
* Empty masks, as the official evaluation scripts (inference_synapse.py:11-21, inference_tumor.py:17-28,
  inference_acdc.py:16-53 @ dcba1c6): reference and prediction both empty -> Dice 1, HD95 0; exactly one
  empty -> Dice 0 and HD95 0, counted in the mean (``hd95_empty="zero"``, the default). With
  ``hd95_empty="exclude"`` (``--hd95-empty exclude``) such an HD95 is missing instead (NaN in CSV, "n/a" in
  Markdown), the mean averages the cases where it is defined and the number missing is reported beside it.

Outputs in OUTDIR: ``per_case.csv`` (case, class, dice, hd95_mm, hd95_voxels, reference/prediction voxels,
status), ``summary.csv`` (per class: mean Dice, mean HD95 mm/voxels, cases, HD95 missing), ``summary.md``
(the paper-style table plus per-case Dice), ``metrics.json`` (means per class, for
`unetrpp-train export --metrics`), and ``predictions/<case>.nii.gz`` when a model was run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from unetrpp.atomic import staged_file, write_text
from unetrpp.errors import UnetrppError

from .layout import case_paths, geometry_difference, load_dataset, split_cases

log = logging.getLogger(__name__)

PREDICTION_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
OUTPUT_FILES = ("per_case.csv", "summary.csv", "summary.md", "metrics.json")


class EvaluationError(UnetrppError, ValueError):
    """Evaluation inputs are missing or do not fit the dataset; the message names the case and file."""


# Metrics ------------------------------------------------------------------------------------
@dataclass
class BinaryScores:
    dice: float
    hd95_mm: float
    hd95_voxels: float
    reference_voxels: int
    prediction_voxels: int
    status: str
    """"ok", "both empty", "prediction empty" or "reference empty"""


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_dice

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=bool))[None, None].float()
    r = torch.from_numpy(np.ascontiguousarray(ref, dtype=bool))[None, None].float()
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the pooled symmetric surface distances (both masks non-empty); spacing in
    array axis order, None for voxel units."""
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    edges_pred, edges_ref = get_mask_edges(np.asarray(pred, bool), np.asarray(ref, bool), crop=True)
    sp = None if spacing is None else np.asarray(spacing, dtype=float)
    d1 = np.asarray(get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=sp))
    d2 = np.asarray(get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=sp))
    return float(np.percentile(np.concatenate([d1.ravel(), d2.ravel()]), 95))


HD95_EMPTY = ("zero", "exclude")


def binary_scores(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], hd95_empty: str = "zero") -> BinaryScores:
    """Dice and HD95 of one binary mask pair (arrays in (z, y, x), spacing (z, y, x) mm). One mask empty:
    HD95 0 (`hd95_empty="zero"`, the official scripts' value) or NaN (`"exclude"`)."""
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 and n_ref == 0:
        return BinaryScores(1.0, 0.0, 0.0, 0, 0, "both empty")
    if n_pred == 0 or n_ref == 0:
        if hd95_empty not in HD95_EMPTY:
            raise EvaluationError(f"hd95_empty must be one of {', '.join(HD95_EMPTY)}, got {hd95_empty!r}")
        value = 0.0 if hd95_empty == "zero" else math.nan
        return BinaryScores(0.0, value, value, n_ref, n_pred, "prediction empty" if n_pred == 0 else "reference empty")
    return BinaryScores(dice_score(pred, ref), hd95(pred, ref, spacing), hd95(pred, ref, None), n_ref, n_pred, "ok")


def evaluation_classes(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    classes = data.get("evaluation", {}).get("classes")
    if classes:
        return [{"name": str(c["name"]), "labels": [int(v) for v in c["labels"]]} for c in classes]
    return [{"name": name, "labels": [int(v)]} for v, name in data["labels"].items() if int(v) != 0]


def score_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
               classes: Sequence[Mapping[str, Any]], hd95_empty: str = "zero") -> dict[str, BinaryScores]:
    return {c["name"]: binary_scores(np.isin(pred, c["labels"]), np.isin(ref, c["labels"]), spacing, hd95_empty)
            for c in classes}


# Predictions --------------------------------------------------------------------------------
def _prediction_file(folder: Path, case_id: str) -> Path:
    for suffix in PREDICTION_SUFFIXES:
        path = folder / f"{case_id}{suffix}"
        if path.is_file():
            return path
    raise EvaluationError(f"case {case_id}: no prediction {folder / case_id}.nii.gz (or .nii, .nrrd, .mha)")


def _read_prediction(path: Path, case_id: str, reference: sitk.Image, ref_path: Path) -> np.ndarray:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise EvaluationError(f"case {case_id}: prediction {path} cannot be read") from exc
    if img.GetDimension() != 3:
        raise EvaluationError(f"case {case_id}: prediction {path} is {img.GetDimension()}-D, a 3-D labelmap is expected")
    diff = geometry_difference(reference, img)
    if diff:
        raise EvaluationError(f"case {case_id}: prediction {path} is not on the grid of the reference {ref_path}: {diff}")
    arr = sitk.GetArrayFromImage(img)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.round(arr)):
            raise EvaluationError(f"case {case_id}: prediction {path} holds non-integer values (a labelmap is expected)")
        arr = arr.astype(np.int64)
    return arr


class _ModelRunner:
    """Segments a case's images with a model package through the engine's pipeline."""

    def __init__(self, package: str | os.PathLike[str], channels: Sequence[str], device: str,
                 overlap: float | None, fast: bool) -> None:
        import unetrpp
        from unetrpp.catalogue import resolve_model

        self.model = unetrpp.load(resolve_model(str(package)), device="cpu")
        names = [i.name for i in self.model.manifest.inputs]
        if len(names) != len(channels):
            raise EvaluationError(
                f"model {self.model.manifest.name} takes {len(names)} input(s) ({', '.join(names)}), "
                f"the dataset has {len(channels)} channel(s) ({', '.join(channels)})"
            )
        # same names: by name; otherwise by position (the dataset's channels are in network input order)
        self.mapping = {c: c for c in channels} if set(names) == set(channels) else dict(zip(channels, names))
        self.device, self.overlap, self.fast = device, overlap, fast

    def __call__(self, images: Mapping[str, Path]) -> sitk.Image:
        from unetrpp.pipeline import SegmentOptions, segment

        inputs = {self.mapping[c]: str(p) for c, p in images.items()}
        result = segment(self.model, inputs, SegmentOptions(device=self.device, overlap=self.overlap, fast=self.fast))
        return result.labelmap.to_sitk()


# Reports ------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarise(rows: Sequence[Mapping[str, Any]], classes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in classes:
        mine = [r for r in rows if r["class"] == c["name"]]
        out.append({
            "class": c["name"], "labels": " ".join(map(str, c["labels"])), "cases": len(mine),
            "dice": _mean([r["dice"] for r in mine]),
            "hd95_mm": _mean([r["hd95_mm"] for r in mine]),
            "hd95_voxels": _mean([r["hd95_voxels"] for r in mine]),
            "hd95_missing": sum(1 for r in mine if math.isnan(r["hd95_mm"])),
        })
    if out:
        out.append({
            "class": "mean", "labels": "", "cases": max(s["cases"] for s in out),
            "dice": _mean([s["dice"] for s in out]), "hd95_mm": _mean([s["hd95_mm"] for s in out]),
            "hd95_voxels": _mean([s["hd95_voxels"] for s in out]), "hd95_missing": sum(s["hd95_missing"] for s in out),
        })
    return out


def _csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("nan" if isinstance(row[k], float) and math.isnan(row[k]) else
                             f"{row[k]:.6f}" if isinstance(row[k], float) else row[k]) for k in fields})
    return buf.getvalue()


def _num(v: float, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if math.isnan(v) else f"{v * scale:.{digits}f}"


def markdown(title: str, summary: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
             notes: Sequence[str]) -> str:
    names = [s["class"] for s in summary]
    lines = [f"# {title}", "", *[f"- {n}" for n in notes], "",
             "| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             "| Dice (%) | " + " | ".join(_num(s["dice"], 100) for s in summary) + " |",
             "| HD95 (mm) | " + " | ".join(_num(s["hd95_mm"]) for s in summary) + " |",
             "| HD95 (voxels) | " + " | ".join(_num(s["hd95_voxels"]) for s in summary) + " |",
             "| HD95 missing | " + " | ".join(str(s["hd95_missing"]) for s in summary) + " |", ""]
    classes = names[:-1]
    cases = sorted({r["case"] for r in rows})
    lines += ["## Dice (%) per case", "", "| case | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for case in cases:
        by = {r["class"]: r for r in rows if r["case"] == case}
        lines.append(f"| {case} | " + " | ".join(_num(by[c]["dice"], 100) for c in classes) + " |")
    lines += ["", "## HD95 (mm) per case", "", "| case | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for case in cases:
        by = {r["class"]: r for r in rows if r["case"] == case}
        lines.append(f"| {case} | " + " | ".join(_num(by[c]["hd95_mm"]) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    write_text(path, text)


def _json_number(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 6)


# Driver -------------------------------------------------------------------------------------
def evaluate(data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, split: str | None = None,
             model: str | os.PathLike[str] | None = None, predictions: str | os.PathLike[str] | None = None,
             device: str = "auto", overlap: float | None = None, fast: bool = False,
             overwrite: bool = False, hd95_empty: str = "zero") -> dict[str, Any]:
    """Score the cases of `split` and write the reports to OUTDIR; returns the metrics.json content."""
    if (model is None) == (predictions is None):
        raise EvaluationError("give either a model package (--model) or a folder of predictions (--predictions)")
    if hd95_empty not in HD95_EMPTY:
        raise EvaluationError(f"hd95_empty must be one of {', '.join(HD95_EMPTY)}, got {hd95_empty!r}")
    data = load_dataset(data_dir)
    if split is None:
        split = next((s for s in ("val", "test") if data["splits"].get(s)), None)
        if split is None and data["splits"].get("all"):
            split = "all"
            log.warning("%s holds no held-out cases (no val or test split): evaluating on all cases, which the "
                        "model was trained on", Path(data_dir) / "dataset.json")
        split = split or "val"
    ids = split_cases(data, split)
    if not ids:
        raise EvaluationError(f"split {split!r} of {Path(data_dir) / 'dataset.json'} is empty")
    out = Path(out_dir)
    existing = [n for n in OUTPUT_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise EvaluationError(f"{out} already holds an evaluation ({', '.join(existing)}); pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    classes = evaluation_classes(data)
    channels = [c["name"] for c in data["channels"]]
    runner = _ModelRunner(model, channels, device, overlap, fast) if model is not None else None
    if runner is not None:
        (out / "predictions").mkdir(exist_ok=True)
    pred_dir = Path(predictions) if predictions is not None else None
    if pred_dir is not None and not pred_dir.is_dir():
        raise EvaluationError(f"predictions folder {pred_dir} does not exist")

    rows: list[dict[str, Any]] = []
    for n, case_id in enumerate(ids, 1):
        images, label_path = case_paths(data, case_id)
        if not label_path.is_file():
            raise EvaluationError(f"case {case_id}: reference label {label_path} is missing")
        reference = sitk.ReadImage(str(label_path))
        if runner is not None:
            log.info("case %s (%d/%d): segmenting", case_id, n, len(ids))
            pred_img = runner(images)
            pred_file = out / "predictions" / f"{case_id}.nii.gz"
            with staged_file(pred_file) as tmp:
                sitk.WriteImage(pred_img, str(tmp), True)
            pred = _read_prediction(pred_file, case_id, reference, label_path)
        else:
            pred = _read_prediction(_prediction_file(pred_dir, case_id), case_id, reference, label_path)
        ref = sitk.GetArrayFromImage(reference)
        spacing = reference.GetSpacing()[::-1]
        for name, s in score_case(pred, ref, spacing, classes, hd95_empty).items():
            rows.append({"case": case_id, "class": name, **asdict(s)})
        log.info("case %s: Dice %s", case_id, ", ".join(f"{r['class']} {r['dice']:.3f}" for r in rows if r["case"] == case_id))

    summary = summarise(rows, classes)
    source = f"model {model}" if model is not None else f"predictions {pred_dir}"
    desc = data.get("evaluation", {}).get("description", "all labels")
    notes = [f"dataset {data.get('name')} ({Path(data_dir).resolve()}), split `{split}`, {len(ids)} case(s)",
             f"predictions: {source}", f"classes: {desc}",
             "Dice: MONAI compute_dice; HD95: 95th percentile of the pooled symmetric surface distances "
             "(MONAI surfaces/distances), in mm and in voxels",
             "both masks empty: Dice 1, HD95 0; one empty: Dice 0, " + (
                 "HD95 0, counted in the mean (the official scripts' rule)" if hd95_empty == "zero" else
                 "HD95 missing (excluded from the mean, counted)")]
    _write(out / "per_case.csv", _csv(rows, ["case", "class", "dice", "hd95_mm", "hd95_voxels", "reference_voxels",
                                             "prediction_voxels", "status"]))
    _write(out / "summary.csv", _csv(summary, ["class", "labels", "cases", "dice", "hd95_mm", "hd95_voxels", "hd95_missing"]))
    _write(out / "summary.md", markdown(f"Evaluation: {data.get('name')}, split {split}", summary, rows, notes))
    per_class = [s for s in summary if s["class"] != "mean"]
    metrics = {
        "dice": {s["class"]: _json_number(s["dice"]) for s in per_class},
        "dice_description": f"mean Dice on the {split} split ({len(ids)} cases), {desc}",
        "hd95_mm": {s["class"]: _json_number(s["hd95_mm"]) for s in per_class},
        "hd95_voxels": {s["class"]: _json_number(s["hd95_voxels"]) for s in per_class},
        "mean_dice": _json_number(summary[-1]["dice"]),
        "mean_hd95_mm": _json_number(summary[-1]["hd95_mm"]),
        "hd95_missing": summary[-1]["hd95_missing"],
        "evaluation": {"dataset": data.get("name"), "split": split, "cases": len(ids), "predictions": source},
    }
    _write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info("evaluation written to %s (mean Dice %s)", out, _num(summary[-1]["dice"], 1, 4))
    return metrics
