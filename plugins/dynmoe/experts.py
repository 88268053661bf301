"""Stacked expert weights run through sparse dispatch, and the reset protocol of routed layers.

Not a plugin module. Weights are stacked per expert as (E, D_in, D_out) so one grouped GEMM
covers all experts.
"""

from __future__ import annotations

import math

import torch
from ponderkit import swiglu, trunc_normal_
from ponderkit.plugins.dynmoe.dispatch import DispatchPlan, GroupedMode, grouped_linear
from torch import Tensor, nn


def expert_weight(experts: int, d_in: int, d_out: int) -> nn.Parameter:
    """An (E, d_in, d_out) parameter, LeCun truncated normal (std 1/sqrt(d_in)) as Linear."""
    return nn.Parameter(trunc_normal_(torch.empty(experts, d_in, d_out), 1.0 / math.sqrt(d_in)))


@torch.no_grad()
def reinit_experts(weight: nn.Parameter, experts: Tensor) -> None:
    """Fresh LeCun init for the rows ``experts`` of an (E, d_in, d_out) parameter."""
    fresh = torch.empty(len(experts), *weight.shape[1:], device=weight.device)
    weight[experts] = trunc_normal_(fresh, 1.0 / math.sqrt(weight.shape[1])).to(weight.dtype)


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts: down_e(silu(gate_e(x)) * up_e(x)), applied to expert-sorted rows."""

    def __init__(self, experts: int, d_model: int, hidden: int, mode: GroupedMode = "auto"):
        super().__init__()
        self.mode = mode
        self.gate_up = expert_weight(experts, d_model, 2 * hidden)  # (E, D, 2H): gate | up
        self.down = expert_weight(experts, hidden, d_model)  # (E, H, D)

    def forward(self, x: Tensor, plan: DispatchPlan) -> Tensor:
        hidden = swiglu(grouped_linear(x, self.gate_up, plan, self.mode), plan.filled)
        return grouped_linear(hidden, self.down, plan, self.mode)

    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        for weight in (self.gate_up, self.down):
            reinit_experts(weight, experts)
        return [(self.gate_up, 0), (self.down, 0)]
