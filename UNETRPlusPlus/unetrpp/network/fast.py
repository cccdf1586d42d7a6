"""Inference-only fast path for UNETR++: the same function as the faithful network, computed with
fewer, faster kernels.

`optimize_for_inference(network)` builds a `FastUNETRPP` that reads (never changes) the faithful
network's weights and precomputes derived tensors. What it does, each measured in
benchmarks/network.py (numbers in docs/benchmarks.md):

* channels-last activations: every activation is kept as (B, D, H, W, C). A transformer block's
  token matrix (B, N, C) is then a view, not a copy, and oneDNN's 3D convolutions run faster on
  this layout;
* 3x3x3 convolutions on CPU go straight to oneDNN (`torch.mkldnn_convolution`): PyTorch's own
  heuristic sends batch-1 3D convolutions with small spatial extent (and every 1-channel input)
  to a slow native path;
* eval-mode batch norm folded into the preceding convolution (the ResBlocks inside transformer
  blocks); LayerNorm's affine folded into the qkvv projection; the layer scale gamma folded into
  the output projections;
* 1x1x1 convolutions and the kernel == stride convolutions (stem, downsampling, all transposed
  convolutions) as single matrix products plus one reshaping copy; the transposed convolution's
  reshaping copy is fused with the skip addition;
* EPA attention in token-major layout: q/k L2 normalisation and temperatures folded into small
  matrices instead of normalising the (B, h, d, N) tensors, the channel-attention product folded
  into `out_proj2`, the spatial-attention output written directly in the official (d, h, N)
  order, residual additions done by the matrix products (addmm/baddbmm with beta = 1);
* instance norm (full-resolution blocks) computed with matrix-vector reductions and in-place
  updates.

The result is an eval-only module: no autograd, dropout off, batch norm uses running statistics.
Its state_dict is empty (all derived tensors are non-persistent buffers): save the faithful
network, never this one. `FastOptions` switches each optimisation off, for the benchmark's
per-optimisation gains and for the tests.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import EPA, TransformerBlock
from .blocks import ResBlock
from .model import UNETRPP, UpBlock

log = logging.getLogger(__name__)

LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class FastOptions:
    """Which optimisations `FastUNETRPP` applies (all on by default)."""

    mkldnn_conv: bool = True
    """CPU float32/bfloat16 3x3x3 convolutions through oneDNN, bypassing PyTorch's heuristic."""
    channels_last: bool = True
    """3x3x3 convolutions on the channels-last activations (False: on an NCDHW copy)."""
    fold_batchnorm: bool = True
    """Eval-mode batch norm folded into the preceding convolution."""
    matmul_convs: bool = True
    """1x1x1 and kernel == stride (transposed) convolutions as matrix products."""
    fused_attention: bool = True
    """EPA with folded normalisations/temperatures/projections (False: the faithful EPA module)."""
    inference_mode: bool = False
    """Run under torch.inference_mode (outputs become inference tensors) instead of no_grad."""


# ------------------------------------------------------------------------------------------------
# Kernels on channels-last activations (B, D, H, W, C)


