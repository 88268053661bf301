"""A third-party router that keeps no activation counts of its own (tests/contract)."""

from __future__ import annotations

import attrs
import torch
from ponderkit import Routing, hookimpl
from torch import nn


@attrs.frozen
class Top1Config:
    """Each token to its single best expert by a linear score; no counts kept."""


class Top1(nn.Module):
    def __init__(self, d_model: int, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        self.max_active = 1
        self.proj = nn.Linear(d_model, num_experts, bias=False)

    def forward(self, x, ctx):
        logits = self.proj(x)  # (N, E)
        mask = nn.functional.one_hot(logits.argmax(-1), self.num_experts).bool()
        weights = torch.where(mask, torch.ones_like(logits), torch.zeros_like(logits))
        return Routing(weights=weights, mask=mask, logits=logits)


def build_top1(cfg, ctx, num_experts):
    return Top1(ctx.d_model, num_experts)


@hookimpl
def ponderkit_register(registry):
    registry.add("router", "top1_no_counts", Top1Config, build_top1)
