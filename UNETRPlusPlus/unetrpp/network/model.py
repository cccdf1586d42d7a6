"""UNETR++: hierarchical encoder of EPA transformer stages, decoder with skip additions."""

from __future__ import annotations

import torch
from torch import nn

from .attention import TransformerBlock
from .blocks import ConvLayer, OutBlock, ResBlock, ResidualAdd
from .config import NetworkConfig


class InputShapeError(ValueError):
    """The input tensor does not have the shape the network was built for."""


def _init_encoder_weights(module: nn.Module) -> None:
    # Official encoder initialisation (network_architecture/synapse/model_components.py:43-50 @ dcba1c6, likewise
    # acdc/lung/tumor): truncated normal (std 0.02) and zero bias for nn.Conv2d/nn.Linear only; the 3-D
    # convolutions keep PyTorch's default.
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """Stem + three 2x downsamplings, each followed by a stage of transformer blocks."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        dims = cfg.dims
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                ConvLayer(cfg.in_channels, dims[0], cfg.stem_kernel, cfg.stem_kernel),
                nn.GroupNorm(num_groups=cfg.in_channels, num_channels=dims[0]),
            )
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    ConvLayer(dims[i], dims[i + 1], 2, 2),
                    # The official code groups by the *input* channel count.
                    nn.GroupNorm(num_groups=dims[i], num_channels=dims[i + 1]),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[
                    TransformerBlock(
                        tokens=cfg.stage_tokens[i],
                        hidden_size=dims[i],
                        proj_size=cfg.proj_sizes[i],
                        num_heads=cfg.num_heads,
                        dropout=cfg.encoder_dropout,
                        shared_ef=cfg.attention == "shared_ef",
                        conv_blocks=cfg.conv_blocks,
                        tied_ef=cfg.tied_ef,
                    )
                    for _ in range(cfg.depths[i])
                ]
            )
            for i in range(4)
        )
        self.apply(_init_encoder_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
            skips.append(x)
        return skips


class UpBlock(nn.Module):
    """Transposed conv, add the skip, then transformer blocks (or one ResBlock at full scale)."""

    def __init__(
        self,
        cfg: NetworkConfig,
        in_channels: int,
        out_channels: int,
        upsample: tuple[int, int, int],
        tokens: int | None,
    ) -> None:
        super().__init__()
        self.transp_conv = ConvLayer(in_channels, out_channels, upsample, upsample, transposed=True)
        self.skip_add = ResidualAdd()
        self.decoder_block = nn.ModuleList()
        if tokens is None:
            self.decoder_block.append(ResBlock(out_channels, out_channels, norm="instance"))
        else:
            self.decoder_block.append(
                nn.Sequential(
                    *[
                        TransformerBlock(
                            tokens=tokens,
                            hidden_size=out_channels,
                            proj_size=cfg.decoder_proj_size,
                            num_heads=cfg.num_heads,
                            dropout=cfg.decoder_dropout,
                            shared_ef=cfg.attention == "shared_ef",
                            conv_blocks=cfg.conv_blocks,
                            tied_ef=cfg.tied_ef,
                        )
                        for _ in range(cfg.decoder_depth)
                    ]
                )
            )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.decoder_block[0](self.skip_add(self.transp_conv(x), skip))


class UNETRPP(nn.Module):
    """The UNETR++ network. `deep_supervision=True` adds the out2/out3 heads and returns
    [full, half, quarter] resolution logits (training); otherwise only the full-resolution logits."""

    def __init__(self, cfg: NetworkConfig, deep_supervision: bool = False) -> None:
        super().__init__()
        self.config = cfg
        f = cfg.feature_size
        tokens = cfg.stage_tokens
        self.unetr_pp_encoder = Encoder(cfg)
        self.encoder1 = ResBlock(cfg.in_channels, f, norm="instance")
        self.decoder5 = UpBlock(cfg, 16 * f, 8 * f, (2, 2, 2), tokens[2])
        self.decoder4 = UpBlock(cfg, 8 * f, 4 * f, (2, 2, 2), tokens[1])
        self.decoder3 = UpBlock(cfg, 4 * f, 2 * f, (2, 2, 2), tokens[0])
        self.decoder2 = UpBlock(cfg, 2 * f, f, cfg.stem_kernel, None)
        self.out1 = OutBlock(f, cfg.out_channels)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.out2 = OutBlock(2 * f, cfg.out_channels)
            self.out3 = OutBlock(4 * f, cfg.out_channels)

    def check_input(self, x: torch.Tensor) -> None:
        expected = self.config.input_shape
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise InputShapeError(
                f"UNETR++ ({self.config.variant}) expects input of shape (batch, {expected[0]}, "
                f"{expected[1]}, {expected[2]}, {expected[3]}) = (batch, channels, *patch size); "
                f"got {tuple(x.shape)}. Token counts are fixed by the patch size, so larger "
                "volumes must go through sliding-window inference."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        enc1, enc2, enc3, enc4 = self.unetr_pp_encoder(x)
        full_res = self.encoder1(x)
        dec3 = self.decoder5(enc4, enc3)
        dec2 = self.decoder4(dec3, enc2)
        dec1 = self.decoder3(dec2, enc1)
        out = self.decoder2(dec1, full_res)
        if self.deep_supervision:
            return [self.out1(out), self.out2(dec1), self.out3(dec2)]
        return self.out1(out)


def build_network(cfg: NetworkConfig | str, deep_supervision: bool = False) -> UNETRPP:
    """Build a UNETR++ network from a config or an official variant name."""
    from .config import variant_config

    if isinstance(cfg, str):
        cfg = variant_config(cfg)
    return UNETRPP(cfg, deep_supervision=deep_supervision)
