"""``dynmoe``: a dropless mixture of SwiGLU experts with a variable number per token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import attrs
from ponderkit import BuildContext, ForwardContext, Spec, component, hookimpl, swiglu_width
from ponderkit.plugins.dynmoe.dispatch import (
    DispatchMode,
    capacity_for,
    combine,
    gather,
    plan_dispatch,
)
from ponderkit.plugins.dynmoe.experts import (
    SharedSwiGLUExperts,
    SwiGLUExperts,
    library_weights,
)
from torch import Tensor, nn


@attrs.frozen
class DynMoEConfig:
    """Dropless mixture of E SwiGLU experts, k per token chosen by a router, sparse dispatch.

    Tokens are gathered by expert, each expert runs only on its own tokens (one grouped GEMM
    on CUDA bf16, a loop over busy experts elsewhere) and outputs are scatter-added back
    weighted by the router; a token with no active expert gets 0. Expert hidden width
    ``hidden``, or round(expansion * D * 2/3) up to a multiple of 16 when unset.

    ``dispatch``: ``exact`` sizes the pair buffers to the pairs of each batch, which costs one
    host sync per layer call; ``static`` sizes them for the most pairs the router can make
    (N * E, or N * k for top-k routers), so nothing waits for the GPU and the layer can be
    captured in a CUDA graph, at the price of memory for those rows. ``auto`` (the default)
    is ``static`` on CUDA and ``exact`` elsewhere. All are dropless and give the same result."""

    #: experts (SwiGLU FFNs) the router chooses from
    experts: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    #: router choosing each token's experts
    router: Spec = component("router", default="cosine_threshold")
    hidden: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    #: each expert's hidden width as a multiple of d_model (when hidden is not set)
    expansion: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    #: auto: one grouped GEMM over the experts where supported (CUDA, bf16), else a loop; loop: always the loop
    grouped_gemm: Literal["auto", "loop"] = "auto"
    dispatch: DispatchMode = "auto"
    #: ``global``: every dynmoe of the model with the same shape shares one expert library
    #: (ADR-0005); each keeps its own router. ``shared``: one library for attention and FFN
    #: (ADR-0005 POS-001): the experts are the ``library: shared`` dynsmha's head sets of the
    #: same E and width W = ``hidden`` (default d_model), each read as a SwiGLU of width W
    #: (``expansion`` is then unused); see ``experts.library_weights``
    library: Literal["local", "global", "shared"] = "local"


def expert_hidden(cfg_hidden: int | None, expansion: float, d_model: int) -> int:
    if cfg_hidden is not None:
        return cfg_hidden
    return swiglu_width(expansion, d_model, multiple=16)


class DynMoE(nn.Module):
    def __init__(
        self,
        router: nn.Module,
        experts: SwiGLUExperts | SharedSwiGLUExperts,
        dispatch: DispatchMode = "auto",
    ):
        super().__init__()
        self.router, self.experts, self.dispatch = router, experts, dispatch

    def forward(self, h: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        shape = h.shape
        x = h.reshape(-1, shape[-1])  # (N, D)
        routing = self.router(x, ctx)
        if ctx is not None:
            ctx.add_routing(routing, self.router)
        capacity = capacity_for(self.dispatch, x, self.router.max_active)
        plan = plan_dispatch(routing.weights, routing.mask, capacity)
        y = combine(self.experts(gather(x, plan), plan), plan)  # (N, D)
        return y.view(shape)

    def reset_experts(self, experts: Tensor, weights: bool) -> list[tuple[nn.Parameter, int]]:
        """Fresh router slots for ``experts``, and fresh expert weights when ``weights``."""
        touched = self.router.reset_experts(experts)
        return touched + (self.experts.reset_experts(experts) if weights else [])

    def expert_parameters(self) -> list[nn.Parameter]:
        """The expert weights (expert dimension first), which a library may share."""
        return self.experts.expert_parameters()


def build_dynmoe(cfg: DynMoEConfig, ctx: BuildContext) -> DynMoE:
    hidden = expert_hidden(cfg.hidden, cfg.expansion, ctx.d_model)
    router = ctx.build(cfg.router, num_experts=cfg.experts)

    def make() -> SwiGLUExperts:
        return SwiGLUExperts(cfg.experts, ctx.d_model, hidden, cfg.grouped_gemm)

    if cfg.library == "shared":
        width = cfg.hidden or ctx.d_model
        w_in, w_out = library_weights(ctx.shared, cfg.experts, ctx.d_model, width)
        key = ("dynmoe_shared", cfg.experts, ctx.d_model, width)
        experts = ctx.shared.setdefault(key, SharedSwiGLUExperts(w_in, w_out, cfg.grouped_gemm))
        return DynMoE(router, experts, cfg.dispatch)
    if cfg.library == "global":
        experts = ctx.shared.setdefault(("dynmoe", cfg.experts, ctx.d_model, hidden), make())
    else:
        experts = make()
    return DynMoE(router, experts, cfg.dispatch)


def _specs(obj: Any) -> Iterator[Spec]:
    """Every component spec inside a config object."""
    if isinstance(obj, Spec):
        yield obj
        yield from _specs(obj.config)
    elif attrs.has(type(obj)):
        for f in attrs.fields(type(obj)):
            yield from _specs(getattr(obj, f.name))
    elif isinstance(obj, tuple | list):
        for v in obj:
            yield from _specs(v)


def check_dynmoe(cfg: DynMoEConfig, env) -> list:
    """``library: shared`` needs a ``library: shared`` dynsmha with the same experts and
    heads * head_dim = hidden (else the FFN would silently get a library of its own)."""
    if cfg.library != "shared":
        return []
    d = env.experiment.model.d_model
    width = cfg.hidden or d
    libraries = {
        (s.config.experts, s.config.heads * (s.config.head_dim or d // s.config.heads))
        for s in _specs(env.experiment)
        if s.kind == "mixer" and s.name == "dynsmha" and s.config.library == "shared"
    }
    if (cfg.experts, width) in libraries:
        return []
    have = ", ".join(f"experts={e}, width={w}" for e, w in sorted(libraries)) or "none"
    return [
        (
            "library",
            f"no `library: shared` dynsmha with experts={cfg.experts} and heads * head_dim ="
            f" {width} (the FFN's hidden) to share experts with (shared dynsmha: {have})",
        )
    ]


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("ffn", "dynmoe", DynMoEConfig, build_dynmoe, check=check_dynmoe)
