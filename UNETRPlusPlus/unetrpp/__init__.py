"""unetrpp: the UNETR++ segmentation engine (network, model packages, inference). No Qt, no Slicer.

Importing the package loads no torch: the contract layer (`manifest`, `catalogue`, `terminology`,
`progress`, `errors`, `request`, `jsonio`) is torch-free, and `load`, `save_package`, `Model`,
`Segmenter` and `OutputPlan` import the compute modules on first use (see docs/CONTRACTS.md). One
segmentation: `Segmenter(model).segment(SegmentRequest, OutputPlan)`."""

from __future__ import annotations

import logging

from .errors import UnetrppError
from .manifest import read_manifest

__version__ = "0.1.0"
__all__ = ["load", "read_manifest", "save_package", "Model", "Segmenter", "SegmentRequest", "OutputPlan",
           "UnetrppError", "__version__"]

# name -> module that defines it (imported on first access: these load torch)
_LAZY = {"load": "package", "save_package": "package", "Model": "package", "Segmenter": "segmenter",
         "SegmentRequest": "request", "OutputPlan": "outputs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logging.getLogger(__name__).addHandler(logging.NullHandler())
