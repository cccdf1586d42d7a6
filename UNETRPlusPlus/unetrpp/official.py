"""Import an official UNETR++ checkpoint (`model_final_checkpoint.model`) as a model package.

Official checkpoints are `torch.save` dicts (`state_dict`, `optimizer_state_dict`, `epoch`,
`plot_stuff`, `best_stuff`, ...) whose metric lists hold numpy scalars. They are read with
`torch.load(weights_only=True)` with exactly those numpy types allowed; anything else that would
need arbitrary unpickling is refused before it can run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, PackageError
from .hashing import sha256_file
from .network import VARIANTS, build_network, variant_config
from .official_models import OFFICIAL_REPOSITORY, official_manifest
from .package import load_weights_into, save_package

log = logging.getLogger(__name__)


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects an official checkpoint holds, under the names of numpy 1 and numpy 2.

    The official checkpoints were written by nnU-Net v1 trainers (`network_trainer.save_checkpoint`)
    under numpy 1.x (the official requirements pin 1.20.1): the metric values in `plot_stuff` and
    `best_stuff` are numpy float64 scalars, pickled as `numpy.core.multiarray.scalar` with a
    `numpy.dtype`. numpy 2 moved that module to `numpy._core.multiarray` (and pickles under the new
    name), so the reader allows the same functions under both names (torch's safe_globals takes
    `(object, "qualified.name")` pairs), whichever numpy runs here. `_reconstruct`/`ndarray` (a numpy
    array, should a trainer have stored one) are allowed the same way; nothing else is.
    """
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 / numpy 1.x (no np._core before 1.26)
    multiarray = core.multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        allowed += [(function, f"{module}.{name}") for module in ("numpy.core.multiarray", "numpy._core.multiarray")]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return allowed


def _unsupported_global(detail: str) -> str:
    """The global that torch's weights-only unpickler refused, from its message ("the Python object
    `os.system`"), or a general phrase when the message has another form."""
    import re

    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", detail)
    return f"the Python object `{match.group(1)[:120]}`" if match else "a Python object"


def read_official_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Safely read an official checkpoint dict. Raises CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc)
        if "Unsupported global" not in detail and "GLOBAL" not in detail:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?)") from None
        found = _unsupported_global(detail)
        raise CheckpointError(
            f"refused to load {path}: it asks to run {found}, which is not one of the tensors, numbers and "
            "numpy scalars that an official UNETR++ checkpoint holds, and loading it could run arbitrary "
            "code. This file is not an official checkpoint as published (an official one imports); if you "
            "wrote it yourself, save only the state_dict (torch.save(model.state_dict(), path))."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, ckpt = ckpt, {"state_dict": ckpt}  # a bare state_dict
    else:
        raise CheckpointError(f"{path} holds no 'state_dict'; is it an official UNETR++ checkpoint?")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    # DataParallel / DDP training prefixes every key with "module.".
    ckpt["state_dict"] = {k.removeprefix("module."): v for k, v in state.items()}
    return ckpt


def _guess_variant(state: dict[str, torch.Tensor]) -> str | None:
    for name in VARIANTS:
        expected = build_network(name, deep_supervision=True).state_dict()
        if set(expected) == set(state) and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in state):
            return name
    return None


def import_official_checkpoint(
    checkpoint: str | os.PathLike[str],
    variant: str,
    output: str | os.PathLike[str],
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert an official checkpoint of `variant` into a model package at `output`."""
    cfg = variant_config(variant)
    ckpt = read_official_checkpoint(checkpoint)
    state = ckpt["state_dict"]
    network = build_network(cfg, deep_supervision=any(k.startswith("out2.") for k in state))
    try:
        load_weights_into(network, state, f"checkpoint {checkpoint}")
    except PackageError as exc:
        guess = _guess_variant(state)
        hint = f" It looks like a '{guess}' checkpoint: use --variant {guess}." if guess and guess != cfg.variant else ""
        raise CheckpointError(f"{exc}. Expected an official '{cfg.variant}' checkpoint.{hint}") from None

    manifest = official_manifest(cfg.variant, name=name)
    epoch = ckpt.get("epoch")
    manifest["provenance"].update(
        {
            "checkpoint_sha256": sha256_file(Path(checkpoint)),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "notes": (manifest["provenance"].get("notes", "") + f" Imported from {Path(checkpoint).name} "
                      f"(official UNETR++, {OFFICIAL_REPOSITORY}).").strip(),
        }
    )
    if isinstance(epoch, (int, np.integer)):
        manifest["provenance"]["epochs"] = int(epoch)
    out = save_package(network, manifest, output, overwrite=overwrite)
    log.info("imported %s as %s (%s)", checkpoint, out, cfg.variant)
    return out
