"""Inference-only fast path for UNETR++: the faithful module tree, transformed.

`optimize_for_inference(network)` deep-copies the faithful `UNETRPP` (the original is never
changed) and applies transformations to that one tree; the blocks' `forward` methods, i.e. the
architecture, are the faithful ones (network/model.py, attention.py, blocks.py), so an
architectural change is made once. What the transformations do, each measured in
benchmarks/network.py (numbers in docs/benchmarks.md):

* weights become constants: parameters turn into non-persistent buffers (no autograd; the
  module's state_dict is empty: save the faithful network, never this one);
* channels-last activations (`channels_last`): every activation is an NCDHW tensor with
  channels-last-3d strides, so a transformer block's token matrix (B, N, C) is a view, not a
  copy, and oneDNN's 3D convolutions run faster on this layout;
* 3x3x3 convolutions on CPU straight to oneDNN (`mkldnn_conv`, `Conv3x3`): PyTorch's own
  heuristic sends batch-1 3D convolutions with small spatial extent (and every 1-channel input)
  to a slow native path;
* eval-mode batch norm folded into the preceding convolution (`fold_batchnorm`; the norm
  becomes an identity);
* 1x1x1 convolutions and the kernel == stride convolutions (stem, downsampling, all transposed
  convolutions) as single matrix products on the channels-last tokens (`matmul_convs`:
  `PointwiseConv`, `PatchConv`, `PatchConvTranspose`); instance and group norm on channels-last
  tensors (`InstanceNormCL` in place, with BLAS reductions; `GroupNormCL`); LeakyReLU in place;
* EPA in token-major layout (`fused_attention`, `FusedEPA`): LayerNorm's affine folded into the
  qkvv projection, q/k L2 normalisation and temperatures folded into small matrices instead of
  normalising the (B, h, d, N) tensors, the channel-attention product folded into `out_proj2`,
  the spatial-attention output written directly in the official (d, h, N) order.

The result is eval-only: no autograd, dropout off, batch norm with running statistics.
`FastOptions` switches each transformation off, for the benchmark's per-optimisation gains and
for the tests.
"""

from __future__ import annotations


import copy
import functools
import ctypes
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import EPA, TransformerBlock
from .blocks import ConvLayer, OutBlock, ResBlock, ResidualAdd
from .model import UNETRPP

log = logging.getLogger(__name__)

LEAKY_SLOPE = 0.01
CL = torch.channels_last_3d


@dataclass(frozen=True)
class FastOptions:
    """Which transformations `FastUNETRPP` applies (all on by default)."""

    mkldnn_conv: bool = True
    """CPU float32/bfloat16 3x3x3 convolutions through oneDNN, bypassing PyTorch's heuristic."""
    channels_last: bool = True
    """Activations in channels-last-3d memory format (False: contiguous NCDHW)."""
    fold_batchnorm: bool = True
    """Eval-mode batch norm folded into the preceding convolution."""
    matmul_convs: bool = True
    """1x1x1 and kernel == stride (transposed) convolutions as matrix products."""
    fused_attention: bool = True
    """EPA with folded normalisations/temperatures/projections (False: the faithful EPA module)."""
    sdpa: bool = False
    """Spatial attention through torch's fused scaled_dot_product_attention (the (N, P) attention
    matrix is never stored), when `fused_attention` is on. Off by default: 0.91x on the 2-core
    development CPU (same process, synapse); benchmarks/gpu.py measures it on CUDA."""
    inference_mode: bool = False
    """Run under torch.inference_mode (outputs become inference tensors) instead of no_grad."""


# ------------------------------------------------------------------------------------------------
# Kernels. Activations are NCDHW; `_tokens(x)` is the (B, D, H, W, C) view, contiguous when x is
# channels-last; `_ncdhw(y)` turns a (B, D, H, W, C) result back into an NCDHW view.


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 4, 1)


def _ncdhw(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 4, 1, 2, 3)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and _tokens(x).is_contiguous()


def _use_mkldnn(x: torch.Tensor, opts: FastOptions) -> bool:
    return (
        opts.mkldnn_conv
        and not torch.compiler.is_compiling()  # inductor picks its own convolution kernels
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
    )


