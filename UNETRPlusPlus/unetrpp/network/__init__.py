"""UNETR++ network (Shaker et al., arXiv 2212.04497), faithful to the official implementation."""

from .config import VARIANTS, NetworkConfig, NetworkConfigError, variant_config
from .model import UNETRPP, InputShapeError, build_network

__all__ = [
    "VARIANTS",
    "NetworkConfig",
    "NetworkConfigError",
    "variant_config",
    "UNETRPP",
    "InputShapeError",
    "build_network",
]
