"""Convolutional building blocks, named so that official UNETR++ state_dict keys load unchanged.

The official network builds these from MONAI's `Convolution` (conv_only) and `UnetResBlock`; the
module names below (`conv`, `conv1`, `norm1`, ...) reproduce their state_dict layout.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

Norm = Literal["instance", "batch"]


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(x) for x in v)  # type: ignore[return-value]


def same_padding(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, int, int]:
    # MONAI's rule: (kernel - stride + 1) // 2 per axis.
    return tuple((k - s + 1) // 2 for k, s in zip(kernel, stride))  # type: ignore[return-value]


class ConvLayer(nn.Module):
    """A bare 3D conv (or transposed conv) stored under `.conv`, like MONAI's conv_only layer."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        bias: bool = False,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        kernel, strides = _triple(kernel_size), _triple(stride)
        padding = same_padding(kernel, strides)
        if transposed:
            output_padding = tuple(2 * p - k + s for p, k, s in zip(padding, kernel, strides))
            self.conv: nn.Module = nn.ConvTranspose3d(
                in_channels, out_channels, kernel, strides, padding, output_padding, bias=bias
            )
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, kernel, strides, padding, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResidualAdd(nn.Module):
    """`fresh + other`. The faithful network allocates the sum, so every module output stays as
    computed (forward hooks, feature extraction and the parity intermediates see true values).
    The inference copy (network/fast.py) sets `in_place`: the sum then reuses `fresh`, a new
    activation nobody else holds there (one activation less) when dtype and shape allow; under
    autocast a float16 `fresh` plus a float32 `other` is float32, so that case allocates."""

    in_place: bool = False

    def forward(self, fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.in_place and fresh.dtype == torch.promote_types(fresh.dtype, other.dtype) and fresh.shape == other.shape:
            return fresh.add_(other)
        return fresh + other


def make_norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "instance":  # MONAI "instance": no affine parameters, no running statistics
        return nn.InstanceNorm3d(channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown norm {kind!r}")


class ResBlock(nn.Module):
    """conv3 -> norm -> LeakyReLU -> conv3 -> norm, plus a 1x1x1 conv+norm residual when the
    channel count changes; LeakyReLU(0.01) after the sum."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channels, out_channels, 3)
        self.conv2 = ConvLayer(out_channels, out_channels, 3)
        self.lrelu = nn.LeakyReLU(negative_slope=0.01)
        self.residual_add = ResidualAdd()
        self.norm1 = make_norm(norm, out_channels)
        self.norm2 = make_norm(norm, out_channels)
        self.has_projection = in_channels != out_channels
        if self.has_projection:
            self.conv3 = ConvLayer(in_channels, out_channels, 1)
            self.norm3 = make_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.lrelu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.has_projection:
            residual = self.norm3(self.conv3(residual))
        return self.lrelu(self.residual_add(out, residual))


class OutBlock(nn.Module):
    """1x1x1 conv with bias: the segmentation head (`out1`, and `out2`/`out3` for deep supervision)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
