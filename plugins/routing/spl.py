"""``spl``: SparseProtoLinear gating with mas-normalize (seed 004, ADR-0001)."""

from __future__ import annotations

import math

import attrs
import torch
from ponderkit import BuildContext, hookimpl, trunc_normal_
from ponderkit.plugins.routing.base import RouterBase, RouteResult
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class SPLRouterConfig:
    """SparseProtoLinear gating: M = mas(x W_p^T / sqrt(D) - mas(x W_g^T)), weights M / sum M.

    mas(z) = relu(z / (max|z| + 1e-9)) over a token's experts. Expert e is active where
    M_e > 0; gradients reach W_p and W_g through M (no estimator needed). A token with no
    positive M uses no expert (its output is 0 and the residual carries it)."""


def mas_normalize(z: Tensor) -> Tensor:
    """relu(z / (max|z| + 1e-9)), the max over the last dimension."""
    return F.relu(z / (z.abs().amax(-1, keepdim=True) + 1e-9))


class SPLRouter(RouterBase):
    def __init__(self, d_model: int, num_experts: int, cfg: SPLRouterConfig):
        super().__init__(num_experts)
        self.cfg = cfg
        self.prototypes = nn.Parameter(torch.empty(num_experts, d_model))  # W_p (E, D)
        self.gate = nn.Parameter(torch.empty(num_experts, d_model))  # W_g (E, D)
        self.reset_experts(torch.arange(num_experts))

    def route(self, x: Tensor) -> RouteResult:
        dtype = x.dtype
        enabled = self.enabled.to(dtype)
        match = F.linear(x, self.prototypes.to(dtype)) / math.sqrt(x.shape[-1])
        gate = F.linear(x, self.gate.to(dtype))
        logits = (match - mas_normalize(gate * enabled)) * enabled  # (N, E), 0 if removed
        m = mas_normalize(logits)
        mask = (m > 0) & self.enabled
        weights = m / m.sum(-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)
        return weights, mask, logits, {}, {}

    @torch.no_grad()
    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        std = 1.0 / math.sqrt(self.prototypes.shape[1])
        for param in (self.prototypes, self.gate):
            fresh = torch.empty(len(experts), param.shape[1], device=param.device)
            param[experts] = trunc_normal_(fresh, std)
        return [(self.prototypes, 0), (self.gate, 0)]


def build_spl(cfg: SPLRouterConfig, ctx: BuildContext, num_experts: int) -> SPLRouter:
    return SPLRouter(ctx.d_model, num_experts, cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("router", "spl", SPLRouterConfig, build_spl)
