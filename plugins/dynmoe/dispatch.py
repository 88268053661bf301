"""Sparse token-to-expert dispatch that costs what is active.

1. :func:`plan_dispatch` turns a routing (weights, mask (N,E)) into a position map: pair
   (token n, expert e) is row ``pos[n, e]`` of the expert-sorted pair rows (expert 0's tokens
   first, each expert's tokens in ascending order), -1 where e is not active for n. Computed
   with one cumulative sum over tokens (three Triton kernels on CUDA, which also pack each
   token's pairs into slots), no sort and no nonzero.
2. :func:`gather` writes each token's row to its k expert rows (P, D).
3. :func:`grouped_linear` multiplies each expert's contiguous slice by that expert's weight:
   one grouped GEMM (``torch.nn.functional.grouped_mm`` / ``torch._grouped_mm``) on CUDA in
   bf16, else a loop over the experts that received tokens.
4. :func:`combine` sums each token's rows weighted by its routing weights (a token with no
   active expert gets 0).

With a ``capacity`` (rows for the most pairs there could be, e.g. N * E), planning needs no
host sync: counts and offsets stay on the device, the pair buffers have ``capacity`` rows of
which the first ``offsets[-1]`` hold data, and the kernels and the grouped GEMM touch only
those. The layer then has static shapes (CUDA-graph capturable) and the host can run ahead of
the GPU; the price is memory for ``capacity`` rows. Still dropless: the capacity bounds every
possible routing.

On CUDA, gather and combine are Triton kernels (:mod:`.kernels`: each token's rows are read
or written through its slots, its active pairs only, every row by exactly one token, so no
atomics and a deterministic result, accumulated in fp32); elsewhere the same through torch
indexing. Dropless: every active pair is computed, whatever the load. All steps are
differentiable.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from ponderkit import counting_flops, use_triton
from ponderkit.plugins.dynmoe.dispatch_kernels import Combine, ScatterRows, Slots, plan_positions
from torch import Tensor
from torch.nn import functional as F

GroupedMode = Literal["auto", "loop"]
DispatchMode = Literal["auto", "exact", "static"]

#: the plan's kernels hold a block of tokens' whole rows of experts; more experts than this
#: plan (and dispatch) through torch
MAX_KERNEL_EXPERTS = 1024

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class DispatchPlan(NamedTuple):
    """Where every active (token, expert) pair of one routing goes (a NamedTuple, which
    torch.compile traces; a frozen attrs class breaks its graph).

    - ``weights`` (N, E): the routing weights (keep the router's graph); ``mask`` (N, E) bool.
    - ``pos`` (N, E) int32: the row of pair (n, e) among the expert-sorted rows, -1 where
      inactive.
    - ``counts``: pairs per expert on the host, or None for a plan made without a host
      sync (a ``capacity``).
    - ``offsets`` (E,) int32 on the device: cumulative counts, the grouped GEMM's group ends.
    - ``rows``: rows of the pair buffers: the number of pairs, or the capacity.
    - ``slots``: each token's active pairs packed to the front, for the Triton kernels
      (:func:`~.kernels.plan_positions`), or None where they do not run.
    """

    weights: Tensor
    mask: Tensor
    pos: Tensor
    counts: list[int] | None
    offsets: Tensor
    rows: int
    slots: Slots | None = None

    @property
    def num_tokens(self) -> int:
        return self.mask.shape[0]

    @property
    def filled(self) -> Tensor | None:
        """The number of pair rows holding data as a one-element device tensor, when only
        the device knows it (None when every row holds a pair)."""
        return None if self.counts is not None else self.offsets[-1:]

    def host_counts(self) -> list[int]:
        """Pairs per expert on the host (a sync for a capacity plan)."""
        if self.counts is not None:
            return self.counts
        return self.offsets.diff(prepend=self.offsets.new_zeros(1)).tolist()

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(token, expert, row) of every active pair, token-major (for the torch path)."""
        tokens, experts = self.mask.nonzero(as_tuple=True)
        return tokens, experts, self.pos[tokens, experts].long()


def plan_dispatch(weights: Tensor, mask: Tensor, capacity: int | None = None) -> DispatchPlan:
    """The position map of ``mask`` (N,E): expert-major rows, tokens ascending per expert.

    ``capacity``: size the pair buffers for this many rows (at least the pairs ``mask`` can
    hold, e.g. N * E) and keep the counts on the device (no host sync)."""
    n, e = mask.shape
    slots = None
    if use_triton(weights) and e <= MAX_KERNEL_EXPERTS:  # block counts, their scan, the maps
        pos, offsets, slots = plan_positions(mask)
    else:
        # One scan over the expert-major (transposed) mask: the running count at (e, n) is
        # 1 + the row of pair (n, e), and at the end of expert e's stretch the end of its
        # slice.
        flat = mask.t().contiguous().view(-1).cumsum(0, dtype=torch.int32).view(e, n)
        offsets = flat[:, -1].contiguous() if n else mask.new_zeros(e, dtype=torch.int32)
        pos = torch.where(mask, flat.t() - 1, -1).to(torch.int32).contiguous()
    if capacity is None:
        # The one host sync of a routed layer: slice sizes are data dependent (dropless).
        ends = offsets.tolist()
        counts = [end - start for start, end in zip([0, *ends[:-1]], ends, strict=True)]
        rows = ends[-1] if ends else 0
    else:
        counts, rows = None, capacity
    return DispatchPlan(weights, mask, pos, counts, offsets, rows, slots)


def resolve_dispatch(mode: DispatchMode, device: torch.device) -> Literal["exact", "static"]:
    """The dispatch a layer runs on ``device``: ``auto`` is ``static`` on CUDA (no host sync,
    static shapes: the host runs ahead of the GPU, and a CUDA graph can capture the layer) and
    ``exact`` elsewhere (on the CPU a sync costs nothing, and capacity rows cost compute in the
    loop fallback)."""
    if mode == "auto":
        return "static" if device.type == "cuda" else "exact"
    return mode


def capacity_for(mode: DispatchMode, x: Tensor, max_active: int) -> int | None:
    """Pair rows for a static plan of tokens ``x`` (N, D) (every pair the router can make), or
    None for an exact one. While torch's FlopCounterMode counts, the plan is exact: the
    counter sees only shapes, and a static plan's capacity rows (never computed) would count
    as work; the active FLOPs are what a count is for (FLOPs budgets, MFU)."""
    if resolve_dispatch(mode, x.device) == "exact" or counting_flops():
        return None
    return len(x) * max_active


def gather(x: Tensor, plan: DispatchPlan) -> Tensor:
    """Rows of ``x`` (N, D) for every pair, grouped by expert: (P, D)."""
    if plan.slots is not None and use_triton(x):
        return ScatterRows.apply(x, plan.slots, plan.rows)
    tokens, _, rows = plan.pairs()
    by_row = torch.zeros(plan.rows, dtype=torch.long, device=x.device)  # spare rows: token 0
    by_row[rows] = tokens
    return x.index_select(0, by_row)


def combine(y: Tensor, plan: DispatchPlan) -> Tensor:
    """sum over a token's pairs of weight * y: (P, D) -> (N, D); 0 for tokens without pairs."""
    if plan.slots is not None and use_triton(y, plan.weights):
        return Combine.apply(y, plan.weights, plan.slots)
    tokens, experts, rows = plan.pairs()
    weighted = y.index_select(0, rows) * plan.weights[tokens, experts].to(y.dtype).unsqueeze(-1)
    return y.new_zeros(plan.num_tokens, y.shape[-1]).index_add(0, tokens, weighted)


def grouped_gemm_ok(x: Tensor, weight: Tensor, mode: GroupedMode = "auto") -> bool:
    """Whether :func:`grouped_linear` can use the fused grouped GEMM for these operands."""
    if mode == "loop" or _GROUPED_MM is None or not x.is_cuda:
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
    for expert, count in enumerate(plan.host_counts()):
        if count:
            parts.append(x[start : start + count] @ weight[expert].to(x.dtype))
            start += count
    if start < len(x) or not parts:
        # the spare rows of a capacity plan get 0; an empty product keeps x and weight in the
        # graph when there are no pairs at all (zero gradients)
        parts.append(x[start:start] @ weight[0].to(x.dtype))
        parts.append(x.new_zeros(len(x) - start, weight.shape[2]))
    return torch.cat(parts, dim=0)
