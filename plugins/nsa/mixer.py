"""``nsa``: Native Sparse Attention (seed 003; Yuan et al. 2025, DeepSeek)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import (
    BuildContext,
    ForwardContext,
    Linear,
    cache_slot,
    counting_flops,
    hookimpl,
    rope_span,
    trunc_normal_,
)
from ponderkit.plugins.layers.attention import check_attention
from ponderkit.plugins.nsa import branches, flex
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class NsaConfig:
    """Native Sparse Attention: compressed block tokens, top-n selected blocks, sliding window.

    Per head, three branches read the same RoPE'd queries and keys/values:
    - compressed: key block j (length ``block``, stride ``block``) becomes one token
      ``phi(k_block + pe)`` by a learned linear map of the flattened block (pe: learned
      intra-block positions), likewise for values; queries attend over these T/l tokens
      (causal: only blocks wholly in the past);
    - selected: the ``selected`` key blocks (own block included) that the compressed
      attention rates highest for the query's block are attended at full resolution;
    - window: the last ``window`` positions (causal) or those within ``window`` either side.
    Output ``sum_c g_c(h) * o_c`` with per-head sigmoid gates ``g = sigmoid(W_g h)`` (3 per
    head), then the output projection.

    Where this differs from the paper: one block size for compression, stride and selection
    (the paper allows l=32, d=16, l'=64), keys/values shared by the selected and window
    branches, and the selection shared by the queries of one query block (as the paper shares
    it across a GQA group's heads), which makes the selected branch exactly block-sparse;
    causal selection uses the last query before the block (see ``branches.block_importance``).
    ``kernel``: ``flex`` (FlexAttention block masks, compiled on CUDA), ``masked`` (explicit
    T x T masks; the reference), ``auto`` (flex on CUDA, masked elsewhere and for a prompt
    with a KV cache). Decoding one token at a time after a prompt takes its own path
    (:meth:`NativeSparseAttention.decode_step`) whatever the kernel."""

    #: attention heads
    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    #: width of a head (null: d_model / heads)
    head_dim: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    block: int = attrs.field(default=64, validator=attrs.validators.gt(0))
    selected: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    window: int = attrs.field(default=512, validator=attrs.validators.gt(0))
    #: mask attention to earlier positions (for autoregressive training)
    causal: bool = False
    kernel: Literal["auto", "flex", "masked"] = "auto"
    #: the FlexAttention tile (positions) the block masks are laid out in; None: ``block``.
    #: 128 by default: torch 2.11's compiled kernel on the H200 lowers no 64-position tile
    #: (benchmarks/results/nsa_h200_failed.log); the masks stay exact at ``block`` granularity.
    tile: int | None = attrs.field(
        default=128, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


class NativeSparseAttention(nn.Module):
    def __init__(self, cfg: NsaConfig, d_model: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim, self.causal = cfg.heads, head_dim, cfg.causal
        self.block, self.selected, self.window, self.kernel = (
            cfg.block,
            cfg.selected,
            cfg.window,
            cfg.kernel,
        )
        self.tile = cfg.tile or cfg.block
        width = cfg.heads * head_dim
        self.qkv = Linear(d_model, 3 * width)
        self.out = Linear(width, d_model)
        self.gate = Linear(d_model, 3 * cfg.heads, bias=True)
        self.block_pos = nn.Parameter(torch.empty(2, cfg.block, head_dim))  # pe for k, v
        trunc_normal_(self.block_pos, 1.0 / head_dim**0.5)
        self.compress_k = Linear(cfg.block * head_dim, head_dim)
        self.compress_v = Linear(cfg.block * head_dim, head_dim)

    def compress(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values (B,H,T,Dh) -> one token per complete block (B,H,nb,Dh)."""
        b, h, total, dh = k.shape
        nb = total // self.block
        out = []
        for x, pe, proj in ((k, 0, self.compress_k), (v, 1, self.compress_v)):
            blocks = x[:, :, : nb * self.block].reshape(b, h, nb, self.block, dh)
            blocks = blocks + self.block_pos[pe].to(x.dtype)
            out.append(proj(blocks.reshape(b, h, nb, self.block * dh)))
        return out[0], out[1]

    def forward(self, hidden: Tensor, ctx: ForwardContext) -> Tensor:
        b, t, _ = hidden.shape
        qkv = self.qkv(hidden).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        slot = cache_slot(ctx, self.causal)
        offset = ctx.cache.offset if slot is not None else 0
        qk = rope_span(qkv[:2], ctx, offset)  # (2, B, H, t, Dh): q and k in one call
        q, k, v = qk[0], qk[1], qkv[2]  # each (B, H, t, Dh)
        if slot is not None:
            k, v = ctx.cache.extend(slot, "k", k), ctx.cache.extend(slot, "v", v)
        if offset:
            if t != 1:
                raise RuntimeError("nsa continues a cached prefix one token at a time")
            o_cmp, o_slc, o_win = self.decode_step(q, k, v, slot, offset)
        else:
            o_cmp, o_slc, o_win = self.parallel(q, k, v, ctx, slot)
        g = torch.sigmoid(self.gate(hidden)).view(b, t, self.heads, 3).permute(3, 0, 2, 1)
        o = g[0, ..., None] * o_cmp + g[1, ..., None] * o_slc + g[2, ..., None] * o_win
        return self.out(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))

    def parallel(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: ForwardContext, slot: dict | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The three branches for every position of a whole sequence, q, k, v (B,H,T,Dh).
        With a cache ``slot`` (a prompt), keeps what :meth:`decode_step` continues from."""
        total = k.shape[2]
        q_pos = torch.arange(total, device=q.device)
        kc, vc = self.compress(k, v)
        visible = branches.prefix_visible(total, kc.shape[2], self.block, self.causal, q.device)
        o_cmp, probs = branches.compressed_attention(
            q, kc, vc, q_pos, self.block, self.causal, visible
        )
        importance = branches.block_importance(q, kc, probs, total, self.block, self.causal)
        chosen = branches.select_blocks(
            importance, self.selected, self.block, total, self.causal
        )  # (B, nqb, nkb)
        use_flex = self.kernel == "flex" or (
            self.kernel == "auto" and q.device.type == "cuda" and slot is None
        )
        # under torch's FlopCounterMode the compiled kernel cannot run: the count takes the
        # masked path, which counts every query-key pair (an upper bound of the sparse work)
        if use_flex and not counting_flops():
            sel = flex.selected_block_mask(chosen, total, self.block, self.causal, self.tile)
            win = flex.window_block_mask(1, total, self.tile, self.window, self.causal, q.device)
            o_slc, o_win = flex.flex(q, k, v, sel), flex.flex(q, k, v, win)
        else:
            sel = branches.selected_mask(chosen, q_pos, total, self.block, self.causal)
            win = branches.window_mask(q_pos, total, self.window, self.causal)
            o_slc = branches.masked_attention(q, k, v, sel)
            o_win = branches.masked_attention(q, k, v, win)
        if slot is not None:
            slot["kc"], slot["vc"], slot["q_last"] = kc, vc, q[:, :, -1:]
            slot["selected"] = self.selection_bias(chosen[:, -1], q.dtype)
        return o_cmp, o_slc, o_win

    def decode_step(
        self, q: Tensor, k: Tensor, v: Tensor, slot: dict, pos: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The three branches for one causal query q (B,H,1,Dh) at position ``pos`` over the
        cached keys and values k, v (B,H,pos+1,Dh), what :meth:`parallel` computes for that
        row, with the per-block work done once per block:

        - a block is compressed once, by the token that completes it (its compressed token
          depends on that block's keys and values only);
        - every complete block lies in the query's past, so the compressed branch needs no
          mask; none complete yet gives 0, as the masked softmax does;
        - the selection is shared by the queries of a block and read by the query before the
          block, so it is made once, by the block's first token (``branches.block_importance``
          and ``select_blocks`` for that row: the own block and the top ``selected - 1``
          earlier blocks);
        - the window is the last ``window`` keys, a slice."""
        block = self.block
        if (pos + 1) % block == 0:
            start = pos + 1 - block
            kc, vc = self.compress(k[:, :, start:], v[:, :, start:])
            slot["kc"] = torch.cat([slot["kc"], kc], dim=2)
            slot["vc"] = torch.cat([slot["vc"], vc], dim=2)
        kc, vc = slot["kc"], slot["vc"]  # (B, H, nb, Dh), nb = (pos + 1) // block
        if pos % block == 0:
            slot["selected"] = self.select_for_block(slot["q_last"], kc, pos // block)
        slot["q_last"] = q
        o_cmp = _attention(q, kc, vc) if kc.shape[2] else torch.zeros_like(q)
        o_slc = _attention(q, k, v, slot["selected"][:, :, :, : pos + 1])
        start = max(0, pos + 1 - self.window)
        o_win = _attention(q, k[:, :, start:], v[:, :, start:])
        return o_cmp, o_slc, o_win

    def selection_bias(self, chosen: Tensor, dtype: torch.dtype) -> Tensor:
        """Additive attention mask (B, 1, 1, nkb * l): 0 on the tokens of the key blocks
        ``chosen`` (B, nkb) bool, -inf elsewhere (made once per query block, where SDPA
        would turn a boolean mask into this at every token)."""
        tokens = chosen.repeat_interleave(self.block, dim=-1)[:, None, None]
        return torch.zeros(tokens.shape, dtype=dtype, device=tokens.device).masked_fill_(
            ~tokens, float("-inf")
        )

    def select_for_block(self, q_before: Tensor, kc: Tensor, qb: int) -> Tensor:
        """:meth:`selection_bias` of the blocks query block ``qb`` reads: its own and the top
        ``selected - 1`` of blocks 0..qb-1 (all complete) by the compressed-attention
        probabilities of ``q_before`` (B,H,1,Dh), the query at qb * l - 1, summed over heads."""
        b = kc.shape[0]
        scores = branches._up(q_before @ kc.transpose(-1, -2)) / self.head_dim**0.5
        importance = torch.softmax(scores, dim=-1).sum(1)[:, 0]  # (B, qb)
        chosen = torch.zeros(b, qb + 1, dtype=torch.bool, device=kc.device)
        chosen[:, qb] = True
        top = importance.topk(min(self.selected - 1, qb), dim=-1).indices
        chosen.scatter_(-1, top, True)
        return self.selection_bias(chosen, q_before.dtype)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(Dh) + mask) v; ``mask`` additive, every row with a finite entry."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def build_nsa(cfg: NsaConfig, ctx: BuildContext) -> NativeSparseAttention:
    return NativeSparseAttention(cfg, ctx.d_model, cfg.head_dim or ctx.d_model // cfg.heads)


def check_nsa(cfg: NsaConfig, env) -> list:
    problems = list(check_attention(cfg, env))
    if cfg.kernel == "flex" and (cfg.tile or cfg.block) < 16:
        where = "tile" if cfg.tile else "block"
        problems.append((where, f"the flex kernel needs tiles >= 16, got {cfg.tile or cfg.block}"))
    return problems


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("mixer", "nsa", NsaConfig, build_nsa, check=check_nsa)
