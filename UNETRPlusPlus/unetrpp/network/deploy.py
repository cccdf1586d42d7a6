"""Export-friendly ("deploy") form of UNETR++: the faithful module tree with every transformer
block computed channel-first.

`deploy_network(network)` deep-copies the faithful `UNETRPP` (the original is never changed) and
swaps each `TransformerBlock` for a `ChannelFirstBlock` that reuses the block's convolution
modules and computes the same function on (B, C, N) tensors instead of the official (B, N, C)
tokens. Traced into ONNX (unetrpp/backends/onnx_export.py) this removes the token transposes
that OpenVINO and ONNX Runtime otherwise execute for every block (NCDHW -> tokens, the qkvv
head split, the two branch outputs, tokens -> NCDHW):

* LayerNorm over C is a normalisation along axis 1; its affine is folded into the qkvv weights;
* the qkvv Linear is a matrix product W (4C, C) @ u (B, C, N); the heads are the free reshape
  (B, 4, h, d, N);
* E/F project the last axis (N -> P) as in the faithful code; q/k L2 normalisation and the
  temperatures act on the small (d, d) and (d, P) matrices, not on the (d, N) tensors;
* the spatial branch keeps the official reshape that mixes heads and tokens
  ((B, h, N, d) -> (B, d, h, N) -> (B, N, C)), then one transpose into (B, C, N);
* out_proj / out_proj2 are matrix products W (C/2, C) @ x (B, C, N), concatenated along C.

Measured per block in OpenVINO 2026.4 (one thread, AMD EPYC AVX2, synapse stage 0: C 32, N 32768):
0.89x the time of the faithful block's graph (transposes 47 -> 1 ms, the matrix products with a
constant left operand cost +23 ms over the fully-connected kernel of the token-major graph);
stages 1 and 2: 0.86x, 0.92x. 1x1 convolutions instead of those products were slower (reorders).

Only the transformer blocks change; convolutions, norms, up/downsampling are the faithful modules
(the ONNX exporter and the runtimes fold batch norm themselves). Eval-only, for tracing.
"""

from __future__ import annotations

import copy as _copy

import torch
from torch import nn

from .attention import EPA, TransformerBlock
from .model import UNETRPP


def _buffer(module: nn.Module, name: str, value: torch.Tensor | None, dtype: torch.dtype) -> None:
    module.register_buffer(name, None if value is None else value.detach().to(dtype).contiguous(), persistent=False)