def _use_mkldnn(x: torch.Tensor, opts: FastOptions) -> bool:
    return (
        opts.mkldnn_conv
        and not torch.compiler.is_compiling()  # inductor picks its own convolution kernels
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
    )


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype when autocast is on for x's device (our direct oneDNN call is
    not covered by autocast, so it casts by itself)."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, opts: FastOptions) -> torch.Tensor:
    """3x3x3 convolution, stride 1, padding 1, of channels-last x (B, D, H, W, C); returns
    channels-last (B, D, H, W, O), contiguous."""
    xin = x.permute(0, 4, 1, 2, 3)  # NCDHW view with channels_last_3d strides
    if not opts.channels_last:
        xin = xin.contiguous()
    elif xin.shape[1] == 1:
        # One input channel: both layouts coincide and oneDNN would pick NCDHW for the output
        # (then copied back); strides that say "channels-last" keep the output channels-last.
        B, _, D, H, W = xin.shape
        xin = xin.as_strided(xin.shape, (D * H * W, 1, H * W, W, 1))
        weight = weight.contiguous()
        weight = weight.as_strided(weight.shape, (weight[0].numel(), 1, *weight.stride()[2:]))
    if _use_mkldnn(x, opts):
        dt = _autocast_dtype(x)
        if dt is not None and dt != x.dtype:
            xin = xin.to(dt)
        if weight.dtype != xin.dtype:
            weight = weight.to(xin.dtype)
            bias = None if bias is None else bias.to(xin.dtype)
        y = torch.mkldnn_convolution(xin, weight, bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    else:
        y = F.conv3d(xin, weight, bias, padding=1)
    return y.permute(0, 2, 3, 4, 1).contiguous()


def _mm_tokens(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(..., C) @ (C, O) (+ bias) on the flattened tokens."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if weight_t.dtype != x2.dtype and _autocast_dtype(x) is None:
        weight_t = weight_t.to(x2.dtype)
        bias = None if bias is None else bias.to(x2.dtype)
    y = torch.addmm(bias, x2, weight_t) if bias is not None else torch.mm(x2, weight_t)
    return y.reshape(*shape[:-1], weight_t.shape[1])


def instance_norm_(x: torch.Tensor, eps: float = 1e-5, leaky: bool = False) -> torch.Tensor:
    """In-place instance norm (no affine, biased variance) of channels-last x, optionally
    followed by LeakyReLU. Channel means and centred sums of squares come from BLAS products
    (x is centred first, so the variance does not suffer from cancellation)."""
    B, C = x.shape[0], x.shape[-1]
    x3 = x.view(B, -1, C)
    n = x3.shape[1]
    if x.dtype in (torch.float16, torch.bfloat16):  # statistics in float32
        var, mean = torch.var_mean(x3.float(), dim=1, keepdim=True, correction=0)
        x3.sub_(mean.to(x.dtype)).mul_(torch.rsqrt(var + eps).to(x.dtype))
    else:
        with torch.autocast(x.device.type, enabled=False):
            ones = torch.ones(B, 1, n, dtype=x.dtype, device=x.device)
            mean = torch.bmm(ones, x3) / n  # (B, 1, C)
            x3.sub_(mean)
            gram = torch.bmm(x3.transpose(1, 2), x3)  # (B, C, C), centred
            var = torch.diagonal(gram, dim1=1, dim2=2).unsqueeze(1) / n
        x3.mul_(torch.rsqrt(var + eps))
    if leaky:
        F.leaky_relu_(x3, LEAKY_SLOPE)
    return x


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """GroupNorm of channels-last x (B, D, H, W, C)."""
    B, C = x.shape[0], x.shape[-1]
    xg = x.reshape(B, -1, groups, C // groups)
    acc = torch.promote_types(x.dtype, torch.float32)
    var, mean = torch.var_mean(xg.transpose(1, 2).reshape(B, groups, -1).to(acc), dim=-1, correction=0)
    scale = torch.rsqrt(var + eps).to(x.dtype)  # (B, G)
    scale = scale.repeat_interleave(C // groups, dim=1) * weight  # (B, C)
    shift = bias - mean.to(x.dtype).repeat_interleave(C // groups, dim=1) * scale
    return torch.addcmul(shift.view(B, 1, 1, 1, C), x, scale.view(B, 1, 1, 1, C))


def _patch_weight(conv: nn.Conv3d) -> torch.Tensor:
    """(O, I, kd, kh, kw) -> (kd*kh*kw*I, O) for patches ordered (kd, kh, kw, I)."""
    w = conv.weight.detach()
    return w.permute(2, 3, 4, 1, 0).reshape(-1, w.shape[0]).contiguous()


def patch_conv(x: torch.Tensor, weight_kio: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Convolution with kernel == stride (no padding, no bias) of channels-last x, as one matrix
    product on non-overlapping patches."""
    B, D, H, W, C = x.shape
    kd, kh, kw = kernel
    p = x.reshape(B, D // kd, kd, H // kh, kh, W // kw, kw, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    y = _mm_tokens(p.reshape(B, D // kd, H // kh, W // kw, kd * kh * kw * C), weight_kio, None)
    return y


def transposed_patch_conv_add_(skip: torch.Tensor, x: torch.Tensor, weight_iko: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """skip += ConvTranspose3d(x) for kernel == stride (no bias), both channels-last; the
    scatter of the matrix product's patches is fused with the addition. Returns skip."""
    B, D, H, W, _ = x.shape
    kd, kh, kw = kernel
    O = skip.shape[-1]
    y = _mm_tokens(x, weight_iko, None).view(B, D, H, W, kd, kh, kw, O)
    skip.view(B, D, kd, H, kh, W, kw, O).add_(y.permute(0, 1, 4, 2, 5, 3, 6, 7))
    return skip


def _fold_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = conv.weight.dtype
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    b = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        b = b + conv.bias.detach().double() * scale
    return (w * scale.view(-1, 1, 1, 1, 1)).to(dtype), b.to(dtype)


def _bn_affine(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    dtype = bn.weight.dtype
    return scale.to(dtype), shift.to(dtype)


# ------------------------------------------------------------------------------------------------
# Blocks


class FastResBlock(nn.Module):
    def __init__(self, block: ResBlock, opts: FastOptions) -> None:
        super().__init__()
        self.opts = opts
        self.instance = isinstance(block.norm1, nn.InstanceNorm3d)
        self.has_projection = block.has_projection
        memfmt = torch.channels_last_3d if opts.channels_last else torch.contiguous_format
        pairs = [("1", block.conv1.conv, block.norm1), ("2", block.conv2.conv, block.norm2)]
        for name, conv, norm in pairs:
            if not self.instance and opts.fold_batchnorm:
                w, b = _fold_bn(conv, norm)
            else:
                w, b = conv.weight.detach().clone(), None
                if not self.instance:
                    scale, shift = _bn_affine(norm)
                    self.register_buffer(f"s{name}", scale, persistent=False)
                    self.register_buffer(f"t{name}", shift, persistent=False)
            self.register_buffer(f"w{name}", w.contiguous(memory_format=memfmt), persistent=False)
            self.register_buffer(f"b{name}", b, persistent=False)
        if self.has_projection:  # 1x1x1 conv + norm3
            w3 = block.conv3.conv.weight.detach()
            if self.instance:
                self.register_buffer("w3t", w3.flatten(1).t().contiguous(), persistent=False)
                self.register_buffer("b3", None, persistent=False)
            else:
                w, b = _fold_bn(block.conv3.conv, block.norm3)
                self.register_buffer("w3t", w.flatten(1).t().contiguous(), persistent=False)
                self.register_buffer("b3", b, persistent=False)

    def _norm(self, y: torch.Tensor, name: str, leaky: bool) -> torch.Tensor:
        if self.instance:
            return instance_norm_(y, leaky=leaky)
        if not self.opts.fold_batchnorm:
            y.mul_(getattr(self, f"s{name}")).add_(getattr(self, f"t{name}"))
        if leaky:
            F.leaky_relu_(y, LEAKY_SLOPE)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._norm(conv3x3(x, self.w1, self.b1, self.opts), "1", leaky=True)
        y = self._norm(conv3x3(y, self.w2, self.b2, self.opts), "2", leaky=False)
        if self.has_projection:
            if x.shape[-1] == 1 and self.opts.matmul_convs:  # outer product: a broadcast multiply
                r = x * self.w3t.to(x.dtype).view(-1)
                r = r if self.b3 is None else r.add_(self.b3.to(x.dtype))
            else:
                r = _mm_tokens(x, self.w3t, self.b3)
            if self.instance:
                r = instance_norm_(r)
            y = y.add_(r)
        else:
            y = y.add_(x)
        return F.leaky_relu_(y, LEAKY_SLOPE)


class FastEPA(nn.Module):
    """EPA on token-major qkvv (B, N, 4C) with channel slots reordered to (v_ca, q, k, v_sa), so
    that (q, k) and (k, v_sa) are adjacent column blocks. Returns `tokens + gamma * EPA(...)`."""

    def __init__(self, blk: TransformerBlock) -> None:
        super().__init__()
        epa: EPA = blk.epa_block
        C = blk.norm.normalized_shape[0]
        dtype = blk.gamma.dtype
        h = epa.num_heads
        self.h, self.C, self.eps_ln = h, C, blk.norm.eps
        self.shared_ef = epa.shared_ef
        self.tied = (not epa.shared_ef) and epa.E is epa.F
        # qkvv with LayerNorm's affine folded in, slots reordered to (v_ca, q, k, v_sa).
        wq = epa.qkvv.weight.detach().double().view(4, C, C)  # slots q, k, v_ca, v_sa
        wq = wq[[2, 0, 1, 3]].reshape(4 * C, C)
        ln_w, ln_b = blk.norm.weight.detach().double(), blk.norm.bias.detach().double()
        self.register_buffer("wqkvv_t", (wq * ln_w).t().contiguous().to(dtype), persistent=False)
        self.register_buffer("bqkvv", (wq @ ln_b).to(dtype), persistent=False)
        self.register_buffer("temperature", epa.temperature.detach().reshape(h, 1, 1).clone(), persistent=False)
        self.register_buffer("temperature2", epa.temperature2.detach().reshape(h).clone(), persistent=False)
        gamma = blk.gamma.detach().double()
        if epa.shared_ef:
            ef = epa.EF.detach()
            self.register_buffer("e_t", ef.contiguous(), persistent=False)  # (N, P)
            self.register_buffer("e_b", None, persistent=False)
            self.register_buffer("gamma", gamma.to(dtype), persistent=False)
        else:
            self.register_buffer("e_t", epa.E.weight.detach().t().contiguous(), persistent=False)
            self.register_buffer("e_b", epa.E.bias.detach().clone(), persistent=False)
            if not self.tied:
                self.register_buffer("f_t", epa.F.weight.detach().t().contiguous(), persistent=False)
                self.register_buffer("f_b", epa.F.bias.detach().clone(), persistent=False)
            g1, g2 = gamma[: C // 2], gamma[C // 2 :]
            w1 = epa.out_proj.weight.detach().double()
            w2 = epa.out_proj2.weight.detach().double()
            self.register_buffer("w1_t", (w1.t() * g1).contiguous().to(dtype), persistent=False)
            self.register_buffer("w2_t", (w2.t() * g2).contiguous().to(dtype), persistent=False)
            bias = torch.cat([epa.out_proj.bias.detach().double() * g1, epa.out_proj2.bias.detach().double() * g2])
            self.register_buffer("bias_out", bias.to(dtype), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: tokens + pos_embed, (B, N, C) contiguous. Returns t + gamma * EPA(LayerNorm(t))."""
        B, N, C = t.shape
        h, d = self.h, C // self.h
        u = F.layer_norm(t, (C,), None, None, self.eps_ln)
        x = _mm_tokens(u, self.wqkvv_t, self.bqkvv)  # (B, N, 4C): v_ca, q, k, v_sa
        dt = x.dtype  # the matmul dtype (lower under autocast)
        acc = torch.promote_types(dt, torch.float32)  # small matrices and statistics
        v_ca, qk, q, k, kv, v_sa = (
            x[..., :C], x[..., C : 3 * C], x[..., C : 2 * C], x[..., 2 * C : 3 * C], x[..., 2 * C :], x[..., 3 * C :]
        )
        with torch.autocast(t.device.type, enabled=False):
            # Gram of (q, k) over tokens: q.k^T blocks and the L2 norms along N (F.normalize).
            qk_acc = qk.to(acc)
            gram = torch.bmm(qk_acc.transpose(1, 2), qk_acc)  # (B, 2C, 2C)
        norms = torch.diagonal(gram, dim1=1, dim2=2).sqrt().clamp_min(1e-12)
        qn, kn = norms[:, :C], norms[:, C:]
        # Spatial projections (k before normalisation, as in the official code): (B, C, P).
        if self.shared_ef or self.tied:
            proj = torch.matmul(kv.transpose(1, 2), self.e_t)
            if self.e_b is not None:
                proj = proj + self.e_b
            k_proj, v_proj = proj[:, :C], proj[:, C:]
        else:
            k_proj = torch.matmul(k.transpose(1, 2), self.e_t) + self.e_b
            v_proj = torch.matmul(v_sa.transpose(1, 2), self.f_t) + self.f_b
        P = k_proj.shape[-1]

        # Channel attention per head: softmax(q_n . k_n^T * temperature), (B, h, d, d).
        qk_blocks = torch.diagonal(gram[:, :C, C:].reshape(B, h, d, h, d), dim1=1, dim2=3).permute(0, 3, 1, 2)
        logits_ca = qk_blocks / (qn.view(B, h, d, 1) * kn.view(B, h, 1, d)) * self.temperature.to(acc)
        attn_ca = logits_ca.softmax(dim=-1)
        # x_ca = v_ca @ blockdiag(attn_ca)^T with a (B, C, C) block-diagonal matrix.
        bd = torch.zeros(B, h, d, h, d, dtype=acc, device=t.device)
        torch.diagonal(bd, dim1=1, dim2=3).copy_(attn_ca.permute(0, 2, 3, 1))
        bd_t = bd.reshape(B, C, C).transpose(1, 2)

        # Spatial attention: q_n^T k_proj * temperature2 = q^T (k_proj * temperature2 / |q|).
        scale = self.temperature2.to(acc).repeat_interleave(d) / qn  # (B, C)
        kp = (k_proj.to(acc) * scale.unsqueeze(-1)).to(dt)
        qh = q.reshape(B, N, h, d).permute(0, 2, 1, 3)  # (B, h, N, d) view
        attn_sa = torch.matmul(qh, kp.view(B, h, d, P)).softmax(dim=-1)  # (B, h, N, P)
        # (attn_sa @ v_proj^T) in the official (d, h, N) memory order, read as (B, N, C).
        z = torch.matmul(v_proj.to(dt).view(B, h, d, P), attn_sa.transpose(-1, -2).to(dt))  # (B, h, d, N)
        x_sa = z.permute(0, 2, 1, 3).contiguous().view(B, N, C)

        od = t.dtype
        if self.shared_ef:  # t + gamma * (x_sa + v_ca @ bd^T)
            out = torch.addcmul(t, x_sa.to(od), self.gamma.to(od))
            return out.baddbmm_(v_ca.to(od), (bd_t * self.gamma.to(acc)).to(od))
        # t + gamma * cat(out_proj(x_sa), out_proj2(x_ca)), x_ca folded into out_proj2.
        out = t + self.bias_out.to(od)
        out[..., : C // 2].baddbmm_(x_sa.to(od), self.w1_t.to(od).expand(B, -1, -1))
        m2 = torch.matmul(bd_t, self.w2_t.to(acc)).to(od)  # (B, C, C/2)
        out[..., C // 2 :].baddbmm_(v_ca.to(od), m2)
        return out


class FastTransformerBlock(nn.Module):
    def __init__(self, blk: TransformerBlock, opts: FastOptions) -> None:
        super().__init__()
        self.opts = opts
        self.register_buffer("pos_embed", blk.pos_embed.detach().clone(), persistent=False)
        if opts.fused_attention:
            self.epa = FastEPA(blk)
        else:
            self.epa_ref = blk.epa_block
            self.norm = blk.norm
            self.register_buffer("gamma", blk.gamma.detach().clone(), persistent=False)
        self.convs = nn.ModuleList([FastResBlock(blk.conv51, opts)])
        if blk.conv_blocks == 2:
            self.convs.append(FastResBlock(blk.conv52, opts))
        conv8 = blk.conv8[1]
        self.register_buffer("w8_t", conv8.weight.detach().flatten(1).t().contiguous(), persistent=False)
        self.register_buffer("b8", conv8.bias.detach().clone(), persistent=False)
        self.register_buffer("w8", conv8.weight.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W, C = x.shape
        t = x.view(B, D * H * W, C) + self.pos_embed
        if self.opts.fused_attention:
            attn = self.epa(t)
        else:
            attn = t + self.gamma * self.epa_ref(self.norm(t))
        attn = attn.view(B, D, H, W, C)
        y = attn
        for block in self.convs:
            y = block(y)
        if self.opts.matmul_convs:
            out = torch.addmm(attn.view(-1, C), y.view(-1, C), self.w8_t.to(y.dtype) if _autocast_dtype(y) is None else self.w8_t)
            return out.add_(self.b8).view(B, D, H, W, C)
        y8 = F.conv3d(y.permute(0, 4, 1, 2, 3), self.w8, self.b8).permute(0, 2, 3, 4, 1)
        return attn + y8


class FastDown(nn.Module):
    """Stem / downsampling: kernel == stride conv, then GroupNorm."""

    def __init__(self, seq: nn.Sequential, opts: FastOptions) -> None:
        super().__init__()
        self.opts = opts
        conv: nn.Conv3d = seq[0].conv
        gn: nn.GroupNorm = seq[1]
        self.kernel = tuple(conv.kernel_size)
        self.register_buffer("w_kio", _patch_weight(conv), persistent=False)
        self.register_buffer("w", conv.weight.detach().clone(), persistent=False)
        self.groups, self.eps = gn.num_groups, gn.eps
        self.register_buffer("gn_w", gn.weight.detach().clone(), persistent=False)
        self.register_buffer("gn_b", gn.bias.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.opts.matmul_convs:
            y = patch_conv(x, self.w_kio, self.kernel)
        else:
            y = F.conv3d(x.permute(0, 4, 1, 2, 3), self.w, stride=self.kernel).permute(0, 2, 3, 4, 1)
        return group_norm(y, self.groups, self.gn_w, self.gn_b, self.eps)


class FastUp(nn.Module):
    def __init__(self, up: UpBlock, opts: FastOptions) -> None:
        super().__init__()
        self.opts = opts
        conv: nn.ConvTranspose3d = up.transp_conv.conv
        self.kernel = tuple(conv.kernel_size)
        if tuple(conv.stride) != self.kernel or any(conv.padding):
            raise ValueError("fast path expects transposed convolutions with kernel == stride")
        w = conv.weight.detach()  # (I, O, kd, kh, kw)
        self.register_buffer("w_iko", w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1).contiguous(), persistent=False)
        self.register_buffer("w", w.clone(), persistent=False)
        inner = up.decoder_block[0]
        if isinstance(inner, ResBlock):
            self.blocks = nn.ModuleList([FastResBlock(inner, opts)])
        else:
            self.blocks = nn.ModuleList(FastTransformerBlock(b, opts) for b in inner)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.opts.matmul_convs:
            y = transposed_patch_conv_add_(skip, x, self.w_iko, self.kernel)
        else:
            up = F.conv_transpose3d(x.permute(0, 4, 1, 2, 3), self.w, stride=self.kernel)
            y = skip + up.permute(0, 2, 3, 4, 1)
        for b in self.blocks:
            y = b(y)
        return y


class FastUNETRPP(nn.Module):
    """Eval-only UNETR++ computing the same function as `UNETRPP` (see the module docstring)."""

    def __init__(self, network: UNETRPP, options: FastOptions | None = None) -> None:
        super().__init__()
        opts = options or FastOptions()
        self.opts = opts
        self.config = network.config
        self.deep_supervision = network.deep_supervision
        enc = network.unetr_pp_encoder
        self.down = nn.ModuleList(FastDown(d, opts) for d in enc.downsample_layers)
        self.stages = nn.ModuleList(
            nn.ModuleList(FastTransformerBlock(b, opts) for b in stage) for stage in enc.stages
        )
        self.encoder1 = FastResBlock(network.encoder1, opts)
        self.decoders = nn.ModuleList(
            FastUp(u, opts) for u in (network.decoder5, network.decoder4, network.decoder3, network.decoder2)
        )
        heads = [network.out1] + ([network.out2, network.out3] if network.deep_supervision else [])
        for i, head in enumerate(heads, start=1):
            conv = head.conv.conv
            self.register_buffer(f"head{i}_w", conv.weight.detach().flatten(1).clone(), persistent=False)
            self.register_buffer(f"head{i}_b", conv.bias.detach().clone(), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "FastUNETRPP":
        if mode:
            raise RuntimeError("an optimized UNETR++ is for inference only; train the faithful network")
        return super().train(False)

    def _head(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """1x1x1 conv of channels-last x, returned as a contiguous NCDHW tensor."""
        B, D, H, W, C = x.shape
        w, b = getattr(self, f"head{i}_w"), getattr(self, f"head{i}_b")
        if self.opts.matmul_convs:
            if _autocast_dtype(x) is None:
                w, b = w.to(x.dtype), b.to(x.dtype)
            y = torch.baddbmm(b.view(1, -1, 1), w.expand(B, -1, -1), x.view(B, -1, C).transpose(1, 2))
            return y.view(B, -1, D, H, W)
        y = F.conv3d(x.permute(0, 4, 1, 2, 3), w.view(*w.shape, 1, 1, 1), b)
        return y.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        UNETRPP.check_input(self, x)  # type: ignore[arg-type]
        ctx = torch.inference_mode() if self.opts.inference_mode else torch.no_grad()
        with ctx:
            xc = x.permute(0, 2, 3, 4, 1).contiguous()  # (B, D, H, W, C)
            skips = []
            h = xc
            for down, stage in zip(self.down, self.stages):
                h = down(h)
                for blk in stage:
                    h = blk(h)
                skips.append(h)
            full_res = self.encoder1(xc)
            enc1, enc2, enc3, enc4 = skips
            dec3 = self.decoders[0](enc4, enc3)
            dec2 = self.decoders[1](dec3, enc2)
            dec1 = self.decoders[2](dec2, enc1)
            out = self.decoders[3](dec1, full_res)
            if self.deep_supervision:
                return [self._head(1, out), self._head(2, dec1), self._head(3, dec2)]
            return self._head(1, out)


def optimize_for_inference(network: nn.Module, *, compile: bool = False, options: FastOptions | None = None) -> nn.Module:
    """An eval-only module computing what `network` (a faithful `UNETRPP`) computes, faster.

    The faithful network is left unchanged (its weights are read, not moved). The result lives on
    the network's device and dtype; it works on CPU and CUDA, under autocast too. `compile=True`
    additionally wraps it in `torch.compile` when that is available (it falls back to the eager
    module, with a warning, when compilation cannot be set up); the first calls are then slow.
    Anything that is not a `UNETRPP` is returned unchanged (in eval mode), with a warning.
    """
    if not isinstance(network, UNETRPP):
        log.warning("optimize_for_inference: %s is not a UNETRPP; returned unchanged", type(network).__name__)
        return network.eval()
    fast = FastUNETRPP(network, options)
    if compile:
        return _CompiledOrEager(fast)
    return fast


class _CompiledOrEager(nn.Module):
    """torch.compile of the optimized network that falls back to eager for good when compiling
    or running the compiled graph fails (no compiler, unsupported op): compile stays optional."""

    def __init__(self, fast: FastUNETRPP) -> None:
        super().__init__()
        self.fast = fast
        self.config = fast.config
        self._compiled = None
        try:
            self._compiled = torch.compile(fast, dynamic=False)
        except Exception as exc:  # pragma: no cover - depends on the toolchain
            log.warning("torch.compile unavailable (%s); using the eager optimized network", exc)
        self.train(False)

    def train(self, mode: bool = True) -> "_CompiledOrEager":
        self.fast.train(mode)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        UNETRPP.check_input(self.fast, x)  # type: ignore[arg-type]  # a user error is no compile failure
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as exc:
                log.warning("compiled UNETR++ failed (%s); using the eager optimized network", exc)
                self._compiled = None
        return self.fast(x)


def tune_cpu_allocator(mmap_threshold: int = 1 << 30) -> bool:
    """Opt-in, process-wide: keep large freed blocks in glibc's heap instead of returning them to
    the OS, so that the next activation of the same size does not pay page faults again (on CPU a
    fresh 64 MB tensor costs about as much as the arithmetic on it). For worker processes that do
    nothing but inference; returns False where glibc's mallopt is unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = bool(libc.mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(
        libc.mallopt(m_trim_threshold, 2 * int(mmap_threshold))
    )
    if ok:
        log.info("glibc malloc: mmap/trim thresholds raised to %d bytes", mmap_threshold)
    return ok


__all__ = ["FastOptions", "FastUNETRPP", "optimize_for_inference", "tune_cpu_allocator", "instance_norm_"]
