"""Multi-head self-attention (SDPA, causal or not) with rotary position embeddings, MHA or GQA,
and the key/value-cache helpers that every causal mixer shares.

:func:`attend` (RoPE on q and k, the cache during generation, SDPA, heads merged back) is the
one place a mixer computes attention; ``attention``, ``dynsmha``, ``dynsiha`` and ``dynsmlora``
call it with their own projections. Without a cache it is ``ponderkit.attend`` with the heads
merged.
"""

from __future__ import annotations

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, apply_rope, hookimpl
from ponderkit import attend as attend_heads
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class AttentionConfig:
    """Multi-head self-attention (SDPA), RoPE when enabled; non-causal unless ``causal: true``.

    With ``causal: true`` position t attends to positions <= t only, and the mixer keeps its
    keys and values in ``ctx.cache`` during generation. ``head_dim`` defaults to d_model / heads. ``kv_heads`` (default: ``heads``, plain MHA)
    makes it grouped-query attention: each of the ``kv_heads`` key/value heads serves
    heads / kv_heads query heads."""

    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    head_dim: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    causal: bool = False
    kv_heads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


def split_heads(z: Tensor, b: int, t: int, heads: int, head_dim: int) -> Tensor:
    """(B*T or B, T, heads*head_dim) -> (B, heads, T, head_dim)."""
    return z.reshape(b, t, heads, head_dim).transpose(1, 2)


def attend(q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext | None, causal: bool) -> Tensor:
    """Attention of q (B, H, T, Dh) over k, v (B, Hkv, T, Dh), H a multiple of Hkv, with the
    heads merged: (B, T, H*Dh). RoPE and the generation cache as :func:`self_attention`."""
    b, heads, t, head_dim = q.shape
    o = self_attention(q, k, v, ctx, causal)  # (B, H, T, Dh)
    return o.transpose(1, 2).reshape(b, t, heads * head_dim)


def rope_span(x: Tensor, ctx: ForwardContext, offset: int) -> Tensor:
    """RoPE on x (..., t, Dh) whose tokens sit at positions ``offset..offset+t``; queries and
    keys stacked on a leading dim take one call."""
    if ctx.positions != "rope":
        return x
    t = x.shape[-2]
    cos, sin = ctx.rope(offset + t, x.shape[-1], x.device)
    if offset:
        cos, sin = cos[offset:], sin[offset:]
    return apply_rope(x, cos, sin)


def rope_at(q: Tensor, k: Tensor, ctx: ForwardContext, offset: int) -> tuple[Tensor, Tensor]:
    """RoPE on q, k (B,H,t,Dh) whose tokens sit at positions ``offset..offset+t``."""
    if ctx.positions != "rope":
        return q, k
    return rope_span(q, ctx, offset), rope_span(k, ctx, offset)


def cache_slot(ctx: ForwardContext, causal: bool) -> dict[str, Tensor] | None:
    """This call site's slot of ``ctx.cache`` (None without a cache); a non-causal mixer cannot
    decode incrementally."""
    if ctx.cache is None:
        return None
    if not causal:
        raise RuntimeError("a non-causal mixer cannot decode incrementally; set causal: true")
    return ctx.cache.slot()


def extend_cache(ctx: ForwardContext, causal: bool, **new: Tensor) -> tuple[int, dict[str, Tensor]]:
    """(offset, tensors): with no cache, (0, ``new``); with one, ``new`` (B,H,t,.) appended
    along the sequence to this call site's slot, and the position of the first new token."""
    slot = cache_slot(ctx, causal)
    if slot is None:
        return 0, new
    offset = ctx.cache.offset
    return offset, {name: ctx.cache.extend(slot, name, value) for name, value in new.items()}


def self_attention(q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext, causal: bool) -> Tensor:
    """SDPA of q over k, v (B,H,t,Dh), RoPE applied here; during generation the keys and
    values of earlier tokens come from ``ctx.cache`` and ``q`` is the newest ``t`` tokens.
    Without a cache this is :func:`ponderkit.attend`."""
    if ctx is None or ctx.cache is None:
        return attend_heads(q, k, v, ctx, causal)
    offset = ctx.cache.offset
    q, k = rope_at(q, k, ctx, offset)
    offset, kv = extend_cache(ctx, causal, k=k, v=v)
    k, v = kv["k"], kv["v"]
    if k.shape[1] != q.shape[1]:  # GQA: each key/value head serves a group of query heads
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if offset == 0 or not causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # query i sits at offset + i and sees keys 0..offset+i
    t, total = q.shape[2], k.shape[2]
    pos_q = torch.arange(offset, offset + t, device=q.device)
    mask = torch.arange(total, device=q.device)[None, :] <= pos_q[:, None]  # (t, total)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    def __init__(
        self, d_model: int, heads: int, head_dim: int, causal: bool, kv_heads: int | None = None
    ):
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.kv_heads = kv_heads or heads
        #: output widths of q, k and v inside the fused projection
        self.widths = (heads * head_dim, self.kv_heads * head_dim, self.kv_heads * head_dim)
        self.qkv = Linear(d_model, sum(self.widths))
        self.out = Linear(heads * head_dim, d_model)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The q, k, v projections of ``h`` (..., D), each (..., width)."""
        return self.qkv(h).split(self.widths, dim=-1)

    def mix(self, q: Tensor, k: Tensor, v: Tensor, b: int, t: int, ctx) -> Tensor:
        """Projections (B, T, width) or (B*T, width) -> attention output (B, T, H*Dh)."""
        q = split_heads(q, b, t, self.heads, self.head_dim)
        k = split_heads(k, b, t, self.kv_heads, self.head_dim)
        v = split_heads(v, b, t, self.kv_heads, self.head_dim)
        return attend(q, k, v, ctx, self.causal)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, _ = h.shape
        return self.out(self.mix(*self.project(h), b, t, ctx))


def build_attention(cfg: AttentionConfig, ctx: BuildContext) -> Attention:
    head_dim = cfg.head_dim or ctx.d_model // cfg.heads
    return Attention(ctx.d_model, cfg.heads, head_dim, cfg.causal, cfg.kv_heads)


def check_attention(cfg, env) -> list:
    """Head-shape checks shared by the attention mixers: heads split d_model (or head_dim is
    set), RoPE needs an even head width, query heads group evenly over ``kv_heads``."""
    d = env.experiment.model.d_model
    problems = []
    if cfg.head_dim is None and d % cfg.heads:
        problems.append(
            (
                "heads",
                f"d_model={d} is not divisible by heads={cfg.heads}; change heads or set head_dim",
            )
        )
    head_dim = cfg.head_dim or d // cfg.heads
    if env.experiment.model.positions == "rope" and head_dim % 2:
        problems.append(("head_dim", f"RoPE needs an even head dimension, got {head_dim}"))
    kv_heads = getattr(cfg, "kv_heads", None)
    if kv_heads is not None and cfg.heads % kv_heads:
        problems.append(
            ("kv_heads", f"heads={cfg.heads} must be a multiple of kv_heads={kv_heads} (GQA)")
        )
    return problems


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "attention", AttentionConfig, build_attention, check=check_attention)
