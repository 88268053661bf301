"""FlexAttention paths for the selected and window branches: block masks built directly from
block indices (no T x T mask is ever materialised), so a branch costs what it attends.

On CUDA ``flex_attention`` runs compiled (a fused block-sparse Triton kernel); elsewhere torch
runs it unfused (it materialises the scores), which is only useful to test these masks.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex(q: Tensor, k: Tensor, v: Tensor, block_mask) -> Tensor:
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():  # the unfused fallback warns on every call
        warnings.simplefilter("ignore")
        return flex_attention(q, k, v, block_mask=block_mask)


def _indices(rows: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(counts (B,1,nqb), indices (B,1,nqb,n)) of the key blocks ``rows[valid]``, valid first."""
    order = (~valid).to(torch.int8).argsort(dim=-1, stable=True)
    return valid.sum(-1).to(torch.int32), rows.gather(-1, order).to(torch.int32)


def _from_rows(rows: Tensor, valid: Tensor, total: int, block: int, mask_mod, full=None):
    """A BlockMask whose query block i reads key blocks ``rows[..., i, :][valid]`` through
    ``mask_mod`` and the blocks ``rows[full]`` whole (no mask evaluated there).

    ``mask_mod`` must itself be exact: the kernel skips unread blocks, but torch's unfused
    path (CPU) evaluates ``mask_mod`` on every pair."""
    from torch.nn.attention.flex_attention import BlockMask

    nkb = -(-total // block)
    if rows.shape[-1] < nkb:  # BlockMask wants one index column per key block
        pad = (0, nkb - rows.shape[-1])
        rows = torch.nn.functional.pad(rows, pad)
        valid = torch.nn.functional.pad(valid, pad)
        full = None if full is None else torch.nn.functional.pad(full, pad)
    counts, indices = _indices(rows, valid)
    full_counts, full_indices = _indices(rows, full) if full is not None else (None, None)
    return BlockMask.from_kv_blocks(
        counts,
        indices,
        full_counts,
        full_indices,
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(total, total),
    )


def selected_block_mask(chosen: Tensor, total: int, block: int, causal: bool):
    """From block choices (B,nqb,nkb) bool: the selected branch's BlockMask (heads shared).

    Chosen blocks are read whole, except the own (diagonal) block under ``causal`` and a
    ragged last block, which go through the mask."""
    b, nqb, nkb = chosen.shape
    rows = torch.arange(nkb, device=chosen.device).expand(b, 1, nqb, nkb)
    ragged = torch.zeros(nqb, nkb, dtype=torch.bool, device=chosen.device)
    if total % block:
        ragged[:, -1] = True
    if causal:
        ragged |= torch.eye(nqb, nkb, dtype=torch.bool, device=chosen.device)
    partial = (chosen & ragged)[:, None]  # (B,1,nqb,nkb)
    full = (chosen & ~ragged)[:, None]

    def mod(b, h, q_idx, kv_idx):
        inside = chosen[b, q_idx // block, kv_idx // block] & (kv_idx < total)
        return inside & (kv_idx <= q_idx) if causal else inside

    return _from_rows(rows, partial, total, block, mod, full)


def window_block_mask(batch: int, total: int, block: int, window: int, causal: bool, device):
    """The sliding window's BlockMask: each query block reads the key blocks its window spans."""
    nqb = -(-total // block)
    reach = -(-(window - 1) // block)  # key blocks the window reaches beyond the own one
    span = reach + 1 if causal else 2 * reach + 1
    qb = torch.arange(nqb, device=device)
    first = qb - reach
    rows = first[:, None] + torch.arange(span, device=device)[None, :]  # (nqb, span)
    valid = (rows >= 0) & (rows < nqb)
    rows = rows.clamp(0, nqb - 1)

    def mod(b, h, q_idx, kv_idx):
        dist = q_idx - kv_idx
        inside = (dist >= 0) & (dist < window) if causal else (dist < window) & (-dist < window)
        return inside & (kv_idx < total)

    shape = (batch, 1, nqb, span)
    return _from_rows(rows.expand(shape), valid.expand(shape), total, block, mod)
