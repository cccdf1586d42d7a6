"""Training data: the converted dataset on disk, its preprocessing with the plan (cached as .npy),
and patch sampling with foreground oversampling.

On-disk layout (written by `unetrpp-train convert`): DST/dataset.json, DST/cases/<id>/image_<channel>.nii.gz
and label.nii.gz, splits in dataset.json; the plan in DST/plan.json (manifest `plan` + `inputs`).

Each training case is preprocessed exactly as the engine preprocesses an input at inference
(`unetrpp.preprocess`, driven by the same plan); the label is brought onto the same grid.
Arrays are cached under DST/preprocessed/<plan hash>/ (or the run folder when DST is read-only).

Sampling is a pure function of (seed, global sample index): the sample index encodes the epoch,
iteration, rank and batch position, so every process and every worker draws exactly the patch
the uninterrupted single-process schedule assigns to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from unetrpp.atomic import staged_file, write_text
from unetrpp.errors import UnetrppError
from unetrpp.jsonio import read_json_file

from .augment import Augmenter, sampling_size
from .config import AugmentConfig

log = logging.getLogger(__name__)

FOREGROUND_SAMPLES_PER_CLASS = 10000
MIN_FOREGROUND_COVERAGE = 0.01
#: bumped when what the cache holds changes (1: official foreground sampling)
CACHE_VERSION = 1


class DataError(UnetrppError, ValueError):
    """The dataset folder is missing something or holds inconsistent data; the message names it."""


# Dataset description ------------------------------------------------------------------------
@dataclass
class CaseFiles:
    case_id: str
    images: dict[str, Path]
    label: Path | None


@dataclass
class DatasetInfo:
    root: Path
    name: str
    channels: list[dict[str, Any]]
    """[{"name": "ct", "modality": "CT"}, ...] in network input order"""
    labels: dict[int, str]
    """foreground label value -> name"""
    cases: dict[str, CaseFiles]
    splits: dict[str, list[str]]
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_names(self) -> list[str]:
        return [c["name"] for c in self.channels]

    def split(self, name: str) -> list[str]:
        if name == "all":
            return sorted(self.cases)
        if name not in self.splits:
            if name in ("train", "training") and not self.splits:
                return sorted(self.cases)
            raise DataError(
                f"{self.root / 'dataset.json'} has no split {name!r} (it has: {', '.join(self.splits) or 'none'})"
            )
        missing = [c for c in self.splits[name] if c not in self.cases]
        if missing:
            raise DataError(f"split {name!r} names unknown case(s): {', '.join(missing[:5])}")
        return list(self.splits[name])


def _parse_channels(data: dict[str, Any]) -> list[dict[str, Any]]:
    raw = data.get("channels", data.get("modalities", data.get("modality", data.get("inputs"))))
    if raw is None:
        raise DataError("dataset.json names no input channels ('channels')")
    if isinstance(raw, dict):  # {"0": "CT"} (Decathlon style) or {"ct": "CT"}
        items = sorted(raw.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0)
        out = []
        for k, v in items:
            name = v.lower() if str(k).isdigit() else str(k)
            out.append({"name": name, "modality": "CT" if "ct" in str(v).lower() else "MR"})
        return out
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append({"name": item, "modality": "CT" if item.lower() == "ct" else "MR"})
        else:
            out.append({"name": item["name"], "modality": item.get("modality", "MR")})
    return out


def _parse_labels(data: dict[str, Any]) -> dict[int, str]:
    raw = data.get("labels")
    if raw is None:
        raise DataError("dataset.json has no 'labels'")
    out: dict[int, str] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            if str(k).lstrip("-").isdigit():  # {"1": "spleen"}
                value, name = int(k), v if isinstance(v, str) else v.get("name", str(k))
            else:  # nnU-Net v2 style {"spleen": 1}
                value, name = int(v), k
            if value != 0:
                out[value] = name
    else:
        for item in raw:
            if int(item["value"]) != 0:
                out[int(item["value"])] = item["name"]
    return dict(sorted(out.items()))


def read_dataset(root: str | os.PathLike[str]) -> DatasetInfo:
    root = Path(root)
    file = root / "dataset.json"
    if not file.is_file():
        raise DataError(f"{root} is not a converted dataset: {file} is missing (run `unetrpp-train convert` first)")
    data = read_json_file(file, str(file), error=DataError)  # the one bounded reader
    channels = _parse_channels(data)
    labels = _parse_labels(data)
    raw_cases = data.get("cases")
    if raw_cases is None:
        raw_cases = sorted(p.name for p in (root / "cases").iterdir() if p.is_dir()) if (root / "cases").is_dir() else []
    if isinstance(raw_cases, dict):
        raw_cases = [dict(v, id=k) if isinstance(v, dict) else k for k, v in raw_cases.items()]
    cases: dict[str, CaseFiles] = {}
    for item in raw_cases:
        case_id = item if isinstance(item, str) else str(item.get("id", item.get("case_id")))
        folder = root / "cases" / case_id
        images = {}
        for ch in channels:
            given = item.get("images", {}).get(ch["name"]) if isinstance(item, dict) and isinstance(item.get("images"), dict) else None
            images[ch["name"]] = root / given if given else folder / f"image_{ch['name']}.nii.gz"
        given_label = item.get("label") if isinstance(item, dict) else None
        label = root / given_label if given_label else folder / "label.nii.gz"
        cases[case_id] = CaseFiles(case_id, images, label if label.is_file() else None)
    if not cases:
        raise DataError(f"{file} lists no cases")
    splits = data.get("splits", {})
    if isinstance(splits, list):  # [{"train": [...], "val": [...]}] (one fold)
        splits = splits[0] if splits else {}
    splits = {k: list(v) for k, v in splits.items()}
    return DatasetInfo(root=root, name=str(data.get("name", root.name)), channels=channels, labels=labels,
                       cases=cases, splits=splits, data=data)


def read_plan(root: str | os.PathLike[str]) -> dict[str, Any]:
    """DST/plan.json as the trainer uses it: {"plan": {...manifest plan...}, "inputs": [...], "patch_size", ...},
    read and checked through the typed `unetrpp_train.planning.TrainingPlan`."""
    from .planning import TrainingPlan

    return TrainingPlan.read(root).to_dict()


def plan_hash(plan: dict[str, Any]) -> str:
    """Names the preprocessed cache: the plan and the cache format."""
    return hashlib.sha256(json.dumps({"plan": plan, "cache": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:12]


# Preprocessing ------------------------------------------------------------------------------
def _read(path: Path) -> Any:
    import SimpleITK as sitk

    if not path.is_file():
        raise DataError(f"{path} is missing")
    return sitk.ReadImage(str(path))


def preprocess_case(case: CaseFiles, info: DatasetInfo, plan: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image (C, D, H, W) float32, label (D, H, W) uint8/int16) on the plan's grid."""
    import SimpleITK as sitk

    from .preprocessing import preprocess_training_case

    images = [_read(case.images[name]) for name in info.channel_names]
    if case.label is None:
        raise DataError(f"case {case.case_id} has no label file (expected {info.root / 'cases' / case.case_id / 'label.nii.gz'})")
    label = _read(case.label)
    ref = images[0]
    for name, img in zip(info.channel_names, images):
        if img.GetSize() != ref.GetSize() or not np.allclose(img.GetSpacing(), ref.GetSpacing(), rtol=1e-3):
            raise DataError(f"case {case.case_id}: channel {name} does not share the grid of {info.channel_names[0]}")
    if label.GetSize() != ref.GetSize():
        raise DataError(f"case {case.case_id}: label grid {label.GetSize()} differs from the image grid {ref.GetSize()}")
    arrays = [sitk.GetArrayFromImage(i).astype(np.float32) for i in images]
    for name, a in zip(info.channel_names, arrays):
        if not np.isfinite(a).any() or float(np.nanmax(a)) == float(np.nanmin(a)):
            raise DataError(f"case {case.case_id}: channel {name} is empty, constant or all-NaN")
    lab = sitk.GetArrayFromImage(label)
    values = set(np.unique(lab).tolist()) - {0}
    undeclared = values - set(info.labels)
    if undeclared:
        raise DataError(f"case {case.case_id}: label values {sorted(undeclared)} are not declared in dataset.json")
    return preprocess_training_case(images, label, plan)


