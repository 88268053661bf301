"""``dense``: every expert for every token (soft mixture; the dense baseline)."""

from __future__ import annotations

import math

import attrs
import torch
from ponderkit import BuildContext, hookimpl, trunc_normal_
from ponderkit.plugins.routing.base import RouterBase, RouteResult, masked_softmax
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class DenseRouterConfig:
    """Every enabled expert is active for every token, weighted by a softmax over a linear gate.

    ``uniform: true`` drops the gate: every enabled expert gets the same weight."""

    uniform: bool = False


class DenseRouter(RouterBase):
    def __init__(self, d_model: int, num_experts: int, cfg: DenseRouterConfig):
        super().__init__(num_experts)
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(num_experts, d_model), requires_grad=not cfg.uniform)
        self.reset_experts(torch.arange(num_experts))
        if cfg.uniform:
            nn.init.zeros_(self.weight)

    def route(self, x: Tensor) -> RouteResult:
        logits = F.linear(x, self.weight.to(x.dtype))  # (N, E)
        mask = self.enabled.expand_as(logits).clone()
        return masked_softmax(logits, mask), mask, logits, {}, {}

    @torch.no_grad()
    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        if not self.cfg.uniform:
            fresh = torch.empty(len(experts), self.weight.shape[1], device=self.weight.device)
            self.weight[experts] = trunc_normal_(fresh, 1.0 / math.sqrt(self.weight.shape[1]))
        return [(self.weight, 0)]


def build_dense(cfg: DenseRouterConfig, ctx: BuildContext, num_experts: int) -> DenseRouter:
    return DenseRouter(ctx.d_model, num_experts, cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("router", "dense", DenseRouterConfig, build_dense)
