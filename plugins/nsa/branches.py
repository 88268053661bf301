"""The three NSA branches on plain tensors, with explicit masks (the reference path).

Shapes: B batch, H heads, t new queries at positions ``q_pos`` (t,), T keys at positions
0..T-1 (T >= t; with a KV cache the keys include earlier tokens), Dh head width, l block
length, nb = T // l complete key blocks, nqb = ceil(T / l) query blocks.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor


def _up(x: Tensor) -> Tensor:
    """Scores in at least float32 (float64 stays float64, for the reference tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where ``mask`` holds; a row with nothing allowed gives 0."""
    if not scores.shape[-1]:  # no compressed block yet (a sequence shorter than a block)
        return scores
    scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).min)
    e = torch.exp(scores - top) * mask
    return e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v over the allowed pairs; q (B,H,t,Dh), mask (B|1,1,t,T)."""
    scores = _up(q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (masked_softmax(scores, mask).to(v.dtype) @ v).to(q.dtype)


def compressed_visible(q_pos: Tensor, nb: int, block: int, causal: bool) -> Tensor:
    """(t, nb) bool: query at q_pos may read compressed block j (causal: j wholly in its past)."""
    if not causal:
        return torch.ones(q_pos.shape[0], nb, dtype=torch.bool, device=q_pos.device)
    ends = torch.arange(nb, device=q_pos.device) * block + block - 1
    return ends[None, :] <= q_pos[:, None]


def shape_constant(fn):
    """Memoise ``fn``, whose tensors depend on shapes only (made once per shape; always
    ordinary tensors, also when first asked for under ``torch.inference_mode``)."""

    @functools.lru_cache(maxsize=32)
    def made(*args):
        with torch.inference_mode(False):
            return fn(*args)

    @functools.wraps(fn)
    def call(*args):
        if torch.compiler.is_compiling():  # traced: the constants fold into the graph
            return fn(*args)
        return made(*args)

    return call


class AdditiveMask(NamedTuple):
    """A boolean mask (t, n) in the form a plain softmax takes, made once per shape: ``bias``
    (t, n) float32, 0 where allowed and float32's lowest finite value elsewhere (its exp is
    exactly 0 beside any allowed score), and ``rows`` (t, 1) float32, 0 for a row that allows
    nothing (whose output, and gradient, :func:`softmax_where` zeroes)."""

    bias: Tensor
    rows: Tensor


def additive(mask: Tensor) -> AdditiveMask:
    bias = torch.zeros(mask.shape, device=mask.device).masked_fill(
        ~mask, torch.finfo(torch.float32).min
    )
    return AdditiveMask(bias, mask.any(-1, keepdim=True).to(torch.float32))


def softmax_where(scores: Tensor, mask: Tensor | AdditiveMask | None) -> Tensor:
    """:func:`masked_softmax` of ``scores`` over a boolean mask, an :class:`AdditiveMask`
    (three operations, not ten) or None (everything allowed)."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    if isinstance(mask, AdditiveMask):
        return torch.softmax(scores + mask.bias, dim=-1) * mask.rows
    return masked_softmax(scores, mask)


@shape_constant
def prefix_visible(total: int, nb: int, block: int, causal: bool, device) -> AdditiveMask | None:
    """:func:`compressed_visible` of the queries at 0..total-1 (None: all visible)."""
    if not causal:
        return None
    return additive(compressed_visible(torch.arange(total, device=device), nb, block, causal))


def compressed_attention(
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    q_pos: Tensor,
    block: int,
    causal: bool,
    visible: Tensor | AdditiveMask | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention over the compressed block tokens kc, vc (B,H,nb,Dh): (output, probabilities
    (B,H,t,nb)); ``visible``: :func:`compressed_visible` (or :func:`prefix_visible`) when the
    caller has it."""
    if visible is None:
        visible = compressed_visible(q_pos, kc.shape[2], block, causal)
    scores = _up(q @ kc.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B,H,t,nb)
    probs = softmax_where(scores, visible)
    return (probs.to(vc.dtype) @ vc).to(q.dtype), probs


def block_importance(
    q_all: Tensor, kc: Tensor, probs: Tensor | None, total: int, block: int, causal: bool
) -> Tensor:
    """(B, nqb, nb): how much each query block wants each key block, summed over heads.

    Selection is shared by the queries of a query block (and by the heads, as NSA shares it in
    a GQA group) so that the selected branch is block-sparse. Non-causal: the mean
    compressed-attention probability over the block's queries (``probs`` for all T queries).
    Causal: the probabilities of the last query *before* the block (position bq*l - 1), which
    sees every block j < bq complete; the block's own queries must not choose, since a later
    query of the block would then steer an earlier one (a leak from the future)."""
    nqb = -(-total // block)
    if causal:
        sel_pos, visible = _selecting_queries(nqb, kc.shape[2], block, kc.device)
        q_sel = q_all[:, :, sel_pos]  # (B,H,nqb,Dh)
        scores = _up(q_sel @ kc.transpose(-1, -2)) / math.sqrt(q_all.shape[-1])
        return softmax_where(scores, visible).sum(1)
    assert probs is not None
    b, h, t, nb = probs.shape
    pad = nqb * block - t
    summed = torch.nn.functional.pad(probs, (0, 0, 0, pad)).view(b, h, nqb, block, nb).sum(3)
    counts = torch.full((nqb,), float(block), device=probs.device)
    counts[-1] = block - pad
    return (summed / counts[:, None]).sum(1)


@shape_constant
def _selecting_queries(nqb: int, nb: int, block: int, device) -> tuple[Tensor, AdditiveMask]:
    """Causal selection: the position of the query that chooses for each query block (the last
    one before it, clamped to 0 for block 0) (nqb,), and the blocks it sees (nqb, nb)."""
    sel_pos = torch.arange(nqb, device=device) * block - 1  # (nqb,), -1 for block 0
    visible = compressed_visible(sel_pos, nb, block, causal=True)
    return sel_pos.clamp(min=0), additive(visible)


@shape_constant
def _selection_template(nqb: int, nb: int, causal: bool, device) -> Tensor:
    """(nqb, nkb) float32 added to the importance: +inf on the own block, -inf on blocks not
    complete (>= nb) and, causal, on blocks from the future, 0 elsewhere."""
    template = torch.zeros(nqb, nqb, device=device)
    template[:, nb:] = float("-inf")
    if causal:
        template = template.masked_fill(torch.ones_like(template).triu(1).bool(), float("-inf"))
    return template.fill_diagonal_(float("inf"))


def select_blocks(
    importance: Tensor, selected: int, block: int, total: int, causal: bool
) -> Tensor:
    """(B, nqb, nkb) bool over all key blocks (nkb = ceil(T/l)): the top ``selected`` blocks of
    each query block by importance, its own block always included (local context), causal
    blocks from the future never."""
    b, nqb, nb = importance.shape
    nkb = nqb
    # the importance is finite, so the template's infinities decide where they stand
    padded = torch.nn.functional.pad(importance.to(torch.float32), (0, nkb - nb))
    scores = padded + _selection_template(nqb, nb, causal, importance.device)
    k = min(selected, nkb)
    top = scores.topk(k, dim=-1)
    chosen = torch.zeros(b, nqb, nkb, dtype=torch.bool, device=importance.device)
    chosen.scatter_(-1, top.indices, top.values > float("-inf"))
    return chosen


def selected_mask(chosen: Tensor, q_pos: Tensor, total: int, block: int, causal: bool) -> Tensor:
    """(B,1,t,T) token mask of the selected branch from block choices (B,nqb,nkb)."""
    kv = torch.arange(total, device=q_pos.device)
    mask = chosen[:, q_pos // block][:, :, kv // block]  # (B,t,T)
    if causal:
        mask = mask & (kv[None, None, :] <= q_pos[None, :, None])
    return mask[:, None]


def window_mask(q_pos: Tensor, total: int, window: int, causal: bool) -> Tensor:
    """(1,1,t,T): causal, the last ``window`` positions up to the query; else |i - j| < window."""
    kv = torch.arange(total, device=q_pos.device)
    dist = q_pos[:, None] - kv[None, :]
    mask = (dist >= 0) & (dist < window) if causal else dist.abs() < window
    return mask[None, None]
