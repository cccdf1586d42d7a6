"""Network settings as data: one dataclass describes every UNETR++ variant.

The four official variants differ in stem size, token counts (fixed by the patch), the number of
conv blocks after attention (acdc/lung have two) and the attention projection (the BraTS "tumor"
network uses one shared (N, P) parameter and adds the two attention branches instead of
concatenating projected halves). Custom (smaller) configurations are built from the same fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Triple = tuple[int, int, int]


class NetworkConfigError(ValueError):
    """A network configuration that cannot be built."""


@dataclass(frozen=True)
class NetworkConfig:
    in_channels: int
    out_channels: int
    patch_size: Triple
    stem_kernel: Triple
    feature_size: int = 16
    num_heads: int = 4
    depths: tuple[int, ...] = (3, 3, 3, 3)
    proj_sizes: tuple[int, ...] = (64, 64, 64, 32)
    decoder_proj_size: int = 64
    decoder_depth: int = 3
    conv_blocks: int = 1
    """Conv (ResBlock) layers after attention in each transformer block: 1, or 2 in acdc/lung."""
    attention: Literal["paired", "shared_ef"] = "paired"
    """"paired": separate E/F Linear (shared module) + out projections, concatenated (synapse,
    acdc, lung). "shared_ef": one (N, P) parameter, branches added (the official tumor network)."""
    tied_ef: bool = True
    """"paired" attention only: E and F are one module (synapse) or two separately trained Linear
    layers (acdc, lung: the official parameter counts include both)."""
    encoder_dropout: float = 0.15
    decoder_dropout: float = 0.15
    variant: str = "custom"

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to tuples so configs compare and hash.
        for name in ("patch_size", "stem_kernel", "depths", "proj_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    # Derived sizes -------------------------------------------------------------------------
    @property
    def dims(self) -> tuple[int, int, int, int]:
        """Channels of the four encoder stages; the decoder adds skips, so they are tied to
        feature_size (official: 32, 64, 128, 256 for feature_size 16)."""
        f = self.feature_size
        return (2 * f, 4 * f, 8 * f, 16 * f)

    @property
    def hidden_size(self) -> int:
        return 16 * self.feature_size

    @property
    def stage_grids(self) -> tuple[Triple, ...]:
        """Spatial grid (D, H, W) of each encoder stage: the stem divides by stem_kernel, then
        each downsampling layer by 2."""
        first = tuple(p // k for p, k in zip(self.patch_size, self.stem_kernel))
        return tuple(tuple(s // (2**i) for s in first) for i in range(4))  # type: ignore[return-value]

    @property
    def stage_tokens(self) -> tuple[int, ...]:
        return tuple(g[0] * g[1] * g[2] for g in self.stage_grids)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.in_channels, *self.patch_size)

    def validate(self) -> None:
        def fail(field_name: str, why: str) -> None:
            raise NetworkConfigError(f"network setting '{field_name}' {why}")

        if self.in_channels < 1:
            fail("in_channels", f"must be >= 1, got {self.in_channels}")
        if self.out_channels < 1:
            fail("out_channels", f"must be >= 1, got {self.out_channels}")
        if len(self.patch_size) != 3 or len(self.stem_kernel) != 3:
            fail("patch_size", "and 'stem_kernel' must have three entries (D, H, W)")
        for p, k in zip(self.patch_size, self.stem_kernel):
            if k < 1 or p % (k * 8) != 0:
                fail(
                    "patch_size",
                    f"{self.patch_size} must be divisible by stem_kernel {self.stem_kernel} x 8 "
                    "(stem plus three 2x downsamplings)",
                )
        if len(self.depths) != 4 or len(self.proj_sizes) != 4:
            fail("depths", "and 'proj_sizes' must have four entries, one per encoder stage")
        if any(d < 1 for d in self.depths) or self.decoder_depth < 1:
            fail("depths", "must all be >= 1")
        if self.feature_size < 1 or (2 * self.feature_size) % self.num_heads:
            fail(
                "feature_size",
                f"x2 ({2 * self.feature_size}) must be divisible by num_heads ({self.num_heads})",
            )
        if self.conv_blocks not in (1, 2):
            fail("conv_blocks", f"must be 1 or 2, got {self.conv_blocks}")
        if self.attention not in ("paired", "shared_ef"):
            fail("attention", f"must be 'paired' or 'shared_ef', got {self.attention!r}")

    # Serialisation (model manifests) ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        # Derived values are written for readers, ignored on load.
        d["dims"] = list(self.dims)
        d["hidden_size"] = self.hidden_size
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetworkConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"dims", "hidden_size", "deep_supervision"}
        if unknown:
            raise NetworkConfigError(f"unknown network setting(s): {', '.join(sorted(unknown))}")
        cfg = cls(**{k: v for k, v in data.items() if k in known})
        if "dims" in data and tuple(data["dims"]) != cfg.dims:
            raise NetworkConfigError(
                f"network setting 'dims' {data['dims']} does not match feature_size "
                f"{cfg.feature_size} (expected {list(cfg.dims)})"
            )
        return cfg

    def replace(self, **changes: Any) -> "NetworkConfig":
        return dataclasses.replace(self, **changes)


# The official variants (Amshaker/unetr_plus_plus @ dcba1c6 trainers). -------------------------
VARIANTS: dict[str, NetworkConfig] = {
    "synapse": NetworkConfig(
        variant="synapse", in_channels=1, out_channels=14,
        patch_size=(64, 128, 128), stem_kernel=(2, 4, 4),
        encoder_dropout=0.15,
    ),
    "acdc": NetworkConfig(
        variant="acdc", in_channels=1, out_channels=4,
        patch_size=(16, 160, 160), stem_kernel=(1, 4, 4),
        conv_blocks=2, tied_ef=False, encoder_dropout=0.1,
    ),
    "brats": NetworkConfig(
        variant="brats", in_channels=4, out_channels=4,
        patch_size=(128, 128, 128), stem_kernel=(4, 4, 4),
        attention="shared_ef", encoder_dropout=0.1,
    ),
    "lung": NetworkConfig(
        variant="lung", in_channels=1, out_channels=2,
        patch_size=(32, 192, 192), stem_kernel=(1, 4, 4),
        conv_blocks=2, tied_ef=False, encoder_dropout=0.1,
    ),
}

# The official repository calls the BraTS network "tumor"; accept both names.
VARIANT_ALIASES = {"tumor": "brats", "btcv": "synapse"}


def variant_config(name: str) -> NetworkConfig:
    key = VARIANT_ALIASES.get(name.lower(), name.lower())
    try:
        return VARIANTS[key]
    except KeyError:
        raise NetworkConfigError(
            f"unknown UNETR++ variant {name!r}; choose one of {', '.join(VARIANTS)}"
        ) from None


