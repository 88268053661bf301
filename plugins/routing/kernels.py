"""Triton kernels of sparse dispatch (not a plugin module; used by :mod:`.dispatch`).

They read a token's pairs through its slots (:func:`pack_slots`, made once per dispatch plan
from the (N, E) position map): slot j < k[n] of token n holds its j-th active expert and the
row of that pair among the expert-sorted rows. Every row 0..P-1 belongs to exactly one pair,
so writes never collide (no atomics, deterministic), and a token costs its k pairs, not E.

- ``scatter_rows``: the row of pair (n, e) gets x[n]: each token row is read once and written
  to its k expert rows (gather by expert).
- ``gather_sum``: out[n] = sum over n's pairs of w[n, e] * y[row] (w = 1 when absent),
  accumulated in fp32: the weighted combine, and the backward of ``scatter_rows``.
- ``combine_backward``: dy[row] = w[n, e] * g[n] and dw[n, e] = <y[row], g[n]> (0 where
  inactive), one program per token, holding its whole row.
"""

from __future__ import annotations

from typing import Any

import torch
from ponderkit import kernels
from torch import Tensor

triton, tl, block_size = kernels.triton, kernels.tl, kernels.block_size

if triton is not None:
    # Every kernel visits a token's active pairs only, through its slots (pack_slots): the
    # j-th active expert of token n and the row of that pair, j < k_n. So a token costs its k
    # pairs, not all E entries of the position map (the cost a routed layer must have: what is
    # active).

    @triton.jit
    def _pack_slots(
        pos_ptr, rows_ptr, experts_ptr, k_ptr, N, E,
        BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        tokens = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        tin = tokens < N
        ex = tl.arange(0, BLOCK_E)
        base = tokens[:, None].to(tl.int64) * E
        p = tl.load(pos_ptr + base + ex[None, :], mask=tin[:, None] & (ex < E)[None, :], other=-1)
        active = p >= 0
        slot = tl.cumsum(active.to(tl.int32), axis=1) - 1  # ascending experts
        tl.store(rows_ptr + base + slot, p, mask=active)
        tl.store(experts_ptr + base + slot, ex[None, :] + 0 * slot, mask=active)
        tl.store(k_ptr + tokens, tl.sum(active.to(tl.int32), axis=1), mask=tin)

    @triton.jit
    def _scatter_rows(x_ptr, rows_ptr, k_ptr, xs_ptr, D, E, BLOCK: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < D
        row = tl.load(x_ptr + n * D + cols, mask=inside)
        for j in range(tl.load(k_ptr + n)):
            p = tl.load(rows_ptr + n * E + j).to(tl.int64)
            tl.store(xs_ptr + p * D + cols, row, mask=inside)

    @triton.jit
    def _gather_sum(
        y_ptr, rows_ptr, experts_ptr, k_ptr, w_ptr, out_ptr, D, E,
        HAS_W: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < D
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(tl.load(k_ptr + n)):
            p = tl.load(rows_ptr + n * E + j).to(tl.int64)
            v = tl.load(y_ptr + p * D + cols, mask=inside, other=0.0).to(tl.float32)
            if HAS_W:
                v = v * tl.load(w_ptr + n * E + tl.load(experts_ptr + n * E + j)).to(tl.float32)
            acc += v
        tl.store(out_ptr + n * D + cols, acc.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _combine_backward(
        g_ptr, y_ptr, rows_ptr, experts_ptr, k_ptr, w_ptr, dy_ptr, dw_ptr, D, E,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)  # the whole row: BLOCK >= D
        inside = cols < D
        g = tl.load(g_ptr + n * D + cols, mask=inside, other=0.0).to(tl.float32)
        for j in range(tl.load(k_ptr + n)):
            p = tl.load(rows_ptr + n * E + j).to(tl.int64)
            e = tl.load(experts_ptr + n * E + j)
            w = tl.load(w_ptr + n * E + e).to(tl.float32)
            y = tl.load(y_ptr + p * D + cols, mask=inside, other=0.0).to(tl.float32)
            tl.store(dy_ptr + p * D + cols, (w * g).to(dy_ptr.dtype.element_ty), mask=inside)
            tl.store(dw_ptr + n * E + e, tl.sum(g * y, axis=0))


def pack_slots(pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(rows (N, E), experts (N, E), k (N,)) int32: slot j < k[n] of token n is its j-th
    active expert (ascending) and the row of that pair; slots from k[n] on are unset."""
    n, e = pos.shape
    rows, experts = torch.empty_like(pos), torch.empty_like(pos)
    k = torch.empty(n, dtype=torch.int32, device=pos.device)
    if n:
        block_e = block_size(e)
        block_n = max(1, 4096 // block_e)
        _pack_slots[(triton.cdiv(n, block_n),)](
            pos, rows, experts, k, n, e, BLOCK_N=block_n, BLOCK_E=block_e
        )
    return rows, experts, k


Slots = tuple[Tensor, Tensor, Tensor]


def scatter_rows(x: Tensor, slots: Slots, num_pairs: int) -> Tensor:
    """(P, D) rows: the row of pair (n, e) is x[n]."""
    n, d = x.shape
    rows, _, k = slots
    xs = x.new_empty(num_pairs, d)
    if n and num_pairs:
        block = block_size(d)
        _scatter_rows[(n, triton.cdiv(d, block))](
            x.contiguous(), rows, k, xs, d, rows.shape[1], BLOCK=block
        )
    return xs


def gather_sum(y: Tensor, slots: Slots, w: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(N, D): out[n] = sum over token n's pairs (n, e) of w[n, e] * y[row of (n, e)]
    (w = 1 when None)."""
    rows, experts, k = slots
    n, e = rows.shape
    d = y.shape[1]
    out = y.new_empty(n, d, dtype=dtype)
    if n:
        block = block_size(d)
        w_arg = w.contiguous() if w is not None else rows  # unread when HAS_W is False
        _gather_sum[(n, triton.cdiv(d, block))](
            y.contiguous(), rows, experts, k, w_arg, out, d, e, HAS_W=w is not None, BLOCK=block
        )
    return out


class ScatterRows(torch.autograd.Function):
    """x (N, D) -> expert-sorted rows (P, D); backward: per token, the sum of its rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, slots: Slots, num_pairs: int) -> Tensor:
        ctx.save_for_backward(*slots)
        return scatter_rows(x, slots, num_pairs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        slots = ctx.saved_tensors
        return gather_sum(grad.contiguous(), slots, None, grad.dtype), None, None


class Combine(torch.autograd.Function):
    """Expert rows y (P, D) and routing weights w (N, E) -> per token, the weighted sum of its
    pairs' rows."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, w: Tensor, slots: Slots) -> Tensor:
        y, w = y.contiguous(), w.contiguous()
        ctx.save_for_backward(y, w, *slots)
        return gather_sum(y, slots, w, y.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        y, w, rows, experts, k = ctx.saved_tensors
        dy = torch.empty_like(y)
        dw = torch.zeros(rows.shape, dtype=torch.float32, device=y.device)
        if rows.numel():
            d = y.shape[1]
            block = block_size(d, cap=1 << 30)  # one program holds a whole row
            _combine_backward[(rows.shape[0],)](
                grad.contiguous(), y, rows, experts, k, w, dy, dw, d, rows.shape[1],
                BLOCK=block, num_warps=min(16, max(4, block // 256)),
            )  # fmt: skip
        return dy, dw.to(w.dtype), None
