"""``dynsmha``: dynamic sparse multi-head attention over a routed library of expert heads."""

from __future__ import annotations

from typing import Literal

import attrs
from ponderkit import BuildContext, ForwardContext, Spec, attend, component, hookimpl
from ponderkit.plugins.dynmoe.dispatch import (
    DispatchMode,
    capacity_for,
    combine,
    gather,
    grouped_linear,
    plan_dispatch,
)
from ponderkit.plugins.dynmoe.experts import expert_weight, library_weights, reinit_experts
from ponderkit.plugins.layers.attention import check_attention, split_heads
from torch import Tensor, nn


@attrs.frozen
class DynSMHAConfig:
    """Dynamic sparse multi-head attention: E expert head sets routed per token, then SDPA.

    Each expert owns q/k/v projections D -> heads * head_dim and an output projection back;
    a token's q, k, v and output projections are the router-weighted sums of its active
    experts' (sparse dispatch: only active experts are computed). Attention then runs per head
    (non-causal unless ``causal``; RoPE when the model uses it). ``head_dim`` defaults to
    d_model / heads. A token with no active expert gets q = k = v = 0 and output 0.

    ``dispatch``: as ``dynmoe``'s: ``exact`` (pair buffers sized per batch, one host sync per
    call), ``static`` (sized for every pair the router can make: no sync, static shapes, more
    memory), ``auto`` (the default) static on CUDA and exact elsewhere."""

    #: expert heads in the library (each with its own q/k/v/o projections)
    experts: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    #: attention heads each token's routed projection is split into
    heads: int = attrs.field(default=4, validator=attrs.validators.gt(0))
    head_dim: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    #: router choosing each token's expert heads
    router: Spec = component("router", default="cosine_threshold")
    causal: bool = False
    #: auto: one grouped GEMM over the experts where supported (CUDA, bf16), else a loop; loop: always the loop
    grouped_gemm: Literal["auto", "loop"] = "auto"
    dispatch: DispatchMode = "auto"
    #: ``global``: every dynsmha of the model with the same shape shares one library of expert
    #: head projections (ADR-0005); each keeps its own router. ``shared``: the library is also
    #: the FFN's (a ``library: shared`` dynmoe of the same E and hidden = heads * head_dim
    #: draws its SwiGLU experts from these head sets; ADR-0005 POS-001)
    library: Literal["local", "global", "shared"] = "local"


class DynSMHA(nn.Module):
    def __init__(self, router: nn.Module, cfg: DynSMHAConfig, d_model: int, head_dim: int):
        super().__init__()
        self.router = router
        self.heads, self.head_dim, self.causal = cfg.heads, head_dim, cfg.causal
        self.mode, self.dispatch = cfg.grouped_gemm, cfg.dispatch
        width = cfg.heads * head_dim
        self.qkv = expert_weight(cfg.experts, d_model, 3 * width)  # (E, D, 3*H*Dh)
        self.out = expert_weight(cfg.experts, width, d_model)  # (E, H*Dh, D)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, d = h.shape
        x = h.reshape(b * t, d)
        routing = self.router(x, ctx)
        if ctx is not None:
            ctx.add_routing(routing, self.router)
        capacity = capacity_for(self.dispatch, x, self.router.max_active)
        plan = plan_dispatch(routing.weights, routing.mask, capacity)  # shared by qkv and out
        qkv = combine(grouped_linear(gather(x, plan), self.qkv, plan, self.mode), plan)
        q, k, v = (split_heads(z, b, t, self.heads, self.head_dim) for z in qkv.chunk(3, -1))
        o = attend(q, k, v, ctx, self.causal, merge_heads=True).reshape(
            b * t, self.heads * self.head_dim
        )
        y = combine(grouped_linear(gather(o, plan), self.out, plan, self.mode), plan)
        return y.view(b, t, d)

    def reset_experts(self, experts: Tensor, weights: bool) -> list[tuple[nn.Parameter, int]]:
        """Fresh router slots for ``experts``, and fresh head projections when ``weights``."""
        touched = self.router.reset_experts(experts)
        if weights:
            for weight in (self.qkv, self.out):
                reinit_experts(weight, experts)
            touched += [(self.qkv, 0), (self.out, 0)]
        return touched

    def expert_parameters(self) -> list[nn.Parameter]:
        """The expert weights (expert dimension first), which a library may share."""
        return [self.qkv, self.out]


def build_dynsmha(cfg: DynSMHAConfig, ctx: BuildContext) -> DynSMHA:
    head_dim = cfg.head_dim or ctx.d_model // cfg.heads
    router = ctx.build(cfg.router, num_experts=cfg.experts)
    module = DynSMHA(router, cfg, ctx.d_model, head_dim)
    if cfg.library == "shared":
        width = cfg.heads * head_dim
        module.qkv, module.out = library_weights(ctx.shared, cfg.experts, ctx.d_model, width)
    elif cfg.library == "global":
        key = ("dynsmha", cfg.experts, ctx.d_model, cfg.heads, head_dim)
        module.qkv, module.out = ctx.shared.setdefault(key, (module.qkv, module.out))
    return module


# the same head-shape checks as plain attention
check_dynsmha = check_attention


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "dynsmha", DynSMHAConfig, build_dynsmha, check=check_dynsmha)
