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


def library_weights(shared: dict, experts: int, d_model: int, width: int):
    """The expert library shared by attention and FFN (ADR-0005 POS-001, ``library:
    shared``): one (w_in (E, D, 3W), w_out (E, W, D)) pair per (E, D, W) in a model.

    One expert is one slice e of both: a DynSMHA head set reads w_in[e] as its q | k | v
    projections (W = heads * head_dim each) and w_out[e] as its output projection; a DynMoE
    expert reads the first two thirds of w_in[e] as the gate | up of a SwiGLU of hidden width
    W and w_out[e] as its down projection. Why this shape: it is exactly an attention head
    set, the larger of the two, and a SwiGLU of width W is a sub-block of it, so either
    module can draw any expert without a conversion and keeps its own arithmetic; the third
    third (v) is attention's alone."""
    key = ("expert_library", experts, d_model, width)
    if key not in shared:
        shared[key] = (
            expert_weight(experts, d_model, 3 * width),
            expert_weight(experts, width, d_model),
        )
    return shared[key]


class SharedSwiGLUExperts(nn.Module):
    """SwiGLU experts drawn from a shared library (:func:`library_weights`): gate | up are
    the first 2W columns of w_in, down is w_out; hidden width W."""

    def __init__(self, w_in: nn.Parameter, w_out: nn.Parameter, mode: GroupedMode = "auto"):
        super().__init__()
        self.mode, self.w_in, self.w_out = mode, w_in, w_out
        self.hidden = w_out.shape[1]

    def forward(self, x: Tensor, plan: DispatchPlan) -> Tensor:
        gate_up = self.w_in[:, :, : 2 * self.hidden].contiguous()  # (E, D, 2W)
        hidden = swiglu(grouped_linear(x, gate_up, plan, self.mode), plan.filled)
        return grouped_linear(hidden, self.w_out, plan, self.mode)

    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        for weight in (self.w_in, self.w_out):
            reinit_experts(weight, experts)
        return [(self.w_in, 0), (self.w_out, 0)]

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.w_in, self.w_out]


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

    def expert_parameters(self) -> list[nn.Parameter]:
        return [self.gate_up, self.down]
