"""unetrpp: the UNETR++ segmentation engine (network, model packages, inference). No Qt, no Slicer."""

from __future__ import annotations

import logging

from .errors import UnetrppError
from .package import Model, load, read_manifest, save_package

__version__ = "0.1.0"
__all__ = ["load", "read_manifest", "save_package", "Model", "UnetrppError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