@functools.cache
def _onednn_has(dtype: torch.dtype) -> bool:
    """Whether this processor has oneDNN's convolution kernels for `dtype`. float32 everywhere;
    bfloat16 needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT and float16 AVX-512 FP16 or AVX-NE-CONVERT
    ("mkldnn_convolution: bf16 path needs the cpu support ..." on an AVX2-only AMD EPYC). Where they
    are missing, F.conv3d computes the same convolution under autocast. Probed once per dtype."""
    if dtype == torch.float32:
        return True
    try:
        one = torch.ones(1, 1, 1, 1, 1, dtype=dtype)
        torch.mkldnn_convolution(one, one, None, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
        return True
    except RuntimeError:
        return False


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype when autocast is on for x's device (our direct oneDNN call is
    not covered by autocast, so it casts by itself)."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, opts: FastOptions) -> torch.Tensor:
    """3x3x3 convolution, stride 1, padding 1, of NCDHW x; returns NCDHW, channels-last when
    `opts.channels_last` (contiguous otherwise)."""
    xin = x.contiguous(memory_format=CL) if opts.channels_last else x.contiguous()
    if opts.channels_last and xin.shape[1] == 1:
        # One input channel: both layouts coincide and oneDNN would pick NCDHW for the output
        # (then copied back); strides that say "channels-last" keep the output channels-last.
        B, _, D, H, W = xin.shape
        xin = xin.as_strided(xin.shape, (D * H * W, 1, H * W, W, 1))
        weight = weight.contiguous()
        weight = weight.as_strided(weight.shape, (weight[0].numel(), 1, *weight.stride()[2:]))
    dt = _autocast_dtype(x)
    if _use_mkldnn(x, opts) and _onednn_has(dt or x.dtype):
        if dt is not None and dt != x.dtype:
            xin = xin.to(dt)
        if weight.dtype != xin.dtype:
            weight = weight.to(xin.dtype)
            bias = None if bias is None else bias.to(xin.dtype)
        y = torch.mkldnn_convolution(xin, weight, bias, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1)
    else:
        y = F.conv3d(xin, weight, bias, padding=1)
    return y.contiguous(memory_format=CL) if opts.channels_last else y.contiguous()


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


def transposed_patch_conv(x: torch.Tensor, weight_iko: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """ConvTranspose3d for kernel == stride (no bias) of token-layout x (B, D, H, W, C): one
    matrix product, then one scatter of its patches; returns (B, D*kd, H*kh, W*kw, O), contiguous."""
    B, D, H, W, _ = x.shape
    kd, kh, kw = kernel
    O = weight_iko.shape[1] // (kd * kh * kw)
    y = _mm_tokens(x, weight_iko, None).view(B, D, H, W, kd, kh, kw, O)
    return y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, D * kd, H * kh, W * kw, O)



# ------------------------------------------------------------------------------------------------
# Replacement modules: each computes what the faithful module it replaces computes.


