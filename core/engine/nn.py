"""Building blocks shared by plugins: initialisation, RMSNorm, RoPE, SwiGLU width, attention
(with the key/value cache of generation)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def trunc_normal_(tensor: Tensor, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Truncated normal at +-2 std, rescaled so the *actual* std equals ``std``."""
    # The std of a standard normal truncated to [-2, 2] is about 0.8796.
    with torch.no_grad():
        nn.init.trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=generator)
        tensor.mul_(std / 0.87962566103423978)
    return tensor


class Linear(nn.Linear):
    """A linear layer (no bias by default) with LeCun truncated-normal init (std 1/sqrt(in))."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)
        trunc_normal_(self.weight, 1.0 / math.sqrt(d_in))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)


def rms_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm without gain, computed in float32 and cast back."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding for x (B,H,T,Dh) with tables (T,Dh) from ``ForwardContext.rope``."""
    dtype = x.dtype
    x = x.float()
    return (x * cos + rotate_half(x) * sin).to(dtype)


def swiglu_width(expansion: float, d_model: int, multiple: int = 256) -> int:
    """Hidden width round(expansion * D * 2/3), rounded up to a multiple of ``multiple``."""
    width = round(expansion * d_model * 2 / 3)
    return -(-width // multiple) * multiple


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def rope_span(x: Tensor, ctx: Any, offset: int = 0) -> Tensor:
    """RoPE on x (..., t, Dh) whose tokens sit at positions ``offset..offset+t`` when the model
    uses RoPE (``ctx.positions``); queries and keys stacked on a leading dim take one call."""
    if ctx is None or ctx.positions != "rope":
        return x
    t = x.shape[-2]
    cos, sin = ctx.rope(offset + t, x.shape[-1], x.device)
    if offset:
        cos, sin = cos[offset:], sin[offset:]
    return apply_rope(x, cos, sin)


def cache_slot(ctx: Any, causal: bool) -> dict[str, Tensor] | None:
    """This call site's slot of ``ctx.cache`` (None without a cache); a non-causal mixer cannot
    decode incrementally."""
    if ctx is None or getattr(ctx, "cache", None) is None:
        return None
    if not causal:
        raise RuntimeError("a non-causal mixer cannot decode incrementally; set causal: true")
    return ctx.cache.slot()


def attend(
    q: Tensor, k: Tensor, v: Tensor, ctx: Any, causal: bool = False, merge_heads: bool = False
) -> Tensor:
    """Scaled dot-product attention of q (B, H, t, Dh) over k, v (B, Hkv, t, Dh) -> (B, H, t,
    Dh), or (B, t, H*Dh) with ``merge_heads``; the one place a mixer computes attention.

    Rotary embeddings go on q and k when the model uses RoPE (``ctx.positions``); H is a
    multiple of Hkv (grouped-query attention: each key/value head serves H/Hkv query heads).
    During generation (``ctx.cache`` set; causal only) q, k, v are the newest t tokens, at
    positions ``ctx.cache.offset..``: their keys and values join those of earlier tokens in
    this call site's cache slot and each query sees the keys up to its own position."""
    b, heads, t, head_dim = q.shape
    slot = cache_slot(ctx, causal)
    offset = ctx.cache.offset if slot is not None else 0
    q, k = rope_span(q, ctx, offset), rope_span(k, ctx, offset)
    if slot is not None:
        k, v = ctx.cache.extend(slot, "k", k), ctx.cache.extend(slot, "v", v)
    if k.shape[1] != heads:
        group = heads // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if offset == 0:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:  # query i sits at offset + i and sees keys 0..offset+i
        pos_q = torch.arange(offset, offset + t, device=q.device)
        mask = torch.arange(k.shape[2], device=q.device)[None, :] <= pos_q[:, None]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if merge_heads:
        return o.transpose(1, 2).reshape(b, t, heads * head_dim)
    return o


def counting_flops() -> bool:
    """True while torch's FlopCounterMode counts the running code (outside compiled regions).

    Layers whose fast path cannot run under the counter (compiled FlexAttention), or whose
    fast path computes padding the count should not include (static MoE capacity), take their
    exact eager path then: a count is of the work a step needs (FLOPs budgets, MFU)."""
    import torch
    from torch.utils import _python_dispatch

    if torch.compiler.is_compiling():  # a count runs compiled code eagerly (force_eager)
        return False
    stack = _python_dispatch._get_current_dispatch_mode_stack()
    return any(type(m).__name__ in ("FlopCounterMode", "_FlopCounterMode") for m in stack)
