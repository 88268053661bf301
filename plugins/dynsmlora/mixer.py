"""``dynsmlora``: a static base attention plus E routed low-rank (LoRA) deltas per projection.

For each chosen projection P (q, k, v, o) with base weight W (D_out x D_in) and E experts
with A_i (r x D_in) and B_i (D_out x r), a token x with routing weights w (E,) gets

    P(x) = W x + sum_i w_i B_i A_i x = W x + B_cat (repeat(w, r) * (A_cat x))

with A_cat = [A_1; ...; A_E] (E*r x D_in) and B_cat = [B_1 ... B_E] (D_out x E*r). The right
side is the *dense identity*: two GEMMs over all E*r rank directions and one scale, no gather
and no host sync; for small r (E*r of the order of D) it costs less than routing tokens to
experts (seed 003's argument; ``benchmarks/dynsmlora.py`` measures it). An expert with w_i = 0
contributes exactly 0 and gets exactly zero gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Spec, component, hookimpl, trunc_normal_
from ponderkit.plugins.layers.attention import Attention, check_attention
from torch import Tensor, nn
from torch.nn import functional as F

Projection = Literal["q", "k", "v", "o"]


def _projections(_inst, attribute, value) -> None:
    if not value or len(set(value)) != len(value):
        raise ValueError(f"{attribute.name}: a non-empty list of distinct q, k, v, o")


@attrs.frozen
class DynSMLoRAConfig:
    """Base attention (MHA or GQA) plus E routed low-rank deltas: W x + sum_i w_i B_i A_i x.

    The base is a static attention (``kv_heads`` < ``heads`` makes it GQA); every chosen
    projection gets E low-rank deltas mixed per token by a router.

    ``projections``: which of q, k, v, o get deltas. ``rank``: r of every A_i (r x D_in) and
    B_i (D_out x r). A_i start LeCun normal, B_i at zero, so the layer starts as its base
    attention (LoRA's init). The routing weights w of a token are computed once from the
    block input and used for every projection (the o deltas read the attention output of the
    same token). Any router works (``topk_softmax``, ``cosine_threshold``, ``dense``, ...)."""

    #: LoRA deltas per projection, mixed per token by the router
    experts: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    rank: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    kv_heads: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    #: width of a head (null: d_model / heads)
    head_dim: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    projections: tuple[Projection, ...] = attrs.field(
        default=("q", "k", "v", "o"), validator=_projections
    )
    #: router weighting each token's LoRA deltas
    router: Spec = component("router", default="topk_softmax")
    #: mask attention to earlier positions (for autoregressive training)
    causal: bool = False


class DynSMLoRA(nn.Module):
    def __init__(self, router: nn.Module, base: Attention, cfg: DynSMLoRAConfig, d_model: int):
        super().__init__()
        self.router, self.base = router, base
        self.experts, self.rank = cfg.experts, cfg.rank
        e, r = cfg.experts, cfg.rank
        width = dict(zip("qkv", base.widths, strict=True))
        #: the input projections with deltas, in q, k, v order; their A's share one GEMM
        self.inputs = [p for p in "qkv" if p in cfg.projections]
        self.delta_o = "o" in cfg.projections
        if self.inputs:
            self.lora_a_in = self._a(e, len(self.inputs), r, d_model)  # (E, P, r, D)
            self.lora_b_in = nn.ParameterList(
                [self._b(e, r, width[p]) for p in self.inputs]  # each (E, r, D_out)
            )
        if self.delta_o:
            out_in = base.heads * base.head_dim
            self.lora_a_out = self._a(e, 1, r, out_in)  # (E, 1, r, H*Dh)
            self.lora_b_out = self._b(e, r, d_model)  # (E, r, D)

    @staticmethod
    def _a(e: int, p: int, r: int, d_in: int) -> nn.Parameter:
        return nn.Parameter(trunc_normal_(torch.empty(e, p, r, d_in), 1.0 / math.sqrt(d_in)))

    @staticmethod
    def _b(e: int, r: int, d_out: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(e, r, d_out))

    def _down(self, x: Tensor, a: Tensor, w: Tensor) -> Tensor:
        """repeat(w, r) * (A_cat x) for every projection of ``a`` (E, P, r, D_in):
        (N, D_in) -> (N, E, P, r)."""
        e, p, r, d_in = a.shape
        u = F.linear(x, a.reshape(e * p * r, d_in).to(x.dtype))  # (N, E*P*r)
        return u.view(-1, e, p, r) * w.to(u.dtype)[:, :, None, None]

    def _up(self, u: Tensor, b: Tensor) -> Tensor:
        """B_cat u for scaled rank activations ``u`` (N, E, r) and ``b`` (E, r, D_out)."""
        e, r, d_out = b.shape
        return u.reshape(-1, e * r) @ b.reshape(e * r, d_out).to(u.dtype)  # (N, D_out)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, d = h.shape
        x = h.reshape(b * t, d)  # (N, D)
        routing = self.router(x, ctx)
        if ctx is not None:
            ctx.add_routing(routing, self.router)
        w = routing.weights  # (N, E)
        q, k, v = self.base.project(x)  # each (N, width)
        if self.inputs:
            u = self._down(x, self.lora_a_in, w)  # (N, E, P, r)
            deltas = {
                p: self._up(u[:, :, i], b_p)
                for i, (p, b_p) in enumerate(zip(self.inputs, self.lora_b_in, strict=True))
            }
            q = q + deltas["q"] if "q" in deltas else q
            k = k + deltas["k"] if "k" in deltas else k
            v = v + deltas["v"] if "v" in deltas else v
        o = self.base.mix(q, k, v, b, t, ctx).reshape(b * t, -1)  # (N, H*Dh)
        y = self.base.out(o)
        if self.delta_o:
            y = y + self._up(self._down(o, self.lora_a_out, w)[:, :, 0], self.lora_b_out)
        return y.view(b, t, d)

    def expert_parameters(self) -> list[nn.Parameter]:
        return self.lora_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The expert weights, each with the expert as its first dimension."""
        params = [self.lora_a_in, *self.lora_b_in] if self.inputs else []
        return params + ([self.lora_a_out, self.lora_b_out] if self.delta_o else [])

    @torch.no_grad()
    def reset_experts(self, experts: Tensor, weights: bool) -> list[tuple[nn.Parameter, int]]:
        """Fresh router slots for ``experts``; with ``weights``, fresh A (LeCun normal) and
        B = 0: a reset expert starts as no change to the base attention."""
        touched = self.router.reset_experts(experts)
        if not weights:
            return touched
        for param in self.lora_parameters():
            if param.dim() == 4:  # an A: (E, P, r, D_in)
                fresh = torch.empty(len(experts), *param.shape[1:], device=param.device)
                std = 1.0 / math.sqrt(param.shape[-1])
                param[experts] = trunc_normal_(fresh, std).to(param.dtype)
            else:
                param[experts] = 0.0
            touched.append((param, 0))
        return touched


def build_dynsmlora(cfg: DynSMLoRAConfig, ctx: BuildContext) -> DynSMLoRA:
    head_dim = cfg.head_dim or ctx.d_model // cfg.heads
    base = Attention(ctx.d_model, cfg.heads, head_dim, cfg.causal, cfg.kv_heads)
    router = ctx.build(cfg.router, num_experts=cfg.experts)
    return DynSMLoRA(router, base, cfg, ctx.d_model)


# the same head-shape checks as the base attention (heads, head_dim, kv_heads)
check_dynsmlora = check_attention


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "dynsmlora", DynSMLoRAConfig, build_dynsmlora, check=check_dynsmlora)
