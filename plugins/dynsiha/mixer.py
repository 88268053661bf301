"""``dynsiha`` (ADR-0001): self-attention whose projections are SparseProtoLinear (SPL) units.

An SPL unit maps D_in -> D_out and masks its own output units per token (seed 004):
comp = x W_mu^T + b_mu; match = x W_p^T / sqrt(D_in); gate = x W_g^T;
M = mas(match - mas(gate)) with mas(z) = relu(z / (max|z| + 1e-9)); y = comp * M.
Q, K, V and O are each an SPL; RoPE rotates the masked q and k; the block adds O to the
residual. ADR-0001 keeps only this mixer (``ffn: none``).
"""

from __future__ import annotations

import math

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, attend, hookimpl, trunc_normal_
from ponderkit.plugins.layers.attention import split_heads
from ponderkit.plugins.routing.spl import mas_normalize
from torch import Tensor, nn
from torch.nn import functional as F


class SparseProtoLinear(nn.Module):
    """A linear map whose output units are switched per token by prototype matching.

    Records the fraction of its output units that are on (M > 0) as the statistic ``stat``."""

    def __init__(self, d_in: int, d_out: int, stat: str = "spl_active_frac"):
        super().__init__()
        self.stat = stat
        std = 1.0 / math.sqrt(d_in)
        self.comp = nn.Parameter(trunc_normal_(torch.empty(d_out, d_in), std))  # W_mu
        self.comp_bias = nn.Parameter(torch.zeros(d_out))  # b_mu
        self.proto = nn.Parameter(trunc_normal_(torch.empty(d_out, d_in), std))  # W_p
        self.gate = nn.Parameter(trunc_normal_(torch.empty(d_out, d_in), std))  # W_g

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        dt = x.dtype
        comp = F.linear(x, self.comp.to(dt), self.comp_bias.to(dt))
        match = F.linear(x, self.proto.to(dt)) / math.sqrt(x.shape[-1])
        mask = mas_normalize(match - mas_normalize(F.linear(x, self.gate.to(dt))))
        if ctx is not None:
            ctx.add_stat(self.stat, (mask > 0).float().mean())
        return comp * mask


@attrs.frozen
class DynSIHAConfig:
    """DynSIHA attention (ADR-0001): Q, K, V, O each a SparseProtoLinear unit; RoPE on masked q, k."""

    #: attention heads; d_model must divide by it
    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))


class DynSIHA(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.q, self.k, self.v, self.o = (SparseProtoLinear(d_model, d_model) for _ in range(4))

    @property
    def qkv(self) -> tuple[SparseProtoLinear, SparseProtoLinear, SparseProtoLinear]:
        return self.q, self.k, self.v

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, d = h.shape
        q, k, v = (split_heads(p(h, ctx), b, t, self.heads, self.head_dim) for p in self.qkv)
        return self.o(attend(q, k, v, ctx, causal=False, merge_heads=True), ctx)


def build_dynsiha(cfg: DynSIHAConfig, ctx: BuildContext) -> DynSIHA:
    return DynSIHA(ctx.d_model, cfg.heads)


def check_dynsiha(cfg: DynSIHAConfig, env) -> list:
    d = env.experiment.model.d_model
    if d % cfg.heads or (env.experiment.model.positions == "rope" and (d // cfg.heads) % 2):
        return [("heads", f"d_model={d} must split into {cfg.heads} heads of even width")]
    return []


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "dynsiha", DynSIHAConfig, build_dynsiha, check=check_dynsiha)
