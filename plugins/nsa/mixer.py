"""``nsa``: Native Sparse Attention (seed 003; Yuan et al. 2025, DeepSeek)."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, hookimpl, trunc_normal_
from ponderkit.plugins.layers.attention import check_attention, extend_cache, rope_at
from ponderkit.plugins.nsa import branches, flex
from torch import Tensor, nn


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
    T x T masks; the reference), ``auto`` (flex on CUDA, masked elsewhere and when decoding)."""

    heads: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    head_dim: int | None = None
    block: int = attrs.field(default=64, validator=attrs.validators.gt(0))
    selected: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    window: int = attrs.field(default=512, validator=attrs.validators.gt(0))
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
        qkv = self.qkv(hidden).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, t, Dh)
        start = ctx.cache.offset if ctx.cache is not None else 0
        q, k = rope_at(q, k, ctx, start)
        # the cache keeps queries too: causal selection reads the query before each block
        offset, kv = extend_cache(ctx, self.causal, q=q, k=k, v=v)
        q_all, k, v = kv["q"], kv["k"], kv["v"]  # (B, H, T, Dh)
        total = k.shape[2]
        q_pos = torch.arange(offset, offset + t, device=hidden.device)
        kc, vc = self.compress(k, v)
        o_cmp, probs = branches.compressed_attention(q, kc, vc, q_pos, self.block, self.causal)
        importance = branches.block_importance(q_all, kc, probs, total, self.block, self.causal)
        chosen = branches.select_blocks(
            importance, self.selected, self.block, total, self.causal
        )  # (B, nqb, nkb)
        use_flex = self.kernel == "flex" or (
            self.kernel == "auto" and hidden.device.type == "cuda" and ctx.cache is None
        )
        if use_flex and offset == 0:
            sel = flex.selected_block_mask(chosen, total, self.block, self.causal, self.tile)
            win = flex.window_block_mask(1, total, self.tile, self.window, self.causal, q.device)
            o_slc, o_win = flex.flex(q, k, v, sel), flex.flex(q, k, v, win)
        else:
            sel = branches.selected_mask(chosen, q_pos, total, self.block, self.causal)
            win = branches.window_mask(q_pos, total, self.window, self.causal)
            o_slc = branches.masked_attention(q, k, v, sel)
            o_win = branches.masked_attention(q, k, v, win)
        g = torch.sigmoid(self.gate(hidden)).view(b, t, self.heads, 3).permute(3, 0, 2, 1)
        o = g[0, ..., None] * o_cmp + g[1, ..., None] * o_slc + g[2, ..., None] * o_win
        return self.out(o.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


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
