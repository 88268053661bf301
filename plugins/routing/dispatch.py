"""Sparse token-to-expert dispatch that costs what is active.

1. :func:`plan_dispatch` turns a routing (weights, mask (N,E)) into token-expert pairs sorted
   by expert: the nonzeros of the expert-major mask, so pairs of expert 0 come first, each
   expert's tokens in ascending order (deterministic, no sort needed).
2. :func:`gather` picks the pairs' token rows (P, D).
3. :func:`grouped_linear` multiplies each expert's contiguous slice by that expert's weight:
   one grouped GEMM (``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``) on CUDA in
   bf16, else a loop over the experts that received tokens.
4. :func:`combine` scales each pair's output by its routing weight and sums each token's
   pairs: a permutation to token-major order and a segment sum (no atomics; the backward of
   :func:`gather` is the same segment sum); a token with no active expert gets 0.

Dropless: every active pair is computed, whatever the load. All steps are differentiable.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor
from torch.nn import functional as F

GroupedMode = Literal["auto", "loop"]

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@attrs.frozen
class DispatchPlan:
    """Token-expert pairs of one routing, sorted by expert.

    - ``tokens`` (P,) long: the token of each pair.
    - ``weights`` (P,): the routing weight of each pair (keeps the router's graph).
    - ``counts``: pairs per expert, on the host (needed to size and split the slices).
    - ``offsets`` (E,) int32 on the device: cumulative counts, the grouped GEMM's group ends.
    - ``order`` (P,) long: the pairs in token-major order (a permutation of 0..P-1), and
      ``lengths`` (N,) long: pairs per token. Summing a token's pairs is then a segment sum
      over contiguous rows: no atomics, deterministic.
    """

    tokens: Tensor
    weights: Tensor
    counts: list[int]
    offsets: Tensor
    num_tokens: int
    order: Tensor
    lengths: Tensor

    @property
    def num_pairs(self) -> int:
        return sum(self.counts)


def plan_dispatch(weights: Tensor, mask: Tensor) -> DispatchPlan:
    """Pairs (token, expert) where ``mask`` (N,E) is True, expert-major."""
    n, _ = mask.shape
    counts_dev = mask.sum(0)
    # The one host sync of a routed layer: slice sizes are data dependent (dropless).
    counts = counts_dev.tolist()
    flat = mask.t().reshape(-1)  # (E*N,) expert-major
    pairs = _nonzero(flat, sum(counts))
    tokens = pairs % n if n else pairs
    pair_weights = weights.t().reshape(-1)[pairs]
    offsets = counts_dev.cumsum(0).to(torch.int32)
    order = torch.argsort(tokens, stable=True)  # within a token, experts stay ascending
    return DispatchPlan(tokens, pair_weights, counts, offsets, n, order, mask.sum(-1))


def _nonzero(flat: Tensor, size: int) -> Tensor:
    """Indices of True in ``flat``; ``size`` is known, so no second host sync on CUDA."""
    if hasattr(torch, "nonzero_static"):
        return torch.nonzero_static(flat, size=size).squeeze(1)
    return flat.nonzero().squeeze(1)


def _segment_sum(rows: Tensor, lengths: Tensor) -> Tensor:
    """Sums of consecutive runs of ``rows`` (P, D) of ``lengths`` (N,): (N, D)."""
    if lengths.numel() == 0:
        return rows.new_zeros(0, rows.shape[-1])
    # unsafe: lengths sum to P by construction; checking it would sync with the host
    return torch.segment_reduce(rows, "sum", lengths=lengths, axis=0, unsafe=True)


class _Gather(torch.autograd.Function):
    """Token rows for every pair; backward sums each token's pair gradients (segment sum)."""

    @staticmethod
    def forward(ctx, x: Tensor, tokens: Tensor, order: Tensor, lengths: Tensor) -> Tensor:
        ctx.save_for_backward(order, lengths)
        return x.index_select(0, tokens)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        order, lengths = ctx.saved_tensors
        return _segment_sum(grad.index_select(0, order), lengths), None, None, None


class _ScatterSum(torch.autograd.Function):
    """Per token, the sum of its pairs' rows; the adjoint of :class:`_Gather`."""

    @staticmethod
    def forward(ctx, y: Tensor, tokens: Tensor, order: Tensor, lengths: Tensor) -> Tensor:
        ctx.save_for_backward(tokens)
        return _segment_sum(y.index_select(0, order), lengths)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (tokens,) = ctx.saved_tensors
        return grad.index_select(0, tokens), None, None, None


def gather(x: Tensor, plan: DispatchPlan) -> Tensor:
    """Rows of ``x`` (N, D) for every pair, grouped by expert: (P, D)."""
    return _Gather.apply(x, plan.tokens, plan.order, plan.lengths)


def scatter_sum(y: Tensor, plan: DispatchPlan) -> Tensor:
    """Per token, the sum of its pairs' rows: (P, D) -> (N, D); 0 for tokens without pairs."""
    return _ScatterSum.apply(y, plan.tokens, plan.order, plan.lengths)


def combine(y: Tensor, plan: DispatchPlan) -> Tensor:
    """sum over a token's pairs of weight * y: (P, D) -> (N, D); 0 for tokens without pairs."""
    return scatter_sum(y * plan.weights.to(y.dtype).unsqueeze(-1), plan)


def grouped_gemm_ok(x: Tensor, weight: Tensor, mode: GroupedMode = "auto") -> bool:
    """Whether :func:`grouped_linear` can use the fused grouped GEMM for these operands."""
    if mode != "auto" or _GROUPED_MM is None or not x.is_cuda:
        return False
    bf16 = x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    )
    # 16-byte alignment of the bf16 rows of both operands
    return bf16 and weight.shape[1] % 8 == 0 and weight.shape[2] % 8 == 0


def grouped_linear(
    x: Tensor, weight: Tensor, plan: DispatchPlan, mode: GroupedMode = "auto"
) -> Tensor:
    """Per-expert x_e @ W_e for expert-sorted rows ``x`` (P, Din), ``weight`` (E, Din, Dout)."""
    if grouped_gemm_ok(x, weight, mode):
        with torch.autocast("cuda", enabled=False):
            return _GROUPED_MM(x.bfloat16(), weight.bfloat16(), offs=plan.offsets)
    parts = []
    start = 0
    for expert, count in enumerate(plan.counts):
        if count:
            parts.append(x[start : start + count] @ weight[expert].to(x.dtype))
            start += count
    if not parts:  # no pairs: an empty product keeps x and weight in the graph (zero grads)
        return x @ weight[0].to(x.dtype)
    return torch.cat(parts, dim=0)
