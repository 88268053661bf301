"""``topk_softmax``: the Switch/GShard baseline router."""

from __future__ import annotations

import math

import attrs
import torch
from ponderkit import BuildContext, hookimpl, trunc_normal_
from ponderkit.plugins.routing.base import RouterBase, RouteResult, masked_softmax
from ponderkit.plugins.routing.losses import load_balance_loss, z_loss
from torch import Tensor, nn
from torch.nn import functional as F

non_negative = attrs.validators.ge(0)


@attrs.frozen
class TopKSoftmaxConfig:
    """Top-k routing (Switch/GShard): each token's k highest gate logits, softmax over them.

    A linear gate scores the experts; exactly min(k, enabled experts) are active per token.
    The backward pass also sees each chosen expert's full softmax probability (straight
    through; Switch's gate value), so top-1, whose renormalised weight is always 1, still
    learns from the task loss. Optional aux losses: Switch load balance E * sum_e f_e P_e (``load_balance_weight``) and
    the ST-MoE z-loss mean logsumexp^2 (``z_loss_weight``)."""

    #: experts per token (softmax over their logits)
    top_k: int = attrs.field(default=2, validator=attrs.validators.gt(0))
    load_balance_weight: float = attrs.field(default=0.0, validator=non_negative)
    z_loss_weight: float = attrs.field(default=0.0, validator=non_negative)


class TopKSoftmaxRouter(RouterBase):
    def __init__(self, d_model: int, num_experts: int, cfg: TopKSoftmaxConfig):
        super().__init__(num_experts)
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))  # gate (E, D)
        trunc_normal_(self.weight, 1.0 / math.sqrt(d_model))

    @property
    def max_active(self) -> int:
        return min(self.cfg.top_k, self.num_experts)

    def route(self, x: Tensor) -> RouteResult:
        cfg = self.cfg
        logits = F.linear(x, self.weight.to(x.dtype))  # (N, E)
        k = min(cfg.top_k, self.num_experts)
        chosen = logits.masked_fill(~self.enabled, float("-inf")).topk(k, dim=-1).indices
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, chosen, True)
        mask = mask & self.enabled
        probs = masked_softmax(logits, self.enabled.expand_as(mask))  # over all experts
        picked = probs * mask
        weights = masked_softmax(logits, mask) + picked - picked.detach()  # forward: top-k softmax
        aux: dict[str, Tensor] = {}
        if cfg.load_balance_weight:
            aux["load_balance"] = cfg.load_balance_weight * load_balance_loss(
                probs, mask, self.token_weights
            )
        if cfg.z_loss_weight:
            aux["z_loss"] = cfg.z_loss_weight * z_loss(logits, self.enabled, self.token_weights)
        return weights, mask, logits, aux, {}

    @torch.no_grad()
    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        fresh = torch.empty(len(experts), self.weight.shape[1], device=self.weight.device)
        self.weight[experts] = trunc_normal_(fresh, 1.0 / math.sqrt(self.weight.shape[1]))
        return [(self.weight, 0)]


def build_topk_softmax(
    cfg: TopKSoftmaxConfig, ctx: BuildContext, num_experts: int
) -> TopKSoftmaxRouter:
    return TopKSoftmaxRouter(ctx.d_model, num_experts, cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("router", "topk_softmax", TopKSoftmaxConfig, build_topk_softmax)