def _const(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


class Conv3x3(nn.Module):
    """Replaces a 3x3x3, stride 1, padding 1 `nn.Conv3d` (optionally with a folded batch norm)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, opts: FastOptions) -> None:
        super().__init__()
        self.opts = opts
        memfmt = CL if opts.channels_last else torch.contiguous_format
        self.register_buffer("weight", weight.detach().contiguous(memory_format=memfmt), persistent=False)
        self.register_buffer("bias", _const(bias), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3x3(x, self.weight, self.bias, self.opts)


class PointwiseConv(nn.Module):
    """Replaces a 1x1x1 `nn.Conv3d`: one matrix product on the tokens. `contiguous_output`
    (segmentation heads) returns a contiguous NCDHW tensor, as the faithful head does."""

    def __init__(self, conv: nn.Conv3d, contiguous_output: bool = False) -> None:
        super().__init__()
        w = conv.weight.detach().flatten(1)  # (O, I)
        self.contiguous_output = contiguous_output
        self.register_buffer("w", w.clone(), persistent=False)
        self.register_buffer("w_t", w.t().contiguous(), persistent=False)
        self.register_buffer("b", _const(conv.bias), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, D, H, W = x.shape
        if self.contiguous_output:  # (O, C) @ (C, N) per batch item, written NCDHW
            w, b = self.w, self.b
            if _autocast_dtype(x) is None:
                w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
            t = _tokens(x).reshape(B, -1, C).transpose(1, 2)
            y = torch.bmm(w.expand(B, -1, -1), t) if b is None else torch.baddbmm(b.view(1, -1, 1), w.expand(B, -1, -1), t)
            return y.view(B, -1, D, H, W)
        if C == 1:  # outer product: a broadcast multiply
            y = _tokens(x) * self.w_t.to(x.dtype).view(-1)
            return _ncdhw(y if self.b is None else y.add_(self.b.to(x.dtype)))
        return _ncdhw(_mm_tokens(_tokens(x), self.w_t, self.b))


class PatchConv(nn.Module):
    """Replaces a kernel == stride `nn.Conv3d` without bias (stem, downsampling)."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.kernel = tuple(conv.kernel_size)
        self.register_buffer("w_kio", _patch_weight(conv), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ncdhw(patch_conv(_tokens(x), self.w_kio, self.kernel))


class PatchConvTranspose(nn.Module):
    """Replaces a kernel == stride `nn.ConvTranspose3d` without bias (all upsamplings)."""

    def __init__(self, conv: nn.ConvTranspose3d) -> None:
        super().__init__()
        self.kernel = tuple(conv.kernel_size)
        w = conv.weight.detach()  # (I, O, kd, kh, kw)
        self.register_buffer("w_iko", w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ncdhw(transposed_patch_conv(_tokens(x), self.w_iko, self.kernel))


class InstanceNormCL(nn.Module):
    """Replaces MONAI-style `nn.InstanceNorm3d` (no affine): in place on a channels-last tensor."""

    def __init__(self, norm: nn.InstanceNorm3d) -> None:
        super().__init__()
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_channels_last(x):
            return F.instance_norm(x, eps=self.eps)
        instance_norm_(_tokens(x), self.eps)
        return x


class GroupNormCL(nn.Module):
    """Replaces `nn.GroupNorm` on channels-last activations."""

    def __init__(self, gn: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = gn.num_groups, gn.eps
        self.register_buffer("weight", gn.weight.detach().clone(), persistent=False)
        self.register_buffer("bias", gn.bias.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ncdhw(group_norm(_tokens(x), self.groups, self.weight, self.bias, self.eps))


class FusedEPA(nn.Module):
    """Replaces `EPA` (and the affine of the LayerNorm before it, which becomes affine-free) with
    a token-major computation; qkvv channel slots reordered to (v_ca, q, k, v_sa), so that (q, k)
    and (k, v_sa) are adjacent column blocks."""

    def __init__(self, epa: EPA, norm: nn.LayerNorm, sdpa: bool = False) -> None:
        super().__init__()
        self.sdpa = sdpa
        C = norm.normalized_shape[0]
        dtype = epa.qkvv.weight.dtype
        h = epa.num_heads
        self.h, self.C = h, C
        self.shared_ef = epa.shared_ef
        self.tied = (not epa.shared_ef) and epa.E is epa.F
        wq = epa.qkvv.weight.detach().double().view(4, C, C)  # slots q, k, v_ca, v_sa
        wq = wq[[2, 0, 1, 3]].reshape(4 * C, C)
        ln_w, ln_b = norm.weight.detach().double(), norm.bias.detach().double()
        self.register_buffer("wqkvv_t", (wq * ln_w).t().contiguous().to(dtype), persistent=False)
        self.register_buffer("bqkvv", (wq @ ln_b).to(dtype), persistent=False)
        self.register_buffer("temperature", epa.temperature.detach().reshape(h, 1, 1).clone(), persistent=False)
        self.register_buffer("temperature2", epa.temperature2.detach().reshape(h).clone(), persistent=False)
        if epa.shared_ef:
            self.register_buffer("e_t", epa.EF.detach().contiguous(), persistent=False)  # (N, P)
            self.register_buffer("e_b", None, persistent=False)
        else:
            self.register_buffer("e_t", epa.E.weight.detach().t().contiguous(), persistent=False)
            self.register_buffer("e_b", epa.E.bias.detach().clone(), persistent=False)
            if not self.tied:
                self.register_buffer("f_t", epa.F.weight.detach().t().contiguous(), persistent=False)
                self.register_buffer("f_b", epa.F.bias.detach().clone(), persistent=False)
            self.register_buffer("w1_t", epa.out_proj.weight.detach().t().contiguous(), persistent=False)
            self.register_buffer("w2_t", epa.out_proj2.weight.detach().t().contiguous(), persistent=False)
            bias = torch.cat([epa.out_proj.bias.detach(), epa.out_proj2.bias.detach()])
            self.register_buffer("bias_out", bias, persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: LayerNorm(tokens) without affine, (B, N, C). Returns EPA(LayerNorm(tokens)), (B, N, C)."""
        B, N, C = u.shape
        h, d = self.h, C // self.h
        x = _mm_tokens(u, self.wqkvv_t, self.bqkvv)  # (B, N, 4C): v_ca, q, k, v_sa
        dt = x.dtype  # the matmul dtype (lower under autocast)
        acc = torch.promote_types(dt, torch.float32)  # small matrices and statistics
        v_ca, qk, q, k, kv, v_sa = (
            x[..., :C], x[..., C : 3 * C], x[..., C : 2 * C], x[..., 2 * C : 3 * C], x[..., 2 * C :], x[..., 3 * C :]
        )
        with torch.autocast(u.device.type, enabled=False):
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
        bd = torch.zeros(B, h, d, h, d, dtype=acc, device=u.device)
        torch.diagonal(bd, dim1=1, dim2=3).copy_(attn_ca.permute(0, 2, 3, 1))
        bd_t = bd.reshape(B, C, C).transpose(1, 2)

        # Spatial attention: q_n^T k_proj * temperature2 = q^T (k_proj * temperature2 / |q|).
        scale = self.temperature2.to(acc).repeat_interleave(d) / qn  # (B, C)
        kp = (k_proj.to(acc) * scale.unsqueeze(-1)).to(dt)
        qh = q.reshape(B, N, h, d).permute(0, 2, 1, 3)  # (B, h, N, d) view
        if self.sdpa:  # softmax(qh kp) v_proj^T without storing the (N, P) matrix: (B, h, N, d)
            o = F.scaled_dot_product_attention(qh, kp.view(B, h, d, P).transpose(-1, -2),
                                               v_proj.to(dt).view(B, h, d, P).transpose(-1, -2), scale=1.0)
            # in the official (d, h, N) memory order, read as (B, N, C)
            x_sa = o.permute(0, 3, 1, 2).contiguous().view(B, N, C)
        else:
            attn_sa = torch.matmul(qh, kp.view(B, h, d, P)).softmax(dim=-1)  # (B, h, N, P)
            # (attn_sa @ v_proj^T) in the official (d, h, N) memory order, read as (B, N, C).
            z = torch.matmul(v_proj.to(dt).view(B, h, d, P), attn_sa.transpose(-1, -2).to(dt))  # (B, h, d, N)
            x_sa = z.permute(0, 2, 1, 3).contiguous().view(B, N, C)

        od = u.dtype
        if self.shared_ef:  # x_sa + v_ca @ bd^T
            return torch.baddbmm(x_sa.to(od), v_ca.to(od), bd_t.to(od))
        # cat(out_proj(x_sa), out_proj2(x_ca)), x_ca = v_ca @ bd^T folded into out_proj2.
        out = torch.empty((B, N, C), dtype=od, device=u.device)
        out.copy_(self.bias_out)  # a fresh tensor (an expanded view could alias the buffer)
        out[..., : C // 2].baddbmm_(x_sa.to(od), self.w1_t.to(od).expand(B, -1, -1))
        m2 = torch.matmul(bd_t, self.w2_t.to(acc)).to(od)  # (B, C, C/2)
        out[..., C // 2 :].baddbmm_(v_ca.to(od), m2)
        return out


# ------------------------------------------------------------------------------------------------
# Transformations of the module tree


def _freeze(tree: nn.Module) -> None:
    """Parameters become constant, non-persistent buffers (tied ones stay tied)."""
    for module in tree.modules():
        for name, param in list(module._parameters.items()):
            del module._parameters[name]
            module.register_buffer(name, None if param is None else param.detach(), persistent=False)
        module._non_persistent_buffers_set.update(module._buffers)


def _fold_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = conv.weight.dtype
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    b = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        b = b + conv.bias.detach().double() * scale
    return (w * scale.view(-1, 1, 1, 1, 1)).to(dtype), b.to(dtype)


def _transform_resblock(block: ResBlock, opts: FastOptions) -> None:
    block.lrelu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)  # every input of it is a fresh tensor
    for conv_name, norm_name in (("conv1", "norm1"), ("conv2", "norm2")):
        layer: ConvLayer = getattr(block, conv_name)
        norm = getattr(block, norm_name)
        if isinstance(norm, nn.BatchNorm3d) and opts.fold_batchnorm:
            w, b = _fold_bn(layer.conv, norm)
            setattr(block, norm_name, nn.Identity())
        else:
            w, b = layer.conv.weight, None
        layer.conv = Conv3x3(w, b, opts)
    if block.has_projection:
        layer, norm = block.conv3, block.norm3
        if isinstance(norm, nn.BatchNorm3d) and opts.fold_batchnorm:
            w, b = _fold_bn(layer.conv, norm)
            conv = nn.Conv3d(w.shape[1], w.shape[0], 1).to(w)
            conv.weight.data, conv.bias.data = w, b
            layer.conv, block.norm3 = conv, nn.Identity()
        if opts.matmul_convs:
            layer.conv = PointwiseConv(layer.conv)
    for norm_name in ("norm1", "norm2", "norm3"):
        norm = getattr(block, norm_name, None)
        if isinstance(norm, nn.InstanceNorm3d) and not norm.affine and not norm.track_running_stats:
            setattr(block, norm_name, InstanceNormCL(norm))


def _transform(tree: UNETRPP, opts: FastOptions) -> None:
    """Apply the transformations that `opts` selects to `tree` (a copy of the faithful network)."""
    for module in list(tree.modules()):
        if isinstance(module, ResBlock):
            _transform_resblock(module, opts)
        elif isinstance(module, TransformerBlock):
            if opts.fused_attention:
                module.epa_block = FusedEPA(module.epa_block, module.norm, sdpa=opts.sdpa)
                module.norm = nn.LayerNorm(module.norm.normalized_shape, eps=module.norm.eps, elementwise_affine=False)
            if opts.matmul_convs:
                module.conv8[1] = PointwiseConv(module.conv8[1])
    enc = tree.unetr_pp_encoder
    for seq in enc.downsample_layers:  # kernel == stride conv, then GroupNorm
        if opts.matmul_convs:
            seq[0].conv = PatchConv(seq[0].conv)
        if opts.channels_last:
            seq[1] = GroupNormCL(seq[1])
    for up in (tree.decoder5, tree.decoder4, tree.decoder3, tree.decoder2):
        conv = up.transp_conv.conv
        if tuple(conv.stride) != tuple(conv.kernel_size) or any(conv.padding):
            raise ValueError("fast path expects transposed convolutions with kernel == stride")
        if opts.matmul_convs:
            up.transp_conv.conv = PatchConvTranspose(conv)
    if opts.matmul_convs:
        for head in (m for m in tree.modules() if isinstance(m, OutBlock)):
            head.conv.conv = PointwiseConv(head.conv.conv, contiguous_output=True)
    for add in (m for m in tree.modules() if isinstance(m, ResidualAdd)):
        add.in_place = True  # sums reuse their fresh operand: nobody observes this copy's activations
    _freeze(tree)  # modules created above (e.g. a conv holding folded weights) hold constants too


class FastUNETRPP(nn.Module):
    """Eval-only UNETR++: a transformed copy (`.network`) of a faithful `UNETRPP`, computing the
    same function (see the module docstring)."""

    def __init__(self, network: UNETRPP, options: FastOptions | None = None) -> None:
        super().__init__()
        opts = options or FastOptions()
        self.opts = opts
        self.config = network.config
        self.deep_supervision = network.deep_supervision
        tree = copy.deepcopy(network)
        _freeze(tree)
        tree.eval()
        _transform(tree, opts)
        self.network = tree
        self.eval()

    def train(self, mode: bool = True) -> "FastUNETRPP":
        if mode:
            raise RuntimeError("an optimized UNETR++ is for inference only; train the faithful network")
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.network.check_input(x)
        ctx = torch.inference_mode() if self.opts.inference_mode else torch.no_grad()
        with ctx:
            if self.opts.channels_last:
                x = x.contiguous(memory_format=CL)
            return self.network(x)


def optimize_for_inference(network: nn.Module, *, compile: bool = False, options: FastOptions | None = None) -> nn.Module:
    """An eval-only module computing what `network` (a faithful `UNETRPP`) computes, faster.

    The faithful network is left unchanged (it is copied, then the copy is transformed). The
    result lives on the network's device and dtype; it works on CPU and CUDA, under autocast too.
    `compile=True` additionally wraps it in `torch.compile` when that is available (it falls back
    to the eager module, with a warning, when compilation cannot be set up); the first calls are
    then slow. Anything that is not a `UNETRPP` is returned unchanged (in eval mode), with a warning.
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
        self.fast.network.check_input(x)  # a user error is no compile failure
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
