"""Multi-head self-attention (SDPA, causal or not) with rotary position embeddings, MHA or GQA.

:func:`ponderkit.attend` (RoPE on q and k, the cache during generation, SDPA, heads merged
back with ``merge_heads``) is the one place a mixer computes attention; ``attention``,
``dynsmha``, ``dynsiha`` and ``dynsmlora`` call it with their own projections. With a
static decoding cache (``ponderkit.StaticKVCache``, ``ctx.cache.attends``) the cache computes
the attention of this mixer (and of ``dynsmlora``, through :meth:`Attention.mix`) itself.
"""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, ForwardContext, Linear, attend, hookimpl
from torch import Tensor, nn


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
        cache = getattr(ctx, "cache", None)
        if getattr(cache, "attends", False):  # a static decoding cache (StaticKVCache)
            return cache.attend(q, k, v, ctx, self.causal, merge_heads=True)
        return attend(q, k, v, ctx, self.causal, merge_heads=True)

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
