"""``cosine_threshold``: DynMoE top-any gating (seed 003; LINs-lab/DynMoE)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, hookimpl, use_triton
from ponderkit.plugins.routing.base import (
    RouterBase,
    RouteResult,
    masked_softmax,
    orthogonal_columns,
    topk_fallback,
)
from ponderkit.plugins.routing.cosine_kernel import MAX_EXPERTS, CosineRoute, route_stats
from ponderkit.plugins.routing.losses import sdl_loss, sparsity_loss
from torch import Tensor, nn
from torch.nn import functional as F

non_negative = attrs.validators.ge(0)


@attrs.frozen
class CosineThresholdConfig:
    """DynMoE top-any gating: expert e is active for token x iff cos(x, w_e) > G_e.

    Prototypes W (D x E) start orthogonal, thresholds G at 0. With ``bound_thresholds``
    (default) G = tanh(theta), theta the trained parameter ``threshold``: G stays inside
    (-1, 1), the range of a cosine (unbounded, G climbed to 1.33 in the ADR grid: no token could
    fire, 85% went through the fallback); near 0 it trains as G itself. The share of tokens
    where nothing fired is the stat ``fallback_rate``. The hard mask trains through a
    straight-through estimator, sigmoid(tau * (cos - G)), so W and G learn from the task loss.
    Active experts share a token equally (``weighting: mean``, 1/K) or by a softmax over
    tau * cos (``softmax``). A token that fires no expert gets its ``min_experts`` best experts
    by cosine (``fallback: topk``) or none (``zero``: output 0, the residual carries it).
    Aux losses: SDL = ||W_n^T W_n - I||_F + mean_e ||w_e|| (``sdl_weight``) and, when
    ``sparsity_weight`` > 0, |mean active experts - ``sparsity_target``|."""

    weighting: Literal["mean", "softmax"] = "mean"
    fallback: Literal["topk", "zero"] = "topk"
    min_experts: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    #: temperature of the gate sigmoid(tau * cos) compared with sigmoid(tau * G)
    tau: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    sdl_weight: float = attrs.field(default=0.01, validator=non_negative)
    sparsity_weight: float = attrs.field(default=0.0, validator=non_negative)
    sparsity_target: float = attrs.field(default=2.0, validator=non_negative)
    #: G = tanh(theta) in (-1, 1); false: G = theta, unbounded (before issue 31)
    bound_thresholds: bool = True


class CosineThresholdRouter(RouterBase):
    param_aux_names = frozenset({"sdl"})

    def __init__(self, d_model: int, num_experts: int, cfg: CosineThresholdConfig):
        super().__init__(num_experts)
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(d_model, num_experts))  # prototypes (D, E)
        self.threshold = nn.Parameter(torch.zeros(num_experts))  # theta (E,): G = tanh(theta)
        nn.init.orthogonal_(self.weight)

    def gate_thresholds(self) -> Tensor:
        """G (E,): what each expert's cosine must exceed (tanh of ``threshold`` when bounded)."""
        return torch.tanh(self.threshold) if self.cfg.bound_thresholds else self.threshold

    def cosine(self, x: Tensor) -> Tensor:
        """cos(x_n, w_e) (N, E) in the dtype of ``x``."""
        wn = F.normalize(self.weight.to(x.dtype), dim=0, eps=1e-6)
        # (x @ w_n) / |x| rather than normalize(x) @ w_n: no normalised (N, D) copy of the
        # tokens, forward or backward (the router was the layer's bottleneck on GPU)
        return (x @ wn) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-6)

    def route_fused(self, x: Tensor) -> RouteResult | None:
        cfg = self.cfg
        if self.num_experts > MAX_EXPERTS or not use_triton(x):
            return None
        topk = cfg.fallback == "topk"
        softmax = cfg.weighting == "softmax"
        weights, active, cos, per_token, counts, sdl = CosineRoute.apply(
            x, self.weight, self.gate_thresholds(), self.enabled, cfg.tau, cfg.min_experts, topk,
            softmax, cfg.sdl_weight,
        )  # fmt: skip
        aux = {"sdl": sdl} if cfg.sdl_weight else {}
        if cfg.sparsity_weight:
            aux["sparsity"] = cfg.sparsity_weight * sparsity_loss(
                per_token, cfg.sparsity_target, self.token_weights
            )
        return weights, active, cos, aux, route_stats(counts, self.enabled, len(x))

    def aux_losses(self) -> dict[str, Tensor]:
        """The weighted SDL loss."""
        if not self.cfg.sdl_weight:
            return {}
        diversity, simplicity = sdl_loss(self.weight)
        return {"sdl": self.cfg.sdl_weight * (diversity + simplicity)}

    def route(self, x: Tensor) -> RouteResult:
        cfg = self.cfg
        cos = self.cosine(x)  # (N, E)
        gap = cos - self.gate_thresholds().to(cos.dtype)
        fired = (gap > 0) & self.enabled
        active = fired
        if cfg.fallback == "topk":
            active = topk_fallback(fired, cos, self.enabled, cfg.min_experts)
        hard = active.to(cos.dtype)
        soft = torch.sigmoid(cfg.tau * gap)
        straight_through = hard + soft - soft.detach()  # forward: the hard mask
        if cfg.weighting == "mean":
            share = hard / hard.sum(-1, keepdim=True).clamp(min=1)
        else:
            share = masked_softmax(cfg.tau * cos, active)
        weights = share * straight_through  # forward value: share; 0 where inactive

        aux = self.aux_losses()
        if cfg.sparsity_weight:
            per_token = (straight_through * self.enabled).sum(-1)  # forward: K per token
            aux["sparsity"] = cfg.sparsity_weight * sparsity_loss(
                per_token, cfg.sparsity_target, self.token_weights
            )
        # the share of tokens where no expert fired: the fallback's (or, with ``zero``, the
        # tokens the layer passes through unchanged)
        unfired = (~fired.any(-1)).sum() / max(x.shape[0], 1)
        return weights, active, cos, aux, {"fallback_rate": unfired}

    @torch.no_grad()
    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        keep = torch.ones(self.num_experts, dtype=torch.bool, device=experts.device)
        keep[experts] = False
        fresh = orthogonal_columns(self.weight[:, keep], len(experts))
        self.weight[:, experts] = fresh * self.weight[:, keep].norm(dim=0).mean().nan_to_num(1.0)
        self.threshold[experts] = 0.0  # G = 0 bounded or not
        return [(self.weight, 1), (self.threshold, 0)]


def build_cosine_threshold(
    cfg: CosineThresholdConfig, ctx: BuildContext, num_experts: int
) -> CosineThresholdRouter:
    return CosineThresholdRouter(ctx.d_model, num_experts, cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("router", "cosine_threshold", CosineThresholdConfig, build_cosine_threshold)
