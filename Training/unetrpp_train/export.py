"""Export a training run as a model package (`unetrpp.save_package`) plus a Markdown model card.

The manifest carries the architecture, the plan and per-input normalisation the run was trained
with, labels with names, colours and SNOMED-CT terminology (from `unetrpp.official_models` for the
benchmark datasets), metrics, and provenance (dataset, split, epochs, config hash, code version,
checkpoint SHA256). The card is written as MODEL_CARD.md inside a package folder (the loader only
reads model.json and weights.safetensors), or next to a .zip package as <name>.MODEL_CARD.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from unetrpp import save_package
from unetrpp.atomic import replace_path, staging_dir, write_text
from unetrpp.errors import OutputExistsError, UnetrppError
from unetrpp.hashing import sha256_file
from unetrpp.network import NetworkConfig, build_network
from unetrpp.manifest import MANIFEST_FILE, InferenceDefaults, Plan, build_manifest
from unetrpp.official_models import PAPER, official_manifest
from unetrpp.package import load_weights_into
from unetrpp.quality.fit import add_card

from .trainer import FINAL, LATEST, RUN_FILE, load_checkpoint

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
DEFAULT_LICENSE = (
    "Apache-2.0 (UNETR++ code and these weights); the training data's own terms also apply. "
    "Not a medical device: not for clinical decisions."
)
_PALETTE = [
    (230, 80, 60), (60, 160, 230), (120, 200, 90), (240, 200, 60), (170, 100, 220), (60, 200, 190),
    (240, 140, 40), (200, 60, 140), (140, 140, 240), (100, 180, 120), (220, 120, 120), (120, 120, 60),
]


class ExportError(UnetrppError):
    """The run folder cannot be exported (missing checkpoint or run.json)."""


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file the user named; anything else is an input error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeError, RecursionError) as exc:
        raise ExportError(f"{what} {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{what} {path} must hold a JSON object")
    return data



def optimizer_summary(cfg: dict[str, Any]) -> str:
    """The optimiser as the run used it (the paper's SGD, or AdamW for quick demo fits)."""
    if cfg.get("optimizer", "sgd") == "adamw":
        return f"AdamW lr {cfg['lr']}, weight decay {cfg['weight_decay']}"
    nesterov = " (Nesterov)" if cfg["nesterov"] else ""
    return f"SGD lr {cfg['lr']}, momentum {cfg['momentum']}{nesterov}, weight decay {cfg['weight_decay']}"

def _norm_name(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()
    m = re.fullmatch(r"(.+) (left|right)", text)  # nnU-Net / TotalSegmentator style: kidney_left
    return f"{m.group(2)} {m.group(1)}" if m else text


def _official_by_name() -> dict[str, dict[str, Any]]:
    """Every label of the official variants by normalised name (SNOMED-CT terminology and colour)."""
    found: dict[str, dict[str, Any]] = {}
    for variant in ("synapse", "acdc", "brats", "lung"):
        for item in official_manifest(variant)["labels"]:
            found.setdefault(_norm_name(item["name"]), item)
    return found


def package_labels(dataset: str, variant: str, labels: dict[int, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labels (and BraTS regions) for the manifest: the official entries (terminology) where the
    value and name agree with the dataset's, else the official entry of the same name (own data: its
    terminology and colour, the dataset's value), generic entries otherwise."""
    official: dict[int, dict[str, Any]] = {}
    regions: list[dict[str, Any]] = []
    try:
        template = official_manifest(variant)
        official = {int(item["value"]): item for item in template["labels"]}
        regions = template.get("regions", [])
    except (KeyError, ValueError):
        pass
    known_dataset = dataset.lower() in ("synapse", "btcv", "acdc", "brats", "lung")
    by_name = _official_by_name()
    out = []
    for i, (value, name) in enumerate(sorted(labels.items())):
        ref = official.get(value)
        if ref is not None and (known_dataset or _norm_name(ref["name"]) == _norm_name(name)):
            out.append(dict(ref))
        elif _norm_name(name) in by_name:  # own data: the official entry of the same name, with this value and name
            out.append(dict(by_name[_norm_name(name)], value=int(value), name=name))
        else:
            out.append({"value": int(value), "name": name, "color": list(_PALETTE[i % len(_PALETTE)])})
    values = {lab["value"] for lab in out}
    regions = [r for r in regions if set(r["labels"]) <= values]
    return out, regions


def _package_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "unetrpp-model"


def run_manifest(run: dict[str, Any], checkpoint: dict[str, Any], checkpoint_file: Path, *,
                 name: str | None, version: str, title: str | None, description: str | None,
                 license_text: str, metrics: dict[str, Any] | None, notes: str | None,
                 lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a training run, built by the engine's `build_manifest` (schema version and
    inference defaults from `unetrpp.manifest`; only the mirror axes follow the run's augmentation)."""
    cfg = run["config"]
    ds = run["dataset"]
    labels = {int(k): v for k, v in ds["labels"].items()}
    label_entries, regions = package_labels(cfg["dataset"], cfg["variant"], labels)
    epochs_done = int(checkpoint["epoch"])
    history = checkpoint.get("history", [])
    train_metrics: dict[str, Any] = {}
    if history:
        last = history[-1]
        train_metrics["final_epoch_loss"] = last.get("loss")
        if "val_pseudo_dice" in last:
            train_metrics["val_pseudo_dice"] = last["val_pseudo_dice"]
    all_metrics = {"training": train_metrics}
    if metrics:
        all_metrics.update(metrics)
    split = f"{cfg['split']}: {len(ds['train_cases'])} case(s)"
    if ds.get("val_cases"):
        split += f"; validation: {len(ds['val_cases'])} case(s)"
    aug = cfg.get("augment", {})
    provenance = {
        "source": "training",
        "dataset": ds["name"],
        "split": split,
        "epochs": epochs_done,
        "metrics": all_metrics,
        "checkpoint_sha256": sha256_file(checkpoint_file),
        "config_hash": run["config_hash"],
        "code_version": run["code_version"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if lineage:
        provenance["lineage"] = lineage  # a fine-tune: parent, data, iterations, metrics before and after
    provenance["notes"] = notes or (
        f"Trained with unetrpp-train: {epochs_done} x {cfg['iterations_per_epoch']} iterations, batch {cfg['batch_size']}"
        f" x {run.get('world_size', 1)} process(es), {optimizer_summary(cfg)}, poly {cfg['poly_exponent']},"
        f" Dice+CE with deep supervision."
    )
    return build_manifest(
        name=_package_name(name or f"{ds['name']}-unetrpp"),
        version=version,
        title=title or f"UNETR++ trained on {ds['name']}",
        description=description or (
            f"UNETR++ ({cfg['variant']} architecture, feature size {run['network']['feature_size']}) segmenting "
            + ", ".join(lab["name"] for lab in label_entries) + f"; trained on {ds['name']}."
        ),
        license=license_text,
        citation=PAPER,
        network=run["network"],
        inputs=run["plan"]["inputs"],
        plan=run["plan"]["plan"],
        labels=label_entries,
        regions=regions,
        inference={"mirror_axes": list(aug.get("mirror_axes", InferenceDefaults.mirror_axes))},
        provenance=provenance,
    )


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(manifest: dict[str, Any], run: dict[str, Any], extra: str | None = None) -> str:
    arch = manifest["architecture"]
    prov = manifest["provenance"]
    cfg = run["config"]
    lines = [
        f"# {manifest.get('title', manifest['name'])}",
        "",
        f"Package `{manifest['name']}` version {manifest['version']}. {manifest.get('description', '')}",
        "",
        "**Not a medical device. Not for clinical use.** Outputs must not be used for diagnosis or treatment decisions.",
        "",
    ]
    if extra:
        lines += [extra.strip(), ""]
    lines += [
        "## Model",
        "",
        "| setting | value |",
        "|---|---|",
        f"| architecture | UNETR++ (`{arch['variant']}` layout) |",
        f"| inputs → outputs | {arch['in_channels']} → {arch['out_channels']} classes (softmax) |",
        f"| patch (z, y, x) | {' × '.join(map(str, arch['patch_size']))} |",
        f"| stem kernel | {' × '.join(map(str, arch['stem_kernel']))} |",
        f"| feature size / dims | {arch['feature_size']} / {arch.get('dims')} |",
        f"| depths / decoder depth | {arch['depths']} / {arch.get('decoder_depth')} |",
        f"| weights | {manifest.get('weights', {}).get('dtype', 'float32')} safetensors |",
        "",
        "## Inputs and preprocessing",
        "",
        f"Target spacing (z, y, x): {manifest['plan']['target_spacing']} mm; crop to non-zero: "
        f"{manifest['plan'].get('crop_to_nonzero', Plan.crop_to_nonzero)}.",
        "",
    ]
    for inp in manifest["inputs"]:
        norm = inp["normalization"]
        desc = ", ".join(f"{k} {_fmt(v) if not isinstance(v, list) else [round(x, 2) for x in v]}"
                         for k, v in norm.items() if k != "scheme")
        lines.append(f"- `{inp['name']}` ({inp['modality']}): normalisation `{norm['scheme']}` {desc}")
    lines += ["", "## Labels", "", "| value | name | SNOMED-CT |", "|---|---|---|"]
    for lab in manifest["labels"]:
        term = lab.get("terminology", {}).get("type", {})
        code = f"{term.get('code', '')} {term.get('meaning', '')}".strip() or "–"
        mod = lab.get("terminology", {}).get("modifier")
        if mod:
            code += f" ({mod['meaning']})"
        lines.append(f"| {lab['value']} | {lab['name']} | {code} |")
    lines += [
        "",
        "## Training",
        "",
        f"- Data: {prov.get('dataset')} — {prov.get('split')}.",
        f"- Recipe: {prov.get('epochs')} epochs × {cfg['iterations_per_epoch']} iterations, batch {cfg['batch_size']} per process "
        f"× {run.get('world_size', 1)} process(es); {optimizer_summary(cfg)}, poly decay {cfg['poly_exponent']}, "
        f"gradient clipping {cfg['grad_clip']}; Dice + cross-entropy with deep supervision weights "
        f"{[round(w, 3) for w in cfg['ds_weights']]}; foreground oversampling {cfg['oversample_foreground']}; "
        f"nnU-Net-style augmentation {'on' if cfg['augment']['enabled'] else 'off'}.",
        f"- Config hash `{prov.get('config_hash')}`, code {prov.get('code_version')}, checkpoint sha256 `{prov.get('checkpoint_sha256', '')[:16]}…`.",
        "",
        "## Metrics",
        "",
    ]
    metrics = prov.get("metrics", {})
    dice = metrics.get("dice")
    if isinstance(dice, dict) and dice:
        lines += [f"{metrics.get('dice_description', 'Dice per label')}:", "", "| label | Dice |", "|---|---|"]
        for k, v in dice.items():
            lines.append(f"| {k} | {_fmt(v)} |")
        lines.append("")
    for k, v in metrics.items():
        if k in ("dice", "dice_description"):
            continue
        lines.append(f"- {k}: `{json.dumps(v)}`")
    lines += [
        "",
        "## Licence and citation",
        "",
        f"{manifest['license']}",
        "",
        f"Please cite: {manifest.get('citation', PAPER)}",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    name: str | None = None,
    version: str = "1.0.0",
    title: str | None = None,
    description: str | None = None,
    license_text: str = DEFAULT_LICENSE,
    metrics: dict[str, Any] | None = None,
    notes: str | None = None,
    card_extra: str | None = None,
    dtype: torch.dtype = torch.float32,
    checkpoint: str = "final",
    overwrite: bool = False,
    lineage: dict[str, Any] | None = None,
) -> Path:
    run_dir = Path(run_dir)
    output = Path(output)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise ExportError(f"{run_dir} is not a training run folder: {run_file} is missing")
    run = read_json_file(run_file, "run file")
    missing = [k for k in ("config", "config_hash", "network", "dataset", "plan", "code_version") if k not in run]
    if missing:
        raise ExportError(f"{run_file} lacks {', '.join(missing)}: not a run folder of unetrpp-train train")
    names = {"final": [FINAL, LATEST], "latest": [LATEST]}.get(checkpoint, [checkpoint])
    ckpt_file = next((run_dir / n for n in names if (run_dir / n).is_file()), None)
    if ckpt_file is None:
        raise ExportError(f"{run_dir} has no checkpoint ({' or '.join(names)}); train first")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} already exists; choose another path or pass --overwrite")
    if ckpt_file.name != FINAL:
        log.warning("exporting %s: the run has not finished", ckpt_file.name)
    ckpt = load_checkpoint(ckpt_file)
    if ckpt.get("config_hash") != run["config_hash"]:
        raise ExportError(f"{ckpt_file} belongs to another recipe than {run_file} (config hash differs)")
    net_cfg = NetworkConfig.from_dict(run["network"])
    network = build_network(net_cfg, deep_supervision=False)
    load_weights_into(network, ckpt["model"], f"checkpoint {ckpt_file}")
    manifest = run_manifest(run, ckpt, ckpt_file, name=name, version=version, title=title, description=description,
                              license_text=license_text, metrics=metrics, notes=notes, lineage=lineage)
    add_card(manifest, network, run["dataset"])  # the model card as data (issue 19): unetrpp.quality
    if output.suffix == ".zip":
        save_package(network, manifest, output, overwrite=overwrite, dtype=dtype)
        written = json.loads(__import__("zipfile").ZipFile(output).read("model.json"))
        card = output.with_name(output.stem + "." + CARD_FILE)
        write_text(card, model_card(written, run, card_extra))
        log.info("model card %s", card)
        return output
    with staging_dir(output.parent) as tmp:  # the card goes inside the package before it appears
        staged = save_package(network, manifest, tmp / "package", dtype=dtype)
        written = json.loads((staged / MANIFEST_FILE).read_text())
        (staged / CARD_FILE).write_text(model_card(written, run, card_extra))
        replace_path(staged, output, overwrite=overwrite)
    log.info("exported %s -> %s (%s, %s)", ckpt_file, output, manifest["name"], str(dtype).removeprefix("torch."))
    return output
