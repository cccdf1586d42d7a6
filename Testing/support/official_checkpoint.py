"""Checkpoints in the container the official UNETR++ trainers write, as they are published.

The official `model_final_checkpoint.model` files were written by nnU-Net v1 trainers
(`network_trainer.save_checkpoint`) under numpy 1.x (the official requirements pin numpy 1.20.1): a dict
with `epoch`, `state_dict`, `optimizer_state_dict`, `lr_scheduler_state_dict`, `plot_stuff` (four lists of
numpy float64 loss/metric values) and `best_stuff`, pickled by torch.save (protocol 2). Its numpy scalars
name the global `numpy.core.multiarray.scalar`; under numpy 2 the same objects pickle as
`numpy._core.multiarray.scalar`. `save_as_numpy1` writes the pickle numpy 1 writes, whatever numpy runs
here: the pure-Python pickler with the module of numpy's own globals spelled as numpy 1 spells it.
`Testing/engine/test_official_import.py` shows that re-saving `../shared/parity/
official_checkpoint_structure_numpy1.model` (written by numpy 1.26.4) this way gives the same bytes.
"""

from __future__ import annotations

import io
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class _Numpy1Pickler(pickle._Pickler):  # the pure-Python pickler: the C one has no save_global to extend
    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core") and self.proto < 4:
            name = name or obj.__qualname__
            numpy1 = "numpy.core" + module[len("numpy._core"):]
            self.write(pickle.GLOBAL + numpy1.encode() + b"\n" + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global
    dispatch[type] = save_global


#: what torch.save needs of a pickle module
numpy1_pickle = types.SimpleNamespace(Pickler=_Numpy1Pickler, Unpickler=pickle.Unpickler, load=pickle.load,
                                      dump=pickle.dump, __name__="numpy1_pickle")


def save_as_numpy1(obj: Any, path: str | Path) -> None:
    """torch.save(obj, path) with the pickle that numpy 1.x writes (see the module docstring)."""
    torch.save(obj, path, pickle_module=numpy1_pickle)


def official_container(state_dict: dict[str, torch.Tensor], epoch: int = 1000) -> dict[str, Any]:
    """The dict `network_trainer.save_checkpoint` writes (nnU-Net v1), around `state_dict`."""
    losses = [np.float64(1.2 - 0.001 * i) for i in range(5)]
    return {
        "epoch": epoch,
        "state_dict": state_dict,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-05, "momentum": 0.99, "dampening": 0,
                                                               "weight_decay": 3e-05, "nesterov": True,
                                                               "params": list(range(len(state_dict)))}]},
        "lr_scheduler_state_dict": None,
        "plot_stuff": (losses, [np.float64(v - 0.1) for v in losses], [np.float64(0.5 + 0.01 * i) for i in range(5)],
                       [np.float64(0.6 + 0.01 * i) for i in range(5)]),
        "best_stuff": (epoch - 1, np.float64(0.81), np.float64(0.82)),
        "amp_grad_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 0},
    }


def write_numpy1_official_checkpoint(path: str | Path, variant: str, prefix: str = "module.") -> torch.nn.Module:
    """A full-size official-format checkpoint of `variant` (deterministic weights, deep supervision heads,
    DDP's `module.` prefix by default) written as numpy 1.x writes it. Returns the network."""
    from unetrpp.network import build_network
    from unetrpp.network.deterministic import set_deterministic_weights

    net = set_deterministic_weights(build_network(variant, deep_supervision=True).float())
    save_as_numpy1(official_container({prefix + k: v.clone() for k, v in net.state_dict().items()}), path)
    return net


def pickle_globals(path: str | Path) -> set[str]:
    """The `module name` globals a torch checkpoint's pickle names (to show which numpy wrote it)."""
    import pickletools

    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    return {str(arg) for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}


def pickle_bytes(path: str | Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
