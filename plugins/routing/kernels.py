"""Triton kernels of sparse dispatch (not a plugin module; used by :mod:`.dispatch`).

All three read the dispatch plan's (N, E) position map ``pos``: the row of pair (token n,
expert e) among the expert-sorted rows, -1 where e is not active for n. Every row 0..P-1 is
the image of exactly one (n, e), so writes never collide (no atomics, deterministic).

- ``scatter_rows``: xs[pos[n, e]] = x[n] for active (n, e): each token row is read once and
  written to its k expert slots (gather by expert).
- ``gather_sum``: out[n] = sum_e w[n, e] * y[pos[n, e]] (w = 1 when absent), accumulated in
  fp32: the weighted combine, and the backward of ``scatter_rows``.
- ``combine_backward``: dy[pos[n, e]] = w[n, e] * g[n] and dw[n, e] = <y[pos[n, e]], g[n]>
  (0 where inactive), one program per token, along its whole row.
"""

from __future__ import annotations

from typing import Any

import torch
from ponderkit import kernels
from torch import Tensor

triton, tl, block_size = kernels.triton, kernels.tl, kernels.block_size

if triton is not None:
    # scatter_rows and combine_backward take one token's E position-map entries at once, as a
    # (BLOCK_E, BLOCK_D) tile with the inactive entries masked off.

    @triton.jit
    def _token_rows(pos_ptr, n, E, D, cols, BLOCK_E: tl.constexpr):
        """(pos (BLOCK_E,), live (BLOCK_E, BLOCK_D)) of token ``n`` for columns ``cols``."""
        ex = tl.arange(0, BLOCK_E)
        p = tl.load(pos_ptr + n * E + ex, mask=ex < E, other=-1).to(tl.int64)
        return p, (p[:, None] >= 0) & (cols < D)[None, :]

    @triton.jit
    def _scatter_rows(x_ptr, pos_ptr, xs_ptr, D, E, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        n = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        p, live = _token_rows(pos_ptr, n, E, D, cols, BLOCK_E)
        row = tl.load(x_ptr + n * D + cols, mask=cols < D)
        tile = tl.broadcast_to(row[None, :], (BLOCK_E, BLOCK_D))
        tl.store(xs_ptr + p[:, None] * D + cols[None, :], tile, mask=live)

    @triton.jit
    def _gather_sum(y_ptr, pos_ptr, w_ptr, out_ptr, D, E, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
        # one expert after another, each position loaded on its own. On an H200 (N = 32k,
        # E = 16, D = 512) this takes 70 us; reduced over experts as a (BLOCK_E, BLOCK_D) tile
        # 610 us; with the token's position row loaded once and each entry picked out of
        # registers (a reduction per expert) 99 us.
        n = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < D
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for e in range(E):
            p = tl.load(pos_ptr + n * E + e).to(tl.int64)
            live = inside & (p + cols * 0 >= 0)  # broadcast: the interpreter wants a vector mask
            v = tl.load(y_ptr + p * D + cols, mask=live, other=0.0).to(tl.float32)
            if HAS_W:
                v = v * tl.load(w_ptr + n * E + e).to(tl.float32)
            acc += v
        tl.store(out_ptr + n * D + cols, acc.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _combine_backward(
        g_ptr, y_ptr, pos_ptr, w_ptr, dy_ptr, dw_ptr, D, E,
        BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(0).to(tl.int64)
        ex = tl.arange(0, BLOCK_E)
        w = tl.load(w_ptr + n * E + ex, mask=ex < E, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK_E], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):  # the whole row: dw sums over every column
            cols = d0 + tl.arange(0, BLOCK_D)
            p, live = _token_rows(pos_ptr, n, E, D, cols, BLOCK_E)
            g = tl.load(g_ptr + n * D + cols, mask=cols < D, other=0.0).to(tl.float32)
            at = p[:, None] * D + cols[None, :]
            y = tl.load(y_ptr + at, mask=live, other=0.0).to(tl.float32)
            tl.store(dy_ptr + at, (w[:, None] * g[None, :]).to(dy_ptr.dtype.element_ty), mask=live)
            dw += tl.sum(y * g[None, :], axis=1)
        tl.store(dw_ptr + n * E + ex, dw, mask=ex < E)


def _blocks(e: int, d: int) -> tuple[int, int]:
    """(BLOCK_E, BLOCK_D) of a token's tile: every expert, about 4096 elements."""
    block_e = block_size(e)
    return block_e, block_size(d, cap=max(16, 4096 // block_e))


def scatter_rows(x: Tensor, pos: Tensor, num_pairs: int) -> Tensor:
    """(P, D) rows: row pos[n, e] is x[n]."""
    n, d = x.shape
    xs = x.new_empty(num_pairs, d)
    if n and num_pairs:
        block_e, block_d = _blocks(pos.shape[1], d)
        _scatter_rows[(n, triton.cdiv(d, block_d))](
            x.contiguous(), pos, xs, d, pos.shape[1], BLOCK_E=block_e, BLOCK_D=block_d
        )
    return xs


def gather_sum(y: Tensor, pos: Tensor, w: Tensor | None, dtype: torch.dtype) -> Tensor:
    """(N, D): out[n] = sum over active e of w[n, e] * y[pos[n, e]] (w = 1 when None)."""
    n, e = pos.shape
    d = y.shape[1]
    out = y.new_empty(n, d, dtype=dtype)
    if n:
        block = block_size(d)
        w_arg = w.contiguous() if w is not None else pos  # unread when HAS_W is False
        _gather_sum[(n, triton.cdiv(d, block))](
            y.contiguous(), pos, w_arg, out, d, e, HAS_W=w is not None, BLOCK=block
        )
    return out


class ScatterRows(torch.autograd.Function):
    """x (N, D) -> expert-sorted rows (P, D); backward: per token, the sum of its rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pos: Tensor, num_pairs: int) -> Tensor:
        ctx.save_for_backward(pos)
        return scatter_rows(x, pos, num_pairs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (pos,) = ctx.saved_tensors
        return gather_sum(grad.contiguous(), pos, None, grad.dtype), None, None


class Combine(torch.autograd.Function):
    """Expert rows y (P, D) and routing weights w (N, E) -> sum_e w[n, e] y[pos[n, e]]."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, w: Tensor, pos: Tensor) -> Tensor:
        y, w = y.contiguous(), w.contiguous()
        ctx.save_for_backward(y, w, pos)
        return gather_sum(y, pos, w, y.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        y, w, pos = ctx.saved_tensors
        dy = torch.empty_like(y)
        dw = torch.empty(pos.shape, dtype=torch.float32, device=y.device)
        if pos.numel():
            d, e = y.shape[1], pos.shape[1]
            block_e, block_d = _blocks(e, d)
            _combine_backward[(pos.shape[0],)](
                grad.contiguous(), y, pos, w, dy, dw, d, e, BLOCK_E=block_e, BLOCK_D=block_d
            )
        return dy, dw.to(w.dtype), None
