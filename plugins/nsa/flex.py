"""FlexAttention paths for the selected and window branches: block masks built directly from
block indices (no T x T mask is ever materialised), so a branch costs what it attends.

On CUDA ``flex_attention`` runs compiled (a fused block-sparse Triton kernel); elsewhere torch
runs it unfused (it materialises the scores), which is only useful to test these masks.
"""

from __future__ import annotations

import functools

import torch
from ponderkit.plugins.nsa.branches import shape_constant
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


def _indices(rows: Tensor | None, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(counts (B,1,nqb), indices (B,1,nqb,n)) of the key blocks ``rows[valid]``, valid first;
    ``rows`` None: the key blocks are the columns of ``valid`` themselves."""
    order = (~valid).to(torch.int8).argsort(dim=-1, stable=True)
    indices = order if rows is None else rows.gather(-1, order)
    return valid.sum(-1).to(torch.int32), indices.to(torch.int32)


def _from_rows(rows: Tensor | None, valid: Tensor, total: int, block: int, mask_mod, full=None):
    """A BlockMask whose query block i reads key blocks ``rows[..., i, :][valid]`` through
    ``mask_mod`` and the blocks ``rows[full]`` whole (no mask evaluated there); ``rows`` None:
    column j of ``valid`` and ``full`` is key block j.

    ``mask_mod`` must itself be exact: the kernel skips unread blocks, but torch's unfused
    path (CPU) evaluates ``mask_mod`` on every pair."""
    from torch.nn.attention.flex_attention import BlockMask

    nkb = -(-total // block)
    if valid.shape[-1] < nkb:  # BlockMask wants one index column per key block
        assert rows is not None
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


def _overlap(tiles: int, tile: int, blocks: int, block: int, device) -> Tensor:
    """(tiles, blocks) float: 1 where kernel tile i and NSA block j share a position."""
    t0 = torch.arange(tiles, device=device)[:, None] * tile
    b0 = torch.arange(blocks, device=device)[None, :] * block
    return ((b0 < t0 + tile) & (t0 < b0 + block)).to(torch.float32)


@shape_constant
def _tile_layout(total: int, block: int, tile: int, causal: bool, device) -> tuple:
    """What the selected branch's BlockMask needs that depends on the shapes only, made once
    per shape: the overlaps of query and key tiles with NSA blocks (nt, nqb) and (nt, nkb),
    the block pairs inside each tile pair (nt, nt), and where a tile may be read whole at all
    (not ragged, strictly below the diagonal under ``causal``) (nt, nt) bool."""
    nt, nb = -(-total // tile), -(-total // block)
    over = _overlap(nt, tile, nb, block, device)  # queries and keys share the block layout
    per_tile = over.sum(1)
    pairs = per_tile[:, None] * per_tile[None, :]
    may_be_whole = torch.ones(nt, nt, dtype=torch.bool, device=device)
    if total % tile:
        may_be_whole[:, -1] = False
    if causal:
        may_be_whole = may_be_whole.tril(-1)
    return over, pairs, may_be_whole


def selected_block_mask(chosen: Tensor, total: int, block: int, causal: bool, tile: int = 0):
    """From block choices (B,nqb,nkb) bool: the selected branch's BlockMask (heads shared).

    The mask is laid out in kernel tiles of ``tile`` positions (0: the NSA block itself), which
    need not equal the NSA ``block``: FlexAttention's compiled kernel on some GPUs lowers only
    tiles of 128. A tile is read when any NSA block pair inside it is chosen; it is read whole
    (no mask evaluated) only when every pair inside is chosen, it lies strictly below the
    diagonal under ``causal``, and it is not a ragged last tile; otherwise ``mask_mod`` keeps the
    choice exact at block granularity. With ``tile == block`` this is exactly block-sparse; a
    larger tile may read up to (tile/block)^2 block pairs for each chosen one."""
    tile = tile or block
    b, nqb, nkb = chosen.shape
    over, pairs, may_be_whole = _tile_layout(total, block, tile, causal, chosen.device)
    if tile % block == 0:  # whole NSA blocks per tile: the chosen pairs summed per tile pair
        per, pad = tile // block, -(-total // tile) * (tile // block) - nqb
        padded = torch.nn.functional.pad(chosen, (0, pad, 0, pad))
        hits = padded.view(b, -1, per, padded.shape[2] // per, per).sum((2, 4))  # (B, nt, nt)
    else:
        hits = torch.einsum("qi,bij,kj->bqk", over, chosen.to(torch.float32), over)
    read = (hits > 0)[:, None]  # (B, 1, nt, nt)
    whole = read & (hits == pairs)[:, None] & may_be_whole
    last_q, last_k = nqb - 1, nkb - 1

    def mod(b, h, q_idx, kv_idx):
        qb = torch.clamp(q_idx // block, max=last_q)
        kb = torch.clamp(kv_idx // block, max=last_k)
        inside = chosen[b, qb, kb] & (kv_idx < total)
        return inside & (kv_idx <= q_idx) if causal else inside

    return _from_rows(None, read & ~whole, total, tile, mod, whole)


@shape_constant
def window_block_mask(batch: int, total: int, block: int, window: int, causal: bool, device):
    """The sliding window's BlockMask: each query block reads the key blocks its window spans.
    It depends on the shapes only, so it is made once per shape (and reused: one object also
    keeps the compiled kernel's guards stable)."""
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
