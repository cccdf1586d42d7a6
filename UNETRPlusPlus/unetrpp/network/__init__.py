"""UNETR++ network (Shaker et al., arXiv 2212.04497), faithful to the official implementation.

`NetworkConfig` (plain data) imports without torch, so the manifest can use it; the modules
(`UNETRPP`, `build_network`) load torch on first use."""

from .config import VARIANTS, NetworkConfig, NetworkConfigError, variant_config

_TORCH_NAMES = ("UNETRPP", "InputShapeError", "build_network")


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "NetworkConfig",
    "NetworkConfigError",
    "variant_config",
    "UNETRPP",
    "InputShapeError",
    "build_network",
]