def foreground_locations(label: np.ndarray, labels: Sequence[int], seed: int = 1234) -> dict[int, np.ndarray]:
    """Stored foreground voxels per present class, as nnU-Net v1's preprocessing samples them
    (preprocessing.py _run_internal): RandomState(1234) per case, up to 10,000 voxels per class but at
    least 1 % of the class's voxels."""
    rng = np.random.RandomState(seed)
    out = {}
    for value in labels:
        coords = np.argwhere(label == value)
        if len(coords) == 0:
            continue
        count = max(min(FOREGROUND_SAMPLES_PER_CLASS, len(coords)), int(np.ceil(len(coords) * MIN_FOREGROUND_COVERAGE)))
        coords = coords[rng.choice(len(coords), count, replace=False)]
        out[int(value)] = coords.astype(np.int32)
    return out


def cache_dataset(info: DatasetInfo, plan: dict[str, Any], case_ids: Sequence[str], cache_dir: Path) -> Path:
    """Preprocess the cases once into cache_dir/<case>_image.npy, _label.npy, _fg.npz."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for n, case_id in enumerate(case_ids):
        done = cache_dir / f"{case_id}_fg.npz"  # written last: marks a complete case
        if done.is_file():
            continue
        log.info("preprocessing case %s (%d/%d)", case_id, n + 1, len(case_ids))
        image, label = preprocess_case(info.cases[case_id], info, plan)
        for suffix, arr in (("image", image), ("label", label)):
            with staged_file(cache_dir / f"{case_id}_{suffix}.npy") as tmp:
                np.save(tmp, arr)
        fg = foreground_locations(label, list(info.labels))
        with staged_file(done) as tmp:
            np.savez(tmp, **{str(k): v for k, v in fg.items()})
    write_text(cache_dir / "plan.json", json.dumps(plan, indent=2))
    return cache_dir


def default_cache_dir(info: DatasetInfo, plan: dict[str, Any], run_dir: Path) -> Path:
    preferred = info.root / "preprocessed" / plan_hash(plan)
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        probe = preferred / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        return preferred
    except OSError:
        return run_dir / "preprocessed" / plan_hash(plan)


# Patch sampling -----------------------------------------------------------------------------
def sample_index(step: int, rank: int, world: int, batch_size: int, position: int) -> int:
    return ((step * world) + rank) * batch_size + position


class PatchDataset(Dataset):
    """Map-style dataset over global sample indices: index -> (image patch, label patch)."""

    def __init__(
        self,
        cache_dir: Path,
        case_ids: Sequence[str],
        patch: Sequence[int],
        batch_size: int,
        oversample_foreground: float,
        augment: AugmentConfig,
        seed: int,
        train: bool = True,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.case_ids = list(case_ids)
        if not self.case_ids:
            raise DataError("no cases to train on (the split is empty)")
        self.patch = tuple(int(p) for p in patch)
        self.batch_size = batch_size
        self.oversample = oversample_foreground
        self.seed = seed
        self.train = train
        aug = augment if train else AugmentConfig(enabled=False)
        self.region = sampling_size(self.patch, aug)
        self.augmenter = Augmenter(self.patch, aug)
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]] = {}

    def __len__(self) -> int:  # indices are unbounded; the sampler decides which are used
        return 2**62

    def _case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
        if case_id not in self._arrays:
            image = np.load(self.cache_dir / f"{case_id}_image.npy", mmap_mode="r")
            label = np.load(self.cache_dir / f"{case_id}_label.npy", mmap_mode="r")
            with np.load(self.cache_dir / f"{case_id}_fg.npz") as z:
                fg = {int(k): z[k] for k in z.files}
            self._arrays[case_id] = (image, label, fg)
        return self._arrays[case_id]

    def force_foreground(self, position: int) -> bool:
        # nnU-Net: the last round(oversample * batch) samples of each batch hold foreground.
        return position >= round(self.batch_size * (1 - self.oversample))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 0 if self.train else 1, int(index)])
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        image, label, fg = self._case(case_id)
        forced = self.force_foreground(int(index) % self.batch_size)
        start = self._choose_start(label.shape, fg if forced else {}, rng)
        img = _crop_padded(image, start, self.region)
        lab = _crop_padded(label[None], start, self.region)
        aug_seed = int(rng.integers(0, 2**31 - 1))
        img_t, lab_t = self.augmenter(torch.from_numpy(img), torch.from_numpy(lab.astype(np.float32)), aug_seed)
        return img_t, lab_t

    def _choose_start(self, shape: Sequence[int], fg: dict[int, np.ndarray], rng: np.random.Generator) -> list[int]:
        # nnU-Net v1 DataLoader3D (training/dataloading/dataset_loading.py, generate_train_batch): the region may
        # reach past the volume by the margin the spatial transform needs (region - patch), and further when the
        # volume is smaller than the region; a forced-foreground region starts at voxel - region // 2, clamped
        # at the lower bound only (the official code does not clamp the upper end).
        size = self.region
        need = [max(s - p, s - d, 0) for s, p, d in zip(size, self.patch, shape)]
        lower = [-(n // 2) for n in need]
        upper = [d + n // 2 + n % 2 - s for d, n, s in zip(shape, need, size)]
        if fg:
            cls = sorted(fg)[int(rng.integers(len(fg)))]
            voxel = fg[cls][int(rng.integers(len(fg[cls])))]
            return [int(max(v - s // 2, lo)) for v, s, lo in zip(voxel, size, lower)]
        return [int(rng.integers(lo, up + 1)) for lo, up in zip(lower, upper)]


def _crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """array (C, D, H, W): the box [start, start + size) with zeros outside the volume."""
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, dim in zip(start, size, array.shape[1:]):
        a, b = max(s, 0), min(s + n, dim)
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class StepBatchSampler(Sampler[list[int]]):
    """Yields one batch of global sample indices per optimisation step in [first_step, last_step):
    the DistributedSampler equivalent for an infinite patch stream (disjoint indices per rank)."""

    def __init__(self, first_step: int, last_step: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.first_step, self.last_step = first_step, last_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(self.last_step - self.first_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.last_step):
            yield [sample_index(step, self.rank, self.world, self.batch_size, b) for b in range(self.batch_size)]
