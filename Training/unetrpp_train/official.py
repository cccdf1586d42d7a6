"""The official UNETR++ split lists (shipped as data in `splits/<dataset>.json`, extracted from the official
trainers, Amshaker/unetr_plus_plus @ dcba1c6) and the check that a converted dataset matches them.

The paper's recipes train on exactly these cases; a dataset whose case ids differ (missing cases, cases the
official lists do not know) is refused for a paper recipe, naming the ids, unless the run asks for a custom
split explicitly (`unetrpp-train train --custom-split`, recipe field `custom_split`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from unetrpp.errors import UnetrppError

from .datasets import SPLIT_FILES

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
#: SPLIT_FILES (dataset kind -> split file; btcv uses the Synapse images and split): unetrpp_train.datasets


class SplitMismatchError(UnetrppError, ValueError):
    """A dataset's cases differ from the official split of a paper recipe."""


@lru_cache(maxsize=None)
def official_split(dataset: str) -> dict[str, Any]:
    """{"train": [...], "test": [...], "excluded": [...], "source": {...}} for a benchmark dataset."""
    name = SPLIT_FILES.get(dataset.lower())
    if name is None:
        raise KeyError(f"no official split for dataset {dataset!r}")
    data = json.loads((SPLITS_DIR / f"{name}.json").read_text())
    data.setdefault("excluded", [])
    return data


def has_official_split(dataset: str) -> bool:
    return dataset.lower() in SPLIT_FILES


def source_ref(dataset: str) -> str:
    """'unetr_pp/.../unetr_pp_trainer_acdc.py:346-401' for docs and messages."""
    src = official_split(dataset)["source"]
    return f"{src['file']}:{src['train_lines'][0]}-{src['test_lines'][1]}"


def split_counts(dataset: str) -> dict[str, Any]:
    """Case counts of the official lists; ACDC also in patients (two frames per patient)."""
    data = official_split(dataset)
    out: dict[str, Any] = {"train": len(data["train"]), "test": len(data["test"]), "unit": "cases"}
    if "patients" in data:
        out = {"train": data["patients"]["train"], "test": data["patients"]["test"], "unit": "patients",
               "train_cases": len(data["train"]), "test_cases": len(data["test"])}
    if data["excluded"]:
        out["excluded_cases"] = len(data["excluded"])
    out["source"] = source_ref(dataset)
    return out


def _listing(ids: Sequence[str], limit: int = 12) -> str:
    ids = sorted(ids)
    more = f" ... ({len(ids)} in all)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def official_splits_for(dataset: str, case_ids: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The official train/test (and val = test, as the official trainer validates on them) restricted to the
    cases present, and what differs: {"missing": official ids absent, "extra": present ids the lists do not know}."""
    data = official_split(dataset)
    present = set(case_ids)
    known = set(data["train"]) | set(data["test"]) | set(data["excluded"])
    splits = {"train": [c for c in data["train"] if c in present], "test": [c for c in data["test"] if c in present]}
    splits["val"] = list(splits["test"])
    diff = {"missing": sorted((set(data["train"]) | set(data["test"])) - present), "extra": sorted(present - known)}
    return splits, diff


def check_official_split(dataset: str, splits: dict[str, Sequence[str]], where: str,
                         all_cases: Sequence[str] = ()) -> None:
    """Refuse a dataset whose train/test lists are not the official ones, or that holds cases the official
    lists do not know, naming the differing ids."""
    data = official_split(dataset)
    problems = []
    unknown = set(all_cases) - set(data["train"]) - set(data["test"]) - set(data["excluded"])
    if unknown:
        problems.append(f"{len(unknown)} case(s) are in no official list: {_listing(unknown)}")
    for name in ("train", "test"):
        have, want = set(splits.get(name, [])), set(data[name])
        if have - want:
            problems.append(f"{name} has {len(have - want)} case(s) the official list does not: {_listing(have - want)}")
        if want - have:
            problems.append(f"{name} lacks {len(want - have)} official case(s): {_listing(want - have)}")
    if problems:
        raise SplitMismatchError(
            f"{where}: the cases differ from the official {dataset} split ({source_ref(dataset)}): "
            + "; ".join(problems)
            + ". Convert the complete dataset for the paper recipe, or train on your own split with --custom-split."
        )
