"""Grouped GEMMs of our own, with the routing passes fused in (not a plugin module).

EXPERIMENTAL, NOT YET TIMED and not used by any layer: the first pieces of a dispatch whose
gather and SwiGLU live inside the GEMMs (see benchmarks/README.md, "DynMoE sparse dispatch",
for why the routed layer needs them to come within 1.3x of a dense one at D = 512).
``benchmarks/dispatch_kernels.py`` times them against torch's grouped GEMM; they join the
layer only if they beat it.

Rows are expert-sorted pair rows as :func:`.dispatch.plan_dispatch` lays them out: expert e
owns rows ``offsets[e-1] .. offsets[e]`` (device offsets, so no host sync), and row r reads
token ``src[r]`` of ``x`` (the gather happens in the GEMM's loads, no (P, D) copy of the
tokens).

- :func:`gather_swiglu_mm`: gu[r] = x[src[r]] @ W[e(r)] for W (E, D, 2H) = [gate | up], and
  h[r] = silu(gate) * up in the same kernel's epilogue (two accumulators per tile);
- :func:`swiglu_bwd_mm`: dh[r] = dy[r] @ down[e(r)]^T, and SwiGLU's backward in the epilogue:
  the gate/up gradient straight from the down projection's output gradient;
- :func:`gather_wgrad_mm`: dW[e] = sum over e's rows r of x[src[r]]^T g[r] (the weight
  gradient of the first projection, again reading the tokens through ``src``); an expert
  without rows gets 0.
"""

from __future__ import annotations

import torch
from ponderkit import kernels
from torch import Tensor

triton, tl, block_size = kernels.triton, kernels.tl, kernels.block_size

