"""Efficient paired attention (EPA) and the transformer block that wraps it.

Faithful to the official code, including the spatial-attention reshape that mixes heads, channels
and tokens (`permute(0, 3, 1, 2).reshape(B, N, C)`): the authors confirmed it is intended, and
official checkpoints were trained with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, ResidualAdd


class EPA(nn.Module):
    """Channel attention and spatial attention sharing queries and keys.

    `shared_ef=False` (synapse/acdc/lung): k and v_SA are projected N -> P by Linear layers E and
    F (in synapse one module under two names, so the state_dict has identical E.* and F.*; in
    acdc/lung two separate layers, `tied_ef=False`), and the branches
    are projected to C/2 each and concatenated. `shared_ef=True` (official tumor network): one
    (N, P) parameter `EF`, no bias, and the branches are added.
    """

    def __init__(
        self,
        tokens: int,
        hidden_size: int,
        proj_size: int,
        num_heads: int,
        dropout: float,
        shared_ef: bool,
        tied_ef: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.shared_ef = shared_ef
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkvv = nn.Linear(hidden_size, hidden_size * 4, bias=False)
        if shared_ef:
            self.EF = nn.Parameter(torch.empty(tokens, proj_size))
            nn.init.xavier_normal_(self.EF)
        else:
            self.E = nn.Linear(tokens, proj_size)
            self.F = self.E if tied_ef else nn.Linear(tokens, proj_size)
            self.out_proj = nn.Linear(hidden_size, hidden_size // 2)
            self.out_proj2 = nn.Linear(hidden_size, hidden_size // 2)
        self.attn_drop = nn.Dropout(dropout)
        self.attn_drop_2 = nn.Dropout(dropout)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        qkvv = self.qkvv(x).reshape(B, N, 4, h, C // h).permute(2, 0, 3, 4, 1)  # (4, B, h, d, N)
        q, k, v_ca, v_sa = qkvv[0], qkvv[1], qkvv[2], qkvv[3]

        # The projections see k before normalisation (as in the official code).
        if self.shared_ef:  # (B, h, d, N) -> (B, h, d, P)
            k_proj, v_proj = torch.matmul(k, self.EF), torch.matmul(v_sa, self.EF)
        else:
            k_proj, v_proj = self.E(k), self.F(v_sa)

        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)

        attn_ca = (q @ k.transpose(-2, -1)) * self.temperature  # (B, h, d, d)
        attn_ca = self.attn_drop(attn_ca.softmax(dim=-1))
        x_ca = (attn_ca @ v_ca).permute(0, 3, 1, 2).reshape(B, N, C)

        attn_sa = (q.transpose(-2, -1) @ k_proj) * self.temperature2  # (B, h, N, P)
        attn_sa = self.attn_drop_2(attn_sa.softmax(dim=-1))
        # Official reshape: (B, h, N, d) -> (B, d, h, N) -> (B, N, C), mixing heads and tokens.
        x_sa = (attn_sa @ v_proj.transpose(-2, -1)).permute(0, 3, 1, 2).reshape(B, N, C)

        if self.shared_ef:
            return x_sa + x_ca
        return torch.cat((self.out_proj(x_sa), self.out_proj2(x_ca)), dim=-1)


class TransformerBlock(nn.Module):
    """Tokens + pos_embed -> x + gamma * EPA(LayerNorm(x)) -> back to a volume -> conv block(s)
    (batch norm) -> 1x1x1 conv, added to the attention output."""

    def __init__(
        self,
        tokens: int,
        hidden_size: int,
        proj_size: int,
        num_heads: int,
        dropout: float,
        shared_ef: bool,
        conv_blocks: int,
        tied_ef: bool = True,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.gamma = nn.Parameter(1e-6 * torch.ones(hidden_size))
        self.epa_block = EPA(tokens, hidden_size, proj_size, num_heads, dropout, shared_ef, tied_ef)
        self.conv51 = ResBlock(hidden_size, hidden_size, norm="batch")
        self.conv8 = nn.Sequential(nn.Dropout3d(0.1), nn.Conv3d(hidden_size, hidden_size, 1))
        if conv_blocks == 2:
            self.conv52 = ResBlock(hidden_size, hidden_size, norm="batch")
        self.conv_blocks = conv_blocks
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, hidden_size))
        self.residual_add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, D, H, W = x.shape
        tokens = x.reshape(B, C, D * H * W).transpose(1, 2) + self.pos_embed
        attn = tokens + self.gamma * self.epa_block(self.norm(tokens))
        attn_skip = attn.transpose(1, 2).reshape(B, C, D, H, W)
        y = self.conv51(attn_skip)
        if self.conv_blocks == 2:
            y = self.conv52(y)
        return self.residual_add(self.conv8(y), attn_skip)
