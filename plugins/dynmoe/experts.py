"""Stacked expert weights run through sparse dispatch, and the reset protocol of routed layers.

Not a plugin module. Weights are stacked per expert as (E, D_in, D_out) so one grouped GEMM
covers all experts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ponderkit import swiglu, trunc_normal_, use_triton
from ponderkit.plugins.routing.dispatch import (
    _GROUPED_MM,
    DispatchPlan,
    GroupedMode,
    grouped_gemm_ok,
    grouped_linear,
)
from ponderkit.plugins.routing.grouped_gemm import (
    gather_swiglu_mm,
    gather_wgrad_mm,
    swiglu_bwd_mm,
)
from ponderkit.plugins.routing.kernels import gather_sum
from torch import Tensor, nn


def expert_weight(experts: int, d_in: int, d_out: int) -> nn.Parameter:
    """An (E, d_in, d_out) parameter, LeCun truncated normal (std 1/sqrt(d_in)) as Linear."""
    return nn.Parameter(trunc_normal_(torch.empty(experts, d_in, d_out), 1.0 / math.sqrt(d_in)))


@torch.no_grad()
def reinit_experts(weight: nn.Parameter, experts: Tensor) -> None:
    """Fresh LeCun init for the rows ``experts`` of an (E, d_in, d_out) parameter."""
    fresh = torch.empty(len(experts), *weight.shape[1:], device=weight.device)
    weight[experts] = trunc_normal_(fresh, 1.0 / math.sqrt(weight.shape[1])).to(weight.dtype)


def _rows_mm(a: Tensor, b: Tensor, plan: DispatchPlan) -> Tensor:
    """Per expert e, rows of ``a`` (P, K) @ ``b[e]`` (K, N): torch's grouped GEMM where it runs,
    else a loop over the experts (rows past the last pair: 0)."""
    if grouped_gemm_ok(a, b):
        return _GROUPED_MM(a, b.to(a.dtype), offs=plan.offsets)
    return grouped_linear(a, b, plan, "loop")


def _wgrad_mm(a: Tensor, g: Tensor, plan: DispatchPlan) -> Tensor:
    """Per expert e, the sum over its rows r of a[r]^T g[r]: (E, K, N)."""
    if _GROUPED_MM is not None and a.is_cuda and a.dtype == g.dtype == torch.bfloat16:
        return _GROUPED_MM(a.t(), g, offs=plan.offsets)
    ends = plan.offsets.tolist()
    out = a.new_zeros(len(ends), a.shape[1], g.shape[1])
    for expert, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        out[expert] = a[start:end].t() @ g[start:end]
    return out


class FusedSwiGLUExperts(torch.autograd.Function):
    """EXPERIMENTAL (``grouped_gemm: fused``; not yet timed on a GPU): the experts on the
    tokens ``x`` (N, D) themselves, read through the plan's row -> token map inside the first
    GEMM (no gathered (P, D) copy), SwiGLU in that GEMM's epilogue, and its backward in the
    epilogue of the GEMM giving the hidden gradient; the down projection and the input
    gradient's GEMM are torch's grouped GEMM. Returns the expert-sorted output rows (P, D)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gate_up: Tensor, down: Tensor, plan: DispatchPlan) -> Tensor:
        gu, hidden = gather_swiglu_mm(x, plan.sources, gate_up, plan.offsets, plan.rows)
        ctx.save_for_backward(x, gate_up, down, gu, hidden)
        ctx.plan = plan
        return _rows_mm(hidden, down, plan)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, gate_up, down, gu, hidden = ctx.saved_tensors
        plan = ctx.plan
        dy = dy.contiguous()
        d_down = _wgrad_mm(hidden, dy, plan)
        dgu = swiglu_bwd_mm(dy, down, gu, plan.offsets, plan.rows)
        d_gate_up = gather_wgrad_mm(x, plan.sources, dgu, plan.offsets)
        dxs = _rows_mm(dgu, gate_up.transpose(1, 2), plan)
        dx = gather_sum(dxs, plan.slots, None, x.dtype)
        return dx, d_gate_up.to(gate_up.dtype), d_down.to(down.dtype), None


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

    def fused(self, x: Tensor, plan: DispatchPlan) -> Tensor | None:
        """The experts' output rows (P, D) on the tokens ``x`` (N, D) through
        :class:`FusedSwiGLUExperts` when ``mode`` is ``fused`` and the plan has Triton's maps
        (None otherwise: gather, then :meth:`forward`)."""
        if self.mode != "fused" or plan.sources is None or not use_triton(x):
            return None
        bf16 = grouped_gemm_ok(x, self.gate_up)  # bf16 tokens, or bf16 autocast on CUDA
        with torch.autocast(x.device.type, enabled=False):
            xx = x.bfloat16() if bf16 else x
            return FusedSwiGLUExperts.apply(xx, self.gate_up, self.down, plan)

    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        for weight in (self.gate_up, self.down):
            reinit_experts(weight, experts)
        return [(self.gate_up, 0), (self.down, 0)]
