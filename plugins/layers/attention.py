"""Multi-head self-attention (SDPA, causal or not) with rotary position embeddings, and the
key/value-cache helpers that every causal mixer shares."""

from __future__ import annotations

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, apply_rope, attend, hookimpl
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class AttentionConfig:
    """Multi-head self-attention (SDPA), RoPE when enabled; non-causal unless ``causal: true``.

    With ``causal: true`` position t attends to positions <= t only, and the mixer keeps its
    keys and values in ``ctx.cache`` during generation. ``head_dim`` defaults to d_model / heads.
    """

    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    head_dim: int | None = None
    causal: bool = False


class Attention(nn.Module):
    def __init__(self, d_model: int, heads: int, head_dim: int, causal: bool):
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.qkv = Linear(d_model, 3 * heads * head_dim)
        self.out = Linear(heads * head_dim, d_model)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, _ = h.shape
        qkv = self.qkv(h).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        o = self_attention(q, k, v, ctx, self.causal)  # (B, H, T, Dh)
        return self.out(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


def rope_at(q: Tensor, k: Tensor, ctx: ForwardContext, offset: int) -> tuple[Tensor, Tensor]:
    """RoPE on q, k (B,H,t,Dh) whose tokens sit at positions ``offset..offset+t``."""
    if ctx.positions != "rope":
        return q, k
    t = q.shape[2]
    cos, sin = ctx.rope(offset + t, q.shape[-1], q.device)
    cos, sin = cos[offset:], sin[offset:]
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def extend_cache(ctx: ForwardContext, causal: bool, **new: Tensor) -> tuple[int, dict[str, Tensor]]:
    """(offset, tensors): with no cache, (0, ``new``); with one, ``new`` (B,H,t,.) appended
    along the sequence to this call site's slot, and the position of the first new token."""
    if ctx.cache is None:
        return 0, new
    if not causal:
        raise RuntimeError("a non-causal mixer cannot decode incrementally; set causal: true")
    slot, offset = ctx.cache.slot(), ctx.cache.offset
    for name, value in new.items():
        slot[name] = torch.cat([slot[name], value], dim=2) if name in slot else value
    return offset, {name: slot[name] for name in new}


def self_attention(q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext, causal: bool) -> Tensor:
    """SDPA of q over k, v (B,H,t,Dh), RoPE applied here; during generation the keys and
    values of earlier tokens come from ``ctx.cache`` and ``q`` is the newest ``t`` tokens.
    Without a cache this is :func:`ponderkit.attend`."""
    if ctx is None or ctx.cache is None:
        return attend(q, k, v, ctx, causal)
    offset = ctx.cache.offset
    q, k = rope_at(q, k, ctx, offset)
    offset, kv = extend_cache(ctx, causal, k=k, v=v)
    k, v = kv["k"], kv["v"]
    if offset == 0 or not causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    # query i sits at offset + i and sees keys 0..offset+i
    t, total = q.shape[2], k.shape[2]
    pos_q = torch.arange(offset, offset + t, device=q.device)
    mask = torch.arange(total, device=q.device)[None, :] <= pos_q[:, None]  # (t, total)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def build_attention(cfg: AttentionConfig, ctx: BuildContext) -> Attention:
    head_dim = cfg.head_dim or ctx.d_model // cfg.heads
    return Attention(ctx.d_model, cfg.heads, head_dim, cfg.causal)


def check_attention(cfg: AttentionConfig, env) -> list:
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
    return problems


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "attention", AttentionConfig, build_attention, check=check_attention)