class ChannelFirstBlock(nn.Module):
    """Computes what `block` (a faithful TransformerBlock in eval mode) computes, channel-first."""

    def __init__(self, block: TransformerBlock) -> None:
        super().__init__()
        epa: EPA = block.epa_block
        norm = block.norm
        dtype = epa.qkvv.weight.dtype
        C = norm.normalized_shape[0]
        h = epa.num_heads
        self.C, self.h, self.d, self.eps = C, h, C // h, float(norm.eps)
        self.shared_ef = epa.shared_ef
        self.tied = (not epa.shared_ef) and epa.E is epa.F
        # qkvv slots reordered to (q, v_ca, k, v_sa): k and v_sa adjacent, so one product projects
        # both when E and F are the same matrix (tied / shared EF). LayerNorm affine folded in.
        w = epa.qkvv.weight.detach().double().view(4, C, C)[[0, 2, 1, 3]].reshape(4 * C, C)
        ln_w, ln_b = norm.weight.detach().double(), norm.bias.detach().double()
        _buffer(self, "w_qkvv", w * ln_w, dtype)  # (4C, C)
        _buffer(self, "b_qkvv", (w @ ln_b).view(4 * C, 1), dtype)
        _buffer(self, "pos", block.pos_embed.detach().transpose(1, 2), dtype)  # (1, C, N)
        _buffer(self, "gamma", block.gamma.detach().view(1, C, 1), dtype)
        _buffer(self, "temperature", epa.temperature.detach().view(1, h, 1, 1), dtype)
        _buffer(self, "temperature2", epa.temperature2.detach().view(1, h, 1, 1), dtype)
        if epa.shared_ef:
            _buffer(self, "e_t", epa.EF, dtype)  # (N, P)
            _buffer(self, "e_b", None, dtype)
        else:
            _buffer(self, "e_t", epa.E.weight.detach().t(), dtype)
            _buffer(self, "e_b", epa.E.bias, dtype)
            if not self.tied:
                _buffer(self, "f_t", epa.F.weight.detach().t(), dtype)
                _buffer(self, "f_b", epa.F.bias, dtype)
            _buffer(self, "w1", epa.out_proj.weight, dtype)  # (C/2, C)
            _buffer(self, "b1", epa.out_proj.bias.detach().view(-1, 1), dtype)
            _buffer(self, "w2", epa.out_proj2.weight, dtype)
            _buffer(self, "b2", epa.out_proj2.bias.detach().view(-1, 1), dtype)
        self.conv51 = block.conv51
        self.conv8 = block.conv8
        self.conv_blocks = block.conv_blocks
        if block.conv_blocks == 2:
            self.conv52 = block.conv52
        self.residual_add = block.residual_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, D, H, W = x.shape
        N = D * H * W
        h, d = self.h, self.d
        t = x.reshape(B, C, N) + self.pos
        mean = t.mean(dim=1, keepdim=True)
        centred = t - mean
        u = centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + self.eps)
        qkvv = (torch.matmul(self.w_qkvv, u) + self.b_qkvv).view(B, 4, h, d, N)
        q, v_ca, k = qkvv[:, 0], qkvv[:, 1], qkvv[:, 2]

        # E/F see k before normalisation (official); (B, h, d, P).
        if self.shared_ef or self.tied:
            proj = torch.matmul(qkvv[:, 2:], self.e_t)
            if self.e_b is not None:
                proj = proj + self.e_b
            k_proj, v_proj = proj[:, 0], proj[:, 1]
        else:
            k_proj = torch.matmul(k, self.e_t) + self.e_b
            v_proj = torch.matmul(qkvv[:, 3], self.f_t) + self.f_b

        # F.normalize(q / k, dim=-1) as scales of the small matrices they enter.
        qn = q.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, h, d, 1)
        kn = k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        attn_ca = torch.matmul(q, k.transpose(-2, -1)) / (qn * kn.transpose(-2, -1)) * self.temperature
        x_ca = torch.matmul(attn_ca.softmax(dim=-1), v_ca).reshape(B, C, N)

        attn_sa = torch.matmul(q.transpose(-2, -1), k_proj * (self.temperature2 / qn)).softmax(dim=-1)  # (B, h, N, P)
        z = torch.matmul(v_proj, attn_sa.transpose(-2, -1))  # (B, h, d, N): (attn_sa @ v_proj^T)^T
        # Official x_sa: z read in (d, h, N) order as (B, N, C); here its transpose (B, C, N). Two
        # transposes of at most 4 dimensions: OpenVINO's kernel for them is several times faster than
        # for the single 5-D permute that would do the same.
        x_sa = z.permute(0, 2, 1, 3).reshape(B, N, C).transpose(1, 2)

        if self.shared_ef:
            epa = x_sa + x_ca
        else:
            epa = torch.cat((torch.matmul(self.w1, x_sa) + self.b1, torch.matmul(self.w2, x_ca) + self.b2), dim=1)
        attn_skip = (t + self.gamma * epa).reshape(B, C, D, H, W)
        y = self.conv51(attn_skip)
        if self.conv_blocks == 2:
            y = self.conv52(y)
        return self.residual_add(self.conv8(y), attn_skip)


def deploy_network(network: UNETRPP, *, copy: bool = True) -> UNETRPP:
    """An eval-mode copy of `network` with every TransformerBlock computed channel-first (see the
    module docstring); same function, same inputs and outputs. `copy=False` transforms `network`
    itself (for a caller that already holds a private copy: one set of weights less in memory)."""
    if not isinstance(network, UNETRPP):
        raise TypeError(f"deploy_network needs a faithful UNETRPP network, not {type(network).__name__}")
    tree = (_copy.deepcopy(network) if copy else network).eval()
    for parent in list(tree.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TransformerBlock):
                setattr(parent, name, ChannelFirstBlock(child))
    return tree


__all__ = ["ChannelFirstBlock", "deploy_network"]
