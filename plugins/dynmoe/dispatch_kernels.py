"""Triton kernels of sparse dispatch (not a plugin module; used by :mod:`.dispatch`).

They read a token's pairs through its slots (made once per dispatch plan with the position
map, :func:`plan_positions`): slot j < k[n] of token n holds its j-th active expert and the
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
    # Every kernel visits a token's active pairs only, through its slots: the j-th active
    # expert of token n and the row of that pair, j < k_n. So a token costs its k pairs, not
    # all E entries of the position map (the cost a routed layer must have: what is active).

    # The plan in three kernels: counts per block of tokens and expert, one program scanning
    # those counts (expert-major), then each block writing its position map and slots.

    @triton.jit
    def _plan_counts(mask_ptr, counts_ptr, N, E, TOKENS: tl.constexpr, BLOCK_E: tl.constexpr):
        tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        ex = tl.arange(0, BLOCK_E)
        at = tokens[:, None].to(tl.int64) * E + ex[None, :]
        m = tl.load(mask_ptr + at, mask=(tokens < N)[:, None] & (ex < E)[None, :], other=0)
        tl.store(counts_ptr + tl.program_id(0) * E + ex, tl.sum((m != 0).to(tl.int32), 0), ex < E)

    @triton.jit
    def _plan_scan(
        counts_ptr, base_ptr, offsets_ptr, B, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr
    ):
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        total = tl.zeros([BLOCK_E], dtype=tl.int32)
        for b0 in range(0, B, CHUNK):
            blocks = b0 + tl.arange(0, CHUNK)
            both = (blocks < B)[:, None] & ein[None, :]
            total += tl.sum(tl.load(counts_ptr + blocks[:, None] * E + ex[None, :], both, 0), 0)
        ends = tl.cumsum(total, 0)
        tl.store(offsets_ptr + ex, ends, mask=ein)
        run = ends - total  # where each expert's rows start
        for b0 in range(0, B, CHUNK):
            blocks = b0 + tl.arange(0, CHUNK)
            at = blocks[:, None] * E + ex[None, :]
            both = (blocks < B)[:, None] & ein[None, :]
            c = tl.load(counts_ptr + at, both, 0)
            tl.store(base_ptr + at, run[None, :] + tl.cumsum(c, 0) - c, mask=both)
            run += tl.sum(c, 0)

    @triton.jit
    def _plan_write(
        mask_ptr, base_ptr, pos_ptr, rows_ptr, experts_ptr, k_ptr, N, E,
        TOKENS: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        tin = tokens < N
        ex = tl.arange(0, BLOCK_E)
        both = tin[:, None] & (ex < E)[None, :]
        at = tokens[:, None].to(tl.int64) * E + ex[None, :]
        m = (tl.load(mask_ptr + at, mask=both, other=0) != 0).to(tl.int32)
        base = tl.load(base_ptr + tl.program_id(0) * E + ex, mask=ex < E, other=0)
        pos = tl.where(m != 0, base[None, :] + tl.cumsum(m, 0) - m, -1)  # tokens ascending
        tl.store(pos_ptr + at, pos, mask=both)
        slot = tl.cumsum(m, 1) - 1  # a token's experts ascending
        out = tokens[:, None].to(tl.int64) * E + slot
        tl.store(rows_ptr + out, pos, mask=both & (m != 0))
        tl.store(experts_ptr + out, ex[None, :] + 0 * slot, mask=both & (m != 0))
        tl.store(k_ptr + tokens, tl.sum(m, 1), mask=tin)

    # Each program takes TOKENS tokens (a [TOKENS, BLOCK] tile of rows) and loops over slot j
    # up to the block's largest k: the rows of TOKENS pairs are in flight at once, rather than
    # one token's pairs one after another (which left the loads waiting on each other).

    @triton.jit
    def _scatter_rows(
        x_ptr, rows_ptr, k_ptr, xs_ptr, N, D, E, TOKENS: tl.constexpr, BLOCK: tl.constexpr
    ):
        tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        tin = tokens < N
        tokens = tokens.to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        cin = cols < D
        k = tl.load(k_ptr + tokens, mask=tin, other=0)
        row = tl.load(x_ptr + tokens[:, None] * D + cols[None, :], mask=tin[:, None] & cin[None, :])
        for j in range(tl.max(k, axis=0)):
            on = j < k
            p = tl.load(rows_ptr + tokens * E + j, mask=on, other=0).to(tl.int64)
            tl.store(xs_ptr + p[:, None] * D + cols[None, :], row, mask=on[:, None] & cin[None, :])

    @triton.jit
    def _gather_sum(
        y_ptr, rows_ptr, experts_ptr, k_ptr, w_ptr, out_ptr, N, D, E,
        HAS_W: tl.constexpr, TOKENS: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        tin = tokens < N
        tokens = tokens.to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        cin = cols < D
        k = tl.load(k_ptr + tokens, mask=tin, other=0)
        acc = tl.zeros([TOKENS, BLOCK], dtype=tl.float32)
        for j in range(tl.max(k, axis=0)):
            on = j < k
            p = tl.load(rows_ptr + tokens * E + j, mask=on, other=0).to(tl.int64)
            v = tl.load(y_ptr + p[:, None] * D + cols[None, :], mask=on[:, None] & cin[None, :])
            v = v.to(tl.float32)
            if HAS_W:
                e = tl.load(experts_ptr + tokens * E + j, mask=on, other=0)
                v *= tl.load(w_ptr + tokens * E + e, mask=on, other=0.0).to(tl.float32)[:, None]
            acc += v
        out = out_ptr + tokens[:, None] * D + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tin[:, None] & cin[None, :])

    @triton.jit
    def _combine_backward(
        g_ptr, y_ptr, rows_ptr, experts_ptr, k_ptr, w_ptr, dy_ptr, dw_ptr, N, D, E,
        TOKENS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        tokens = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
        tin = tokens < N
        tokens = tokens.to(tl.int64)
        cols = tl.arange(0, BLOCK)  # whole rows: BLOCK >= D
        cin = cols < D
        ex = tl.arange(0, BLOCK_E)
        k = tl.load(k_ptr + tokens, mask=tin, other=0)
        g = tl.load(g_ptr + tokens[:, None] * D + cols[None, :], mask=tin[:, None] & cin[None, :])
        g = g.to(tl.float32)
        dw = tl.zeros([TOKENS, BLOCK_E], dtype=tl.float32)  # whole rows, 0 where inactive
        for j in range(tl.max(k, axis=0)):
            on = j < k
            both = on[:, None] & cin[None, :]
            p = tl.load(rows_ptr + tokens * E + j, mask=on, other=0).to(tl.int64)
            e = tl.load(experts_ptr + tokens * E + j, mask=on, other=-1)
            w = tl.load(w_ptr + tokens * E + e, mask=on, other=0.0).to(tl.float32)
            at = p[:, None] * D + cols[None, :]
            y = tl.load(y_ptr + at, mask=both, other=0.0).to(tl.float32)
            tl.store(dy_ptr + at, (w[:, None] * g).to(dy_ptr.dtype.element_ty), mask=both)
            dw += tl.where(ex[None, :] == e[:, None], tl.sum(g * y, axis=1)[:, None], 0.0)
        out = tokens[:, None] * E + ex[None, :]
        tl.store(dw_ptr + out, dw, mask=tin[:, None] & (ex < E)[None, :])


#: tokens per program of the dispatch kernels (powers of two; benchmarks/dispatch_kernels.py)
TOKENS = {"scatter": 2, "gather_sum": 2, "combine_backward": 2}


def plan_positions(
    mask: Tensor, scan_chunk: int = 4096
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The position map of ``mask`` (N, E) (see :func:`.dispatch.plan_dispatch`), the
    offsets (E,) (cumulative pairs per expert) and the slots (rows (N, E), experts (N, E),
    k (N,)), int32: slot j < k[n] of token n is its j-th active expert (ascending) and the row
    of that pair; slots from k[n] on are unset."""
    n, e = mask.shape
    mask = mask.contiguous()
    i32 = dict(dtype=torch.int32, device=mask.device)
    pos, rows, experts = (torch.empty(n, e, **i32) for _ in range(3))
    k, offsets = torch.empty(n, **i32), torch.zeros(e, **i32)
    if n:
        block_e = block_size(e)
        tokens = max(16, min(256, 4096 // block_e))
        blocks = triton.cdiv(n, tokens)
        counts, base = torch.empty(blocks, e, **i32), torch.empty(blocks, e, **i32)
        _plan_counts[(blocks,)](mask, counts, n, e, TOKENS=tokens, BLOCK_E=block_e)
        chunk = max(1, min(block_size(blocks), scan_chunk // block_e))
        _plan_scan[(1,)](counts, base, offsets, blocks, e, CHUNK=chunk, BLOCK_E=block_e)
        _plan_write[(blocks,)](
            mask, base, pos, rows, experts, k, n, e, TOKENS=tokens, BLOCK_E=block_e
        )
    return pos, offsets, (rows, experts, k)


Slots = tuple[Tensor, Tensor, Tensor]


def scatter_rows(x: Tensor, slots: Slots, num_pairs: int) -> Tensor:
    """(P, D) rows: the row of pair (n, e) is x[n]."""
    n, d = x.shape
    rows, _, k = slots
    xs = x.new_empty(num_pairs, d)
    if n and num_pairs:
        block = block_size(d)
        tokens = TOKENS["scatter"]
        _scatter_rows[(triton.cdiv(n, tokens), triton.cdiv(d, block))](
            x.contiguous(), rows, k, xs, n, d, rows.shape[1], TOKENS=tokens, BLOCK=block
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
        tokens = TOKENS["gather_sum"]
        _gather_sum[(triton.cdiv(n, tokens), triton.cdiv(d, block))](
            y.contiguous(), rows, experts, k, w_arg, out, n, d, e,
            HAS_W=w is not None, TOKENS=tokens, BLOCK=block,
        )  # fmt: skip
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
        dw = torch.empty(rows.shape, dtype=torch.float32, device=y.device)
        if rows.numel():
            d = y.shape[1]
            n = rows.shape[0]
            block = block_size(d, cap=1 << 30)  # one program holds whole rows
            tokens = TOKENS["combine_backward"]
            _combine_backward[(triton.cdiv(n, tokens),)](
                grad.contiguous(), y, rows, experts, k, w, dy, dw, n, d, rows.shape[1],
                TOKENS=tokens, BLOCK=block, BLOCK_E=block_size(rows.shape[1]),
                num_warps=min(16, max(4, tokens * block // 512)),
            )  # fmt: skip
        return dy, dw.to(w.dtype), None
