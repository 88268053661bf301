"""Multi-head self-attention (non-causal SDPA) with rotary position embeddings."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, ForwardContext, Linear, attend, hookimpl
from torch import Tensor, nn


@attrs.frozen
class AttentionConfig:
    """Multi-head self-attention over all positions (non-causal SDPA), RoPE when enabled.

    ``head_dim`` defaults to d_model / heads."""

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
        o = attend(q, k, v, ctx, self.causal)  # (B, H, T, Dh)
        return self.out(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


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
