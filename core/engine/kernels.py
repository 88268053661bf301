"""Hand-written GPU kernels (Triton) and when to use them.

Triton kernels run where they pay: CUDA tensors of a floating dtype Triton handles (fp16, bf16,
fp32), in eager mode. Under ``torch.compile`` the plain torch expressions are used instead
(inductor fuses them itself), as on CPU and wherever Triton is not installed. Two switches:

- ``PONDERKIT_TRITON=0`` turns every kernel off (the torch expressions everywhere), for A/B
  measurements and as an escape hatch;
- ``TRITON_INTERPRET=1`` (Triton's interpreter) runs the kernels on CPU tensors, so tests
  check them against the torch expressions on a machine without a GPU. Set it before this
  module is imported.

:func:`swiglu` is the first such kernel: silu(gate) * up of a concatenated ``gate | up``
projection in one pass, forward and backward (the backward writes the gradient of the
concatenated input directly, no concatenation of two halves).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

try:  # an optional dependency: CUDA builds of torch ship it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_enabled() -> bool:
    """Triton is installed and not switched off with ``PONDERKIT_TRITON=0``."""
    return triton is not None and os.environ.get("PONDERKIT_TRITON", "1") != "0"


def use_triton(*tensors: Tensor) -> bool:
    """Whether a kernel should run on ``tensors``: all on CUDA (on CPU under Triton's
    interpreter), of a dtype the kernels handle, and not while torch.compile traces."""
    if not triton_enabled() or torch.compiler.is_compiling():
        return False
    device = "cpu" if INTERPRET else "cuda"
    return all(t.device.type == device and t.dtype in _DTYPES for t in tensors)


def block_size(n: int, cap: int = 1024) -> int:
    """The power of two >= ``n`` (at least 16), at most ``cap``."""
    return max(16, min(cap, 1 << max(n - 1, 0).bit_length()))


def swiglu(gate_up: Tensor, rows: Tensor | None = None) -> Tensor:
    """silu(gate) * up for ``gate_up`` (..., 2H) = [gate | up]: (..., H).

    ``rows``, a one-element int32 tensor on the device of ``gate_up`` (2-D), says how many
    leading rows hold data (a buffer sized for the most rows it could need, filled to a count
    known only on the device): the kernels then compute those rows and leave the others
    unwritten, forward and backward, without a host sync. The torch expressions compute
    every row."""
    if use_triton(gate_up) and gate_up.shape[-1] % 2 == 0:
        return _SwiGLU.apply(gate_up, rows)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


if triton is not None:

    @triton.jit
    def _swiglu_fwd(gu_ptr, h_ptr, rows_ptr, N, H, HAS_ROWS: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < H
        n = tl.load(rows_ptr) if HAS_ROWS else N  # rows holding data
        for r in range(tl.program_id(0), n, tl.num_programs(0)):
            row = tl.cast(r, tl.int64)
            gate = tl.load(gu_ptr + row * 2 * H + cols, mask=inside, other=0.0).to(tl.float32)
            up = tl.load(gu_ptr + row * 2 * H + H + cols, mask=inside, other=0.0).to(tl.float32)
            h = gate * tl.sigmoid(gate) * up
            tl.store(h_ptr + row * H + cols, h.to(h_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _swiglu_bwd(
        gu_ptr, dh_ptr, dgu_ptr, rows_ptr, N, H, HAS_ROWS: tl.constexpr, BLOCK: tl.constexpr
    ):
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = cols < H
        n = tl.load(rows_ptr) if HAS_ROWS else N
        for r in range(tl.program_id(0), n, tl.num_programs(0)):
            row = tl.cast(r, tl.int64)
            gate = tl.load(gu_ptr + row * 2 * H + cols, mask=inside, other=0.0).to(tl.float32)
            up = tl.load(gu_ptr + row * 2 * H + H + cols, mask=inside, other=0.0).to(tl.float32)
            dh = tl.load(dh_ptr + row * H + cols, mask=inside, other=0.0).to(tl.float32)
            sig = tl.sigmoid(gate)
            silu = gate * sig
            dgate = dh * up * sig * (1.0 + gate * (1.0 - sig))
            out = dgu_ptr.dtype.element_ty
            tl.store(dgu_ptr + row * 2 * H + cols, dgate.to(out), mask=inside)
            tl.store(dgu_ptr + row * 2 * H + H + cols, (dh * silu).to(out), mask=inside)


#: programs per column block when only a device-side count of rows is known (each loops over
#: rows with this stride)
_ROW_PROGRAMS = 4096


def _swiglu_grid(n: int, hidden: int, block: int, rows: Tensor | None) -> tuple[int, int]:
    return (n if rows is None else min(n, _ROW_PROGRAMS), triton.cdiv(hidden, block))


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, gate_up: Tensor, rows: Tensor | None) -> Tensor:
        *lead, two_h = gate_up.shape
        hidden = two_h // 2
        gu = gate_up.reshape(-1, two_h).contiguous()
        h = gu.new_empty(gu.shape[0], hidden)
        block = block_size(hidden)
        n = gu.shape[0]
        if n:
            grid = _swiglu_grid(n, hidden, block, rows)
            row_arg = gu if rows is None else rows  # unread without HAS_ROWS
            _swiglu_fwd[grid](gu, h, row_arg, n, hidden, HAS_ROWS=rows is not None, BLOCK=block)
        ctx.save_for_backward(gu, rows)
        ctx.lead = lead
        return h.view(*lead, hidden)

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor, None]:
        gu, rows = ctx.saved_tensors
        hidden = gu.shape[1] // 2
        dh = dh.reshape(-1, hidden).contiguous()
        dgu = torch.empty_like(gu)
        block = block_size(hidden)
        n = gu.shape[0]
        if n:
            grid = _swiglu_grid(n, hidden, block, rows)
            row_arg = gu if rows is None else rows
            _swiglu_bwd[grid](
                gu, dh, dgu, row_arg, n, hidden, HAS_ROWS=rows is not None, BLOCK=block
            )
        return dgu.view(*ctx.lead, 2 * hidden), None