if triton is not None:

    @triton.jit
    def _expert_tile(offsets_ptr, tile, E, BM: tl.constexpr, BLOCK_E: tl.constexpr):
        """(expert, first row, end row) of M-tile ``tile`` when each expert's rows are cut into
        tiles of BM (expert E when ``tile`` is past the last one)."""
        ex = tl.arange(0, BLOCK_E)
        ends = tl.load(offsets_ptr + ex, mask=ex < E, other=0)
        starts = tl.load(offsets_ptr + ex - 1, mask=(ex > 0) & (ex < E), other=0)
        tiles = tl.where(ex < E, (ends - starts + BM - 1) // BM, 0)
        last = tl.cumsum(tiles, 0)  # one past each expert's last tile
        e = tl.sum((last <= tile).to(tl.int32), 0)
        pick = ex == e
        first_tile = tl.sum(tl.where(pick, last - tiles, 0), 0)
        row0 = tl.sum(tl.where(pick, starts, 0), 0) + (tile - first_tile) * BM
        return e, row0, tl.sum(tl.where(pick, ends, 0), 0)

    @triton.jit
    def _tile(offsets_ptr, E, H, BM: tl.constexpr, BN: tl.constexpr, BLOCK_E: tl.constexpr):
        """This program's expert, its rows (int64) and columns of H, with their masks."""
        e, row0, end = _expert_tile(offsets_ptr, tl.program_id(0), E, BM, BLOCK_E)
        rows = row0 + tl.arange(0, BM)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        return e, rows.to(tl.int64), rows < end, cols, cols < H

    @triton.jit
    def _gather_swiglu_mm(
        x_ptr, src_ptr, w_ptr, offsets_ptr, gu_ptr, h_ptr, K, H, E,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        e, rows, rin, cols, cin = _tile(offsets_ptr, E, H, BM, BN, BLOCK_E)
        if e < E:
            src = tl.load(src_ptr + rows, mask=rin, other=0).to(tl.int64)
            w = w_ptr + e.to(tl.int64) * K * 2 * H
            gate = tl.zeros([BM, BN], dtype=tl.float32)
            up = tl.zeros([BM, BN], dtype=tl.float32)
            for k0 in range(0, K, BK):
                ks = k0 + tl.arange(0, BK)
                kin = ks < K
                a = tl.load(x_ptr + src[:, None] * K + ks[None, :], rin[:, None] & kin[None, :], 0)
                at = ks[:, None] * 2 * H + cols[None, :]
                both = kin[:, None] & cin[None, :]
                gate = tl.dot(a, tl.load(w + at, mask=both, other=0.0), gate)
                up = tl.dot(a, tl.load(w + at + H, mask=both, other=0.0), up)
            out = rows[:, None] * 2 * H + cols[None, :]
            keep = rin[:, None] & cin[None, :]
            tl.store(gu_ptr + out, gate.to(gu_ptr.dtype.element_ty), mask=keep)
            tl.store(gu_ptr + out + H, up.to(gu_ptr.dtype.element_ty), mask=keep)
            hidden = gate * tl.sigmoid(gate) * up
            at = rows[:, None] * H + cols[None, :]
            tl.store(h_ptr + at, hidden.to(h_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _swiglu_bwd_mm(
        dy_ptr, w_ptr, offsets_ptr, gu_ptr, dgu_ptr, K, H, E,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        e, rows, rin, cols, cin = _tile(offsets_ptr, E, H, BM, BN, BLOCK_E)
        if e < E:
            w = w_ptr + e.to(tl.int64) * H * K  # down (E, H, D): B[d, h] = down[e, h, d]
            dh = tl.zeros([BM, BN], dtype=tl.float32)
            for k0 in range(0, K, BK):
                ks = k0 + tl.arange(0, BK)
                kin = ks < K
                a = tl.load(
                    dy_ptr + rows[:, None] * K + ks[None, :], rin[:, None] & kin[None, :], 0
                )
                b = tl.load(w + cols[None, :] * K + ks[:, None], kin[:, None] & cin[None, :], 0)
                dh = tl.dot(a, b, dh)
            # SwiGLU's backward in the epilogue: h = silu(gate) * up
            at = rows[:, None] * 2 * H + cols[None, :]
            keep = rin[:, None] & cin[None, :]
            gate = tl.load(gu_ptr + at, mask=keep, other=0.0).to(tl.float32)
            up = tl.load(gu_ptr + at + H, mask=keep, other=0.0).to(tl.float32)
            sig = tl.sigmoid(gate)
            dgate = dh * up * sig * (1.0 + gate * (1.0 - sig))
            tl.store(dgu_ptr + at, dgate.to(dgu_ptr.dtype.element_ty), mask=keep)
            tl.store(dgu_ptr + at + H, (dh * gate * sig).to(dgu_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def _gather_wgrad_mm(
        x_ptr, src_ptr, g_ptr, offsets_ptr, dw_ptr, K, N, E,
        BR: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        e = tl.program_id(0)
        start = tl.load(offsets_ptr + e - 1, mask=e > 0, other=0)
        end = tl.load(offsets_ptr + e)
        ks = tl.program_id(1) * BK + tl.arange(0, BK)
        kin = ks < K
        cols = tl.program_id(2) * BN + tl.arange(0, BN)
        cin = cols < N
        acc = tl.zeros([BK, BN], dtype=tl.float32)
        for r0 in range(start, end, BR):
            rows = r0 + tl.arange(0, BR)
            rin = rows < end
            src = tl.load(src_ptr + rows, mask=rin, other=0).to(tl.int64)
            a = tl.load(x_ptr + src[None, :] * K + ks[:, None], kin[:, None] & rin[None, :], 0)
            g = tl.load(g_ptr + rows[:, None].to(tl.int64) * N + cols[None, :],
                        rin[:, None] & cin[None, :], 0)  # fmt: skip
            acc = tl.dot(a, g, acc)
        out = dw_ptr + e.to(tl.int64) * K * N + ks[:, None] * N + cols[None, :]
        tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=kin[:, None] & cin[None, :])


#: tile sizes (rows, columns, reduction) of the two kernels
TILES = {"swiglu": (128, 64, 64), "wgrad": (64, 64, 128)}


def gather_swiglu_mm(
    x: Tensor, src: Tensor, weight: Tensor, offsets: Tensor, rows: int
) -> tuple[Tensor, Tensor]:
    """(gu (rows, 2H), h (rows, H)): gu[r] = x[src[r]] @ weight[e(r)], h = silu(gate) * up,
    for ``weight`` (E, D, 2H) and device ``offsets`` (E,) (cumulative rows per expert);
    rows past ``offsets[-1]`` are left unwritten."""
    e, k, two_h = weight.shape
    h = two_h // 2
    gu = x.new_empty(rows, two_h)
    hidden = x.new_empty(rows, h)
    bm, bn, bk = TILES["swiglu"]
    if rows:
        grid = (triton.cdiv(rows, bm) + e, triton.cdiv(h, bn))
        _gather_swiglu_mm[grid](
            x.contiguous(), src, weight.to(x.dtype).contiguous(), offsets, gu, hidden, k, h, e,
            BM=bm, BN=bn, BK=bk, BLOCK_E=block_size(e, cap=1 << 30),
        )  # fmt: skip
    return gu, hidden


def swiglu_bwd_mm(dy: Tensor, down: Tensor, gate_up: Tensor, offsets: Tensor, rows: int) -> Tensor:
    """The gradient of the gate/up rows (rows, 2H) of a SwiGLU expert layer from the gradient
    ``dy`` (rows, D) of its output: dh = dy @ down[e]^T, then SwiGLU's backward on
    ``gate_up`` (rows, 2H) in the same kernel's epilogue (no (rows, H) hidden gradient in
    memory); rows past ``offsets[-1]`` are left unwritten."""
    e, h, d = down.shape
    dgu = gate_up.new_empty(rows, 2 * h)
    bm, bn, bk = TILES["swiglu"]
    if rows:
        grid = (triton.cdiv(rows, bm) + e, triton.cdiv(h, bn))
        _swiglu_bwd_mm[grid](
            dy.contiguous(), down.to(dy.dtype).contiguous(), offsets, gate_up.contiguous(), dgu,
            d, h, e, BM=bm, BN=bn, BK=bk, BLOCK_E=block_size(e, cap=1 << 30),
        )  # fmt: skip
    return dgu


def gather_wgrad_mm(x: Tensor, src: Tensor, grad: Tensor, offsets: Tensor) -> Tensor:
    """(E, D, N) float32: per expert e, the sum over its rows r of x[src[r]]^T grad[r]."""
    n = grad.shape[1]
    e, k = offsets.shape[0], x.shape[1]
    dw = torch.empty(e, k, n, dtype=torch.float32, device=x.device)
    br, bk, bn = TILES["wgrad"]
    if e:
        _gather_wgrad_mm[(e, triton.cdiv(k, bk), triton.cdiv(n, bn))](
            x.contiguous(), src, grad.contiguous(), offsets, dw, k, n, e, BR=br, BK=bk, BN=bn
        )
    return dw
