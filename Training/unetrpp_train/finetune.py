"""Fine-tune an installed model (or a package) on a folder of labelled cases in the nnU-Net raw layout
(`unetrpp-train finetune --from MODEL --data FOLDER --name NEW`), evaluate the parent and the result on the
same cases, export the result as a new package with its lineage, and install it beside the parent.

Steps (each is a `stage` event with `--progress json`; WORKDIR keeps every intermediate file):

1. prepare   the parent's manifest and weights; FOLDER (and any `--replay` folders) read as nnU-Net raw
             datasets (`convert nnunet`); channels matched to the model's inputs by name (else by
             position); labels matched to the model's by name (case, spaces, `_`/`-` and left/right order
             ignored): a known name trains the parent's class, a new name adds a class (output channel) whose
             weights start fresh while every other weight keeps the parent's value. Cases are written in the
             model's numbering to WORKDIR/data (the converted layout).
             Model labels the data does not annotate: with `unannotated="keep"` (default) the parent's own
             prediction of those labels is kept as their training label wherever the data says background
             (pseudo-labels, WORKDIR/train/labels), so fine-tuning on a case that annotates only the liver
             does not teach the model that the spleen is background; `"background"` trains them as
             background (the model unlearns them where the data has none).
             A channel whose modality differs from the parent's input (CT vs MR) gets its normalisation
             re-planned from the data (CT: foreground percentiles, mean, sd; MR: z-score), with a warning.
2. evaluate  the parent on the evaluation cases: `--val CASE ...`, else every fifth sorted case from 5 cases
             on, else (fewer cases) all cases, said plainly in the result: then "before" and "after" are
             measured on the cases the model was fine-tuned on.
3. train     the parent's weights, the parent's plan (spacing, normalisation) and patch; AdamW (lr 3e-4, poly
             decay), batch 2, foreground oversampling 0.5, moreDA augmentation with the parent's mirror axes,
             Dice + CE on the full-resolution output (a package has no deep-supervision heads); `--replay`
             cases are sampled like the others (their share of the patches = their share of the cases).
             Progress with ETA; SIGTERM/SIGINT stop after the current step with a checkpoint; `--resume`
             continues (WORKDIR/finetune.json keeps the options and what is done).
4. export    WORKDIR/package: the new package (the parent's dtype), whose manifest `provenance.lineage`
             records parent (name, version, weights SHA256), data (folder, cases, SHA256 of its files),
             replay, iterations, label matching, evaluation cases and metrics before and after; the model
             card starts with what it was adapted on and the before/after table.
5. evaluate  the new package on the same cases.
6. install   NEW into the models folder; an installed model of that name is never replaced (the parent
             stays untouched).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from unetrpp.atomic import write_text
from unetrpp.errors import CancelledError, OutputExistsError, UnetrppError

log = logging.getLogger(__name__)

STATE_FILE = "finetune.json"
STATE_VERSION = 1
DEFAULT_ITERATIONS = 500
ITERATIONS_PER_EPOCH = 50


class FinetuneError(UnetrppError):
    """A fine-tune cannot start (unknown model, unusable data, a name already taken ...)."""


@dataclass
class FinetuneOptions:
    parent: str
    data: str
    name: str
    iterations: int = DEFAULT_ITERATIONS
    val: list[str] = field(default_factory=list)
    replay: list[str] = field(default_factory=list)
    workdir: str | None = None
    device: str = "auto"
    lr: float = 3e-4
    batch_size: int = 2
    workers: int = 1
    seed: int = 12345
    version: str = "1.0.0"
    unannotated: str = "keep"
    install: bool = True


# Events -------------------------------------------------------------------------------------
class Events:
    """Stage / progress / log / done / error events: JSON lines on a stream (the unetrpp.progress protocol,
    for the Slicer module and the server) or log lines."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.stage_name = ""

    def emit(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()

    def stage(self, stage: str, message: str) -> None:
        self.stage_name = stage
        log.info("[%s] %s", stage, message)
        self.emit({"event": "stage", "stage": stage, "message": message})

    def progress(self, done: int, total: int, eta_s: float | None, **extra: Any) -> None:
        self.emit({"event": "progress", "stage": self.stage_name, "done": done, "total": total,
                   "fraction": done / total if total else 1.0, "eta_s": None if eta_s is None else round(eta_s, 1),
                   **extra})

    def log(self, level: str, message: str) -> None:
        getattr(log, "warning" if level == "warning" else "info")(message)
        self.emit({"event": "log", "level": level, "message": message})


@contextmanager
def cancel_on_signals(events: Events, *, stopping_process: bool = False) -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the returned event; training stops after its current step (with a checkpoint),
    any other stage at once (KeyboardInterrupt, classified as cancelled).

    One stop request often arrives as several signals within milliseconds (the Slicer module signals
    the process group and each process, and its supervisor forwards what it receives), so a repeat
    counts as "stop now" only after REPEAT_AFTER_S. `stopping_process`: the caller is a command
    that exits once this block ends; after a stop request, late copies of the signal are then
    ignored instead of meeting the default handler (which would kill the process mid-report with
    SIGTERM's status instead of the "cancelled" exit)."""
    token = threading.Event()
    first_at: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not first_at:
            first_at.append(now)
        token.set()
        if events.stage_name != "train" or now - first_at[0] >= REPEAT_AFTER_S:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield token
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield token
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if stopping_process and token.is_set() else h)


#: A second stop signal this long after the first means "stop now", not another copy of the first.
REPEAT_AFTER_S = 2.0


# Helpers ------------------------------------------------------------------------------------
def norm_label(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()
    m = re.fullmatch(r"(.+) (left|right)", text)
    return f"{m.group(2)} {m.group(1)}" if m else text


def files_sha256(paths: Sequence[Path], root: Path) -> str:
    """One SHA256 over the files (relative name and content), in sorted order."""
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _dice_table(metrics: dict[str, Any]) -> dict[str, float]:
    dice = {k: round(float(v), 4) for k, v in (metrics.get("dice") or {}).items()
            if isinstance(v, (int, float)) and not math.isnan(v)}
    if dice:
        dice["mean"] = round(float(np.mean(list(dice.values()))), 4)
    return dice


def _package_name_ok(name: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name))


# Label and channel matching -----------------------------------------------------------------
def match_labels(model_labels: dict[int, str], data_labels: dict[int, str], out_channels: int
                 ) -> tuple[dict[int, int], dict[int, str], list[dict[str, Any]]]:
    """(data value -> model value, new labels value -> name, a record per data label)."""
    by_name = {norm_label(n): v for v, n in model_labels.items()}
    mapping: dict[int, int] = {0: 0}
    new: dict[int, str] = {}
    record = []
    next_value = max([out_channels - 1, *model_labels]) + 1
    for value, name in sorted(data_labels.items()):
        target = by_name.get(norm_label(name))
        if target is None:
            target = next_value
            next_value += 1
            new[target] = name
            record.append({"data": {"value": value, "name": name}, "model": {"value": target, "name": name}, "new": True})
        else:
            record.append({"data": {"value": value, "name": name},
                           "model": {"value": target, "name": model_labels[target]}, "new": False})
        mapping[value] = target
    return mapping, new, record


def match_channels(model_inputs: Sequence[dict[str, Any]], data_channels: Sequence[dict[str, str]]) -> dict[str, str]:
    """data channel name -> model input name: by name or alias, else by position."""
    names = [i["name"] for i in model_inputs]
    if len(data_channels) != len(names):
        raise FinetuneError(f"the model takes {len(names)} input(s) ({', '.join(names)}); the data has "
                            f"{len(data_channels)} channel(s) ({', '.join(c['name'] for c in data_channels)})")
    out: dict[str, str] = {}
    for ch in data_channels:
        for inp in model_inputs:
            aliases = [a.lower() for a in inp.get("aliases", [])]
            if ch["name"] == inp["name"] or ch["name"] in aliases:
                out[ch["name"]] = inp["name"]
                break
    if len(out) == len(names) and len(set(out.values())) == len(names):
        return out
    return {c["name"]: n for c, n in zip(data_channels, names)}


def adapt_weights(parent: dict[str, Any], target: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The new network's state: the parent's tensor where the shape agrees; for a layer that gained output
    channels (new classes) the parent's rows for the old channels; the new network's own initial value
    elsewhere (new classes' rows, deep-supervision heads)."""
    state, kept, partial, fresh = {}, 0, [], []
    for key, init in target.items():
        old = parent.get(key)
        if old is not None and tuple(old.shape) == tuple(init.shape):
            state[key] = old.to(init.dtype).clone()
            kept += 1
        elif (old is not None and old.dim() == init.dim() and old.dim() >= 1 and tuple(old.shape[1:]) == tuple(init.shape[1:])
              and old.shape[0] < init.shape[0]):
            value = init.clone()
            value[: old.shape[0]] = old.to(init.dtype)
            state[key] = value
            partial.append(key)
        else:
            state[key] = init.clone()
            fresh.append(key)
    return state, {"kept": kept, "new_classes_added_to": partial, "fresh": fresh}


# The fine-tune ------------------------------------------------------------------------------
class Finetune:
    def __init__(self, opts: FinetuneOptions, events: Events | None = None, cancel: Any = None) -> None:
        self.opts = opts
        self.events = events or Events()
        self.cancel = cancel

    # -- setup ---------------------------------------------------------------------------------
    def _resolve(self) -> None:
        from unetrpp.catalogue import installed_path, models_dir, resolve_model
        from unetrpp.manifest import read_manifest

        o = self.opts
        if not _package_name_ok(o.name):
            raise FinetuneError(f"--name {o.name!r}: use lower-case letters, digits, '.', '_' or '-' (a package name)")
        if o.iterations < 1:
            raise FinetuneError("--iterations must be >= 1")
        if o.unannotated not in ("keep", "background"):
            raise FinetuneError("unannotated must be 'keep' or 'background'")
        self.parent_path = resolve_model(o.parent)
        self.manifest = read_manifest(self.parent_path)
        if self.manifest.name == o.name:
            raise FinetuneError(f"--name {o.name!r} is the parent's name; the parent is never replaced: choose a new name")
        if o.install and installed_path(o.name) is not None:
            raise OutputExistsError(f"a model named {o.name!r} is already installed ({installed_path(o.name)}); choose "
                                    "another --name (an installed model is never replaced by a fine-tune)")
        self.data_dir = Path(o.data).resolve()
        if not (self.data_dir / "dataset.json").is_file():
            raise FinetuneError(f"{self.data_dir} is not a dataset in the nnU-Net raw layout (no dataset.json); add "
                                "cases with `unetrpp-train add-case --set FOLDER ...` or see docs/training.md")
        self.workdir = Path(o.workdir) if o.workdir else models_dir().parent / "finetune" / o.name
        self.state_file = self.workdir / STATE_FILE

    def _read_sources(self) -> list[tuple[str, Any, list[Any]]]:
        from .convert import _nnunet

        sources = []
        for k, folder in enumerate([self.data_dir, *[Path(r).resolve() for r in self.opts.replay]]):
            spec, cases, _, _ = _nnunet("nnunet", folder)
            sources.append(("data" if k == 0 else f"replay{k}", spec, cases))
        return sources

    def _source_hash(self, spec: Any, cases: Sequence[Any], root: Path) -> str:
        files = [root / "dataset.json"]
        for case in cases:
            files += [ref.path for ref in case.images.values()] + [case.label]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FinetuneError(f"missing file(s) in {root}: {', '.join(missing[:3])}")
        return files_sha256(files, root)

    # -- 1. prepare ------------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        from .layout import CaseSource, DatasetSpec, DatasetWriter

        m = self.manifest.data
        arch = dict(m["architecture"])
        model_labels = {int(lab["value"]): str(lab["name"]) for lab in m["labels"]}
        model_inputs = m["inputs"]
        sources = self._read_sources()
        _, data_spec, data_cases = sources[0]
        channel_map = match_channels(model_inputs, data_spec.channels)
        modality = {channel_map[c["name"]]: c["modality"] for c in data_spec.channels}

        union = dict(model_labels)
        per_source: dict[str, dict[str, Any]] = {}
        for tag, spec, cases in sources:
            mapping, new, record = match_labels(dict(union), spec.labels, arch["out_channels"])
            union.update(new)
            per_source[tag] = {"mapping": mapping, "record": record, "annotated": sorted(set(mapping.values()) - {0}),
                               "hash": self._source_hash(spec, cases, spec.source_path), "folder": str(spec.source_path),
                               "cases": [c.case_id for c in cases],
                               "channels": match_channels(model_inputs, spec.channels)}
        new_labels = {v: n for v, n in union.items() if v not in model_labels}
        out_channels = max(arch["out_channels"], max(union) + 1)

        ids = [c.case_id for c in data_cases]
        if self.opts.val:
            unknown = sorted(set(self.opts.val) - set(ids))
            if unknown:
                raise FinetuneError(f"--val names case(s) not in {self.data_dir}: {', '.join(unknown)} "
                                    f"(cases: {', '.join(ids)})")
            eval_ids, held_out = sorted(self.opts.val), True
        elif len(ids) >= 5:
            eval_ids, held_out = [c for i, c in enumerate(sorted(ids)) if i % 5 == 4], True
        else:
            eval_ids, held_out = sorted(ids), False
        train_ids = [c for c in ids if not held_out or c not in eval_ids]
        replay_ids: list[str] = []
        cases_out: list[Any] = []
        for tag, spec, cases in sources:
            mapping = per_source[tag]["mapping"]
            by_input = {v: k for k, v in per_source[tag]["channels"].items()}  # model input -> source channel
            for case in cases:
                cid = case.case_id if tag == "data" else f"{tag}_{case.case_id}"
                if tag != "data":
                    replay_ids.append(cid)
                images = {i["name"]: case.images[by_input[i["name"]]] for i in model_inputs}
                cases_out.append(CaseSource(cid, images, case.label, label_map=dict(mapping)))
        if not train_ids and not replay_ids:
            raise FinetuneError("no case is left to train on (every case is held out by --val)")
        if held_out:
            note = f"evaluated on {len(eval_ids)} held-out case(s) ({', '.join(eval_ids)}), not used for training"
        else:
            note = (f"only {len(ids)} case(s): none could be held out, so the parent and the result are evaluated on "
                    "the cases the result was fine-tuned on (the 'after' figures show the fit to them, not how it "
                    "does on new scans)")
        self.events.log("info" if held_out else "warning", note)

        annotated = per_source["data"]["annotated"]
        unannotated = {tag: sorted(set(model_labels) - set(src["annotated"])) for tag, src in per_source.items()}
        if unannotated["data"]:
            names = ", ".join(model_labels[v] for v in unannotated["data"])
            what = ("kept from the parent's own prediction where the data says background" if self.opts.unannotated == "keep"
                    else "trained as background")
            self.events.log("info", f"model labels the data does not annotate ({names}): {what}")
        if new_labels:
            self.events.log("info", "new classes (fresh output weights): " + ", ".join(
                f"{n} = {v}" for v, n in sorted(new_labels.items())))

        # the converted dataset, in the model's numbering and input names
        spec = DatasetSpec(
            dataset="finetune", variant=str(arch.get("variant", "synapse")), name=f"{self.opts.name} fine-tuning data",
            description=f"cases of {self.data_dir} in the numbering of {self.manifest.name}",
            channels=[{"name": i["name"], "modality": modality[i["name"]]} for i in model_inputs], labels=union,
            evaluation={"classes": [{"name": union[v], "labels": [v]} for v in annotated],
                        "description": "the labels the data annotates"},
            source_path=self.data_dir, source_layout="nnU-Net raw layout (unetrpp-train finetune)",
        )
        data_root = self.workdir / "data"
        writer = DatasetWriter(data_root, spec, overwrite=True)
        writer.begin()
        for n, case in enumerate(cases_out, 1):
            self.events.progress(n - 1, len(cases_out), None, message=f"reading case {case.case_id}")
            writer.write_case(case)
        writer.finish({"train": train_ids + replay_ids, "eval": eval_ids}, note)

        inputs = self._replan_inputs(model_inputs, modality, data_root, train_ids)
        return {
            "version": STATE_VERSION,
            "options": asdict(self.opts),
            "parent": {"name": self.manifest.name, "version": self.manifest.version, "path": str(self.parent_path),
                       "weights_sha256": self.manifest.weights_sha256},
            "labels": {str(v): n for v, n in sorted(union.items())},
            "new_labels": {str(v): n for v, n in sorted(new_labels.items())},
            "out_channels": out_channels,
            "annotated": annotated,
            "unannotated": unannotated,
            "sources": per_source,
            "channels": channel_map,
            "inputs": inputs,
            "train_cases": train_ids, "replay_cases": replay_ids, "eval_cases": eval_ids, "held_out": held_out,
            "evaluation_note": note,
            "prepared": True,
        }

    def _replan_inputs(self, model_inputs: Sequence[dict[str, Any]], modality: dict[str, str], data_root: Path,
                       train_ids: Sequence[str]) -> list[dict[str, Any]]:
        import SimpleITK as sitk

        from .planning import ct_statistics, foreground_samples

        out = []
        for inp in model_inputs:
            item = dict(inp)
            if modality[inp["name"]] != inp["modality"]:
                if modality[inp["name"]] == "CT":
                    samples = []
                    for cid in train_ids:
                        folder = data_root / "cases" / cid
                        img = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"image_{inp['name']}.nii.gz")))
                        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "label.nii.gz")))
                        samples.append(foreground_samples(img, lab, 10))
                    norm = ct_statistics(np.concatenate(samples) if samples else np.zeros(0))
                else:
                    norm = {"scheme": "zscore", "nonzero_mask": False}
                self.events.log("warning", f"input {inp['name']}: the data is {modality[inp['name']]}, the parent was "
                                f"trained on {inp['modality']}: normalisation re-planned from the data ({norm['scheme']})")
                item.update(modality=modality[inp["name"]], normalization=norm)
            out.append(item)
        return out

    def write_training_set(self, state: dict[str, Any]) -> Path:
        """WORKDIR/train: dataset.json pointing at WORKDIR/data's images, labels with pseudo-labels where the
        data leaves model labels unannotated (unannotated="keep"), plan.json = the parent's plan."""
        import SimpleITK as sitk

        from unetrpp.atomic import staged_file

        from .evaluation import _ModelRunner
        from .layout import case_paths, load_dataset
        from .planning import TrainingPlan

        data = load_dataset(self.workdir / "data")
        train_root = self.workdir / "train"
        (train_root / "labels").mkdir(parents=True, exist_ok=True)
        runner = None
        cases: dict[str, Any] = {}
        todo = state["train_cases"] + state["replay_cases"]
        for n, cid in enumerate(todo, 1):
            images, label = case_paths(data, cid)
            tag = "data" if cid in state["train_cases"] else cid.split("_", 1)[0]
            missing = state["unannotated"].get(tag, [])
            rel = {ch: os.path.relpath(p, train_root) for ch, p in images.items()}
            entry: dict[str, Any] = {"images": rel, "label": os.path.relpath(label, train_root)}
            if missing and self.opts.unannotated == "keep":
                self.events.progress(n - 1, len(todo), None, message=f"parent's labels for case {cid}")
                if runner is None:
                    runner = _ModelRunner(self.parent_path, [i["name"] for i in self.manifest.data["inputs"]],
                                          self.opts.device, None, False)
                pred = sitk.GetArrayFromImage(runner(images))
                ref_img = sitk.ReadImage(str(label))
                ann = sitk.GetArrayFromImage(ref_img)
                merged = ann.copy()
                fill = (ann == 0) & np.isin(pred, missing)
                merged[fill] = pred[fill].astype(merged.dtype)
                out = sitk.GetImageFromArray(merged)
                out.CopyInformation(ref_img)
                target = train_root / "labels" / f"{cid}.nii.gz"
                with staged_file(target) as tmp:
                    sitk.WriteImage(out, str(tmp), True)
                entry["label"] = f"labels/{cid}.nii.gz"
                entry["pseudo_labels"] = {str(v): int((merged[fill] == v).sum()) for v in missing}
            cases[cid] = entry
        write_text(train_root / "dataset.json", json.dumps({
            "name": f"{self.opts.name} training cases",
            "channels": data["channels"],
            "labels": state["labels"],
            "cases": cases,
            "splits": {"train": todo},
        }, indent=2) + "\n")
        arch = self.manifest.data["architecture"]
        TrainingPlan(plan=self.manifest.data["plan"], inputs=state["inputs"], patch_size=list(arch["patch_size"]),
                     details={"source": f"the plan of {self.manifest.name} {self.manifest.version}"}).write(train_root)
        return train_root

    # -- 3. train --------------------------------------------------------------------------------
    def config(self, state: dict[str, Any]) -> Any:
        from unetrpp.network import VARIANTS

        from .config import TrainConfig

        o = self.opts
        arch = {k: v for k, v in self.manifest.data["architecture"].items() if k not in ("dims", "hidden_size")}
        arch["out_channels"] = state["out_channels"]
        epochs = max(1, round(o.iterations / ITERATIONS_PER_EPOCH))
        per_epoch = math.ceil(o.iterations / epochs)
        mirror = list(self.manifest.data.get("inference", {}).get("mirror_axes", [0, 1, 2]))
        return TrainConfig.from_dict({
            "dataset": "finetune", "variant": arch.get("variant") if arch.get("variant") in VARIANTS else "synapse",
            "network": arch, "batch_size": o.batch_size, "epochs": epochs, "iterations_per_epoch": per_epoch,
            "optimizer": "adamw", "lr": o.lr, "weight_decay": 3e-5, "ds_weights": [1.0, 0.0, 0.0],
            "batch_dice": True, "oversample_foreground": 0.5, "num_workers": o.workers, "seed": o.seed,
            "checkpoint_every": 1, "split": "train", "val_iterations": 0,
            "augment": {"mirror_axes": mirror, "rotation_deg": [15.0, 15.0, 15.0]},
            "notes": f"fine-tune of {self.manifest.name} {self.manifest.version}",
        })

    def initial_state(self, cfg: Any, train_root: Path) -> dict[str, Any]:
        import torch

        import unetrpp
        from unetrpp.network import build_network

        from .data import read_dataset, read_plan
        from .trainer import network_config

        parent = unetrpp.load(self.parent_path, device="cpu").network.float().state_dict()
        net_cfg = network_config(cfg, read_dataset(train_root), read_plan(train_root))
        torch.manual_seed(cfg.seed)
        target = build_network(net_cfg, deep_supervision=True).state_dict()
        state, report = adapt_weights(parent, target)
        self.events.log("info", f"parent weights: {report['kept']} tensors kept"
                        + (f", {len(report['new_classes_added_to'])} extended for new classes" if report["new_classes_added_to"] else "")
                        + f", {len(report['fresh'])} new (deep-supervision heads)")
        return state

    # -- 2./5. evaluate --------------------------------------------------------------------------
    def evaluate(self, model: Path, out: Path) -> dict[str, Any]:
        from .evaluation import evaluate

        metrics = evaluate(self.workdir / "data", out, split="eval", model=model, device=self.opts.device,
                           overwrite=True)
        return metrics

    # -- 4. export -------------------------------------------------------------------------------
    def lineage(self, state: dict[str, Any], cfg: Any, after: dict[str, float] | None) -> dict[str, Any]:
        src = state["sources"]
        return {
            "parent": {k: v for k, v in state["parent"].items() if k != "path"},
            "data": {"folder": src["data"]["folder"], "sha256": src["data"]["hash"], "cases": src["data"]["cases"]},
            "replay": [{"folder": v["folder"], "sha256": v["hash"], "cases": len(v["cases"])}
                       for k, v in src.items() if k != "data"],
            "iterations": cfg.epochs * cfg.iterations_per_epoch,
            "labels": src["data"]["record"],
            "unannotated_labels": {"values": state["unannotated"]["data"], "treatment": self.opts.unannotated},
            "evaluation": {"cases": state["eval_cases"], "held_out": state["held_out"], "note": state["evaluation_note"]},
            "metrics": {"before": state.get("before", {}), "after": after or {}},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def card(self, lineage: dict[str, Any]) -> str:
        before, after = lineage["metrics"]["before"], lineage["metrics"]["after"]
        p = lineage["parent"]
        lines = [
            "## Adapted from another model",
            "",
            f"Fine-tuned from `{p['name']}` version {p['version']} (weights SHA256 `{p['weights_sha256'][:16]}…`) for "
            f"{lineage['iterations']} iterations on {len(lineage['data']['cases'])} case(s) of `{lineage['data']['folder']}` "
            f"(files SHA256 `{lineage['data']['sha256'][:16]}…`)"
            + (f", replaying {sum(r['cases'] for r in lineage['replay'])} case(s) of the original data" if lineage["replay"] else "")
            + ".",
            "",
            f"Evaluation: {lineage['evaluation']['note']}.",
            "",
            "| structure | Dice before | Dice after |",
            "|---|---|---|",
        ]
        for k in before:
            a = after.get(k)
            lines.append(f"| {k} | {before[k]:.3f} | {a:.3f} |" if a is not None else f"| {k} | {before[k]:.3f} | – |")
        un = lineage["unannotated_labels"]
        if un["values"]:
            lines += ["", f"Labels the data does not annotate (values {un['values']}): "
                      + ("kept from the parent's own prediction during fine-tuning." if un["treatment"] == "keep"
                         else "trained as background.")]
        return "\n".join(lines)

    def export(self, state: dict[str, Any], cfg: Any, run_dir: Path, out: Path, after: dict[str, float] | None) -> Path:
        import torch

        from .export import DEFAULT_LICENSE, export_run

        lineage = self.lineage(state, cfg, after)
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            self.manifest.data.get("weights", {}).get("dtype", "float32"), torch.float32)
        p = self.manifest.data
        return export_run(
            run_dir, out, name=self.opts.name, version=self.opts.version,
            title=f"{p.get('title', p['name'])} — adapted ({self.opts.name})"[:200],
            description=(f"{p['name']} {p['version']} fine-tuned on {len(state['sources']['data']['cases'])} case(s) of "
                         f"{Path(state['sources']['data']['folder']).name}; segments "
                         + ", ".join(n for _, n in sorted((int(v), n) for v, n in state["labels"].items())) + ".")[:1000],
            license_text=p.get("license") or DEFAULT_LICENSE, metrics={"finetune": lineage["metrics"]},
            notes=f"Fine-tuned from {p['name']} {p['version']} with unetrpp-train finetune ({lineage['iterations']} "
                  f"iterations, AdamW lr {cfg.lr}).",
            card_extra=self.card(lineage), dtype=dtype, checkpoint="final", overwrite=True, lineage=lineage,
        )

    # -- the whole run ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        from unetrpp.catalogue import install_package

        from .trainer import FINAL, LATEST, train

        self._resolve()
        ev = self.events
        state: dict[str, Any] = {}
        if resume:
            if not self.state_file.is_file():
                raise FinetuneError(f"cannot resume: {self.state_file} does not exist (start without --resume)")
            state = json.loads(self.state_file.read_text())
            if state.get("parent", {}).get("weights_sha256") != self.manifest.weights_sha256:
                raise FinetuneError(f"cannot resume {self.workdir}: it fine-tunes another parent model")
        elif self.state_file.exists() or (self.workdir / "run").exists():
            raise FinetuneError(f"{self.workdir} already holds a fine-tune; pass --resume to continue it, or choose "
                                "another work folder (-o) or name")
        if not state.get("prepared"):
            ev.stage("prepare", f"matching the labels and channels of {self.data_dir} to {self.manifest.name}")
            state = self.prepare()
            self.workdir.mkdir(parents=True, exist_ok=True)
            write_text(self.state_file, json.dumps(state, indent=2) + "\n")
        train_root = self.workdir / "train"
        if not (train_root / "plan.json").is_file():
            ev.stage("prepare", "training labels and plan")
            self.write_training_set(state)
        if "before" not in state:
            ev.stage("evaluate-before", f"{self.manifest.name} on {len(state['eval_cases'])} case(s)")
            state["before"] = _dice_table(self.evaluate(self.parent_path, self.workdir / "eval-before"))
            write_text(self.state_file, json.dumps(state, indent=2) + "\n")
        cfg = self.config(state)
        run_dir = self.workdir / "run"
        total = cfg.epochs * cfg.iterations_per_epoch
        ev.stage("train", f"{total} iterations on {len(state['train_cases']) + len(state['replay_cases'])} case(s)")
        resume_run = (run_dir / LATEST).is_file() or (run_dir / FINAL).is_file()
        init = None if resume_run else self.initial_state(cfg, train_root)

        def on_step(done: int, total: int, loss: float, eta: float | None) -> None:
            if done == total or done % max(1, total // 100) == 0:
                ev.progress(done, total, eta, loss=round(loss, 5))

        result = train(cfg, train_root, run_dir, resume=resume_run, device=self.opts.device, init_state=init,
                       on_step=on_step, cancel=self.cancel)
        ev.log("info", f"trained {result.steps} step(s), {result.iterations_per_s:.2f} it/s")
        ev.stage("export", "model package")
        staged = self.export(state, cfg, run_dir, self.workdir / "package-unevaluated", None)
        ev.stage("evaluate-after", f"{self.opts.name} on {len(state['eval_cases'])} case(s)")
        after = _dice_table(self.evaluate(staged, self.workdir / "eval-after"))
        package = self.export(state, cfg, run_dir, self.workdir / "package", after)
        lineage = self.lineage(state, cfg, after)
        installed = None
        if self.opts.install:
            ev.stage("install", f"{self.opts.name} into the models folder (the parent {self.manifest.name} stays)")
            installed = install_package(package, overwrite=False)
        result_doc = {"model": self.opts.name, "package": str(installed or package), "parent": self.manifest.name,
                      "metrics": lineage["metrics"], "evaluation": lineage["evaluation"],
                      "iterations": lineage["iterations"], "workdir": str(self.workdir)}
        state["result"] = result_doc
        write_text(self.state_file, json.dumps(state, indent=2) + "\n")
        return result_doc


def finetune(opts: FinetuneOptions, resume: bool = False, events: Events | None = None,
             cancel: Any = None) -> dict[str, Any]:
    """Run a fine-tune (see the module docstring); returns {"model", "package", "metrics": {"before", "after"}, ...}."""
    return Finetune(opts, events, cancel).run(resume=resume)
