"""NSA against independent references: full attention, brute-force branches, causality."""

from __future__ import annotations

import math

import pytest
import torch
from ponderkit import ForwardContext
from ponderkit.plugins.nsa.mixer import NativeSparseAttention, NsaConfig

D, H, DH = 16, 2, 8


def make(gates: tuple[float, float, float], **kw) -> NativeSparseAttention:
    """An NSA in float64 whose gates are the constants sigmoid(gates) (weights zeroed)."""
    torch.manual_seed(0)
    m = NativeSparseAttention(NsaConfig(heads=H, **kw), D, DH).double()
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.bias.copy_(torch.tensor(gates, dtype=torch.float64).repeat(H))
    return m


def projections(m: NativeSparseAttention, h: torch.Tensor):
    b, t, _ = h.shape
    q, k, v = m.qkv(h).view(b, t, 3, H, DH).permute(2, 0, 3, 1, 4)
    return q, k, v


def brute_attend(q, k, v, allowed) -> torch.Tensor:
    """Loop over (b, h, i): softmax over the keys ``allowed(b, i)`` lists, 0 when none."""
    b_, h_, t, _ = q.shape
    out = torch.zeros_like(q)
    for b in range(b_):
        for h in range(h_):
            for i in range(t):
                js = allowed(b, i)
                if not js:
                    continue
                s = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(DH) for j in js])
                w = torch.exp(s - s.max())
                out[b, h, i] = sum(wj * v[b, h, j] for wj, j in zip(w / w.sum(), js, strict=True))
    return out


def finish(m, o):
    b, _, t, _ = o.shape
    return m.out(o.transpose(1, 2).reshape(b, t, H * DH))


CTX = ForwardContext(positions="none")
BIG = 1e4  # sigmoid(+-1e4) is exactly 1 / 0 in float64


@pytest.mark.parametrize("causal", [False, True])
def test_full_window_and_all_blocks_equal_full_attention(causal):
    t = 24
    m = make((-BIG, 0.0, 0.0), block=4, selected=t // 4, window=t, causal=causal, kernel="masked")
    h = torch.randn(2, t, D, dtype=torch.float64)
    q, k, v = projections(m, h)
    scores = q @ k.transpose(-1, -2) / math.sqrt(DH)
    if causal:
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    full = torch.softmax(scores, -1) @ v  # the two gates of 1/2 add up to full attention
    torch.testing.assert_close(m(h, CTX), finish(m, full), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", ["masked", "flex"])
def test_window_branch_against_brute_force(causal, kernel):
    t, w = 20, 5
    m = make((-BIG, -BIG, BIG), block=4, selected=2, window=w, causal=causal, kernel=kernel)
    h = torch.randn(2, t, D, dtype=torch.float64)
    q, k, v = projections(m, h)

    def allowed(b, i):
        return [j for j in range(t) if (0 <= i - j < w if causal else abs(i - j) < w)]

    with torch.no_grad():
        torch.testing.assert_close(m(h, CTX), finish(m, brute_attend(q, k, v, allowed)))


@pytest.mark.parametrize("causal", [False, True])
def test_compressed_branch_against_brute_force(causal):
    t, blk = 22, 4  # a ragged tail: 5 complete blocks, 2 tokens left over
    m = make((BIG, -BIG, -BIG), block=blk, selected=2, window=3, causal=causal, kernel="masked")
    h = torch.randn(2, t, D, dtype=torch.float64)
    q, k, v = projections(m, h)
    nb = t // blk
    # phi by hand: flatten each block plus its intra-block positions, then the linear map
    kc = torch.stack(
        [
            m.compress_k((k[:, :, j * blk : (j + 1) * blk] + m.block_pos[0]).flatten(-2))
            for j in range(nb)
        ],
        2,
    )
    vc = torch.stack(
        [
            m.compress_v((v[:, :, j * blk : (j + 1) * blk] + m.block_pos[1]).flatten(-2))
            for j in range(nb)
        ],
        2,
    )

    def allowed(b, i):
        return [j for j in range(nb) if not causal or (j + 1) * blk - 1 <= i]

    ref = brute_attend(q, kc, vc, allowed)
    torch.testing.assert_close(m(h, CTX), finish(m, ref))


@pytest.mark.parametrize("kernel", ["masked", "flex"])
@torch.no_grad()
def test_selected_branch_against_brute_force(kernel):
    """Causal selection: query block c reads its own block plus the n-1 past blocks that the
    query at c*l - 1 rates highest (compressed attention probabilities summed over heads)."""
    t, blk, n = 24, 4, 3
    m = make((-BIG, BIG, -BIG), block=blk, selected=n, window=3, causal=True, kernel=kernel)
    h = torch.randn(2, t, D, dtype=torch.float64)
    q, k, v = projections(m, h)
    kc, _ = m.compress(k, v)
    picks = {}
    for b in range(2):
        for c in range(t // blk):
            past = list(range(c))
            if past:
                s = torch.einsum("hd,hjd->hj", q[b, :, c * blk - 1], kc[b, :, :c]) / math.sqrt(DH)
                score = torch.softmax(s, -1).sum(0)  # (c,)
                past = sorted(past, key=lambda j: -float(score[j]))[: n - 1]
            picks[b, c] = set(past) | {c}

    def allowed(b, i):
        return [j for j in range(i + 1) if j // blk in picks[b, i // blk]]

    with torch.no_grad():
        torch.testing.assert_close(m(h, CTX), finish(m, brute_attend(q, k, v, allowed)))


@pytest.mark.parametrize("positions", ["none", "rope"])
def test_causal_nsa_leaks_nothing_from_the_future(positions):
    t = 32
    m = make((0.3, -0.2, 0.1), block=4, selected=3, window=6, causal=True, kernel="masked")
    torch.nn.init.normal_(m.gate.weight, std=0.3)
    h = torch.randn(2, t, D, dtype=torch.float64)
    ctx = ForwardContext(positions=positions)
    base = m(h, ctx)
    for j in (1, 5, 8, 13, 31):  # inside blocks and at block starts
        g = h.clone()
        g[:, j] += torch.randn(D, dtype=torch.float64)
        out = m(g, ForwardContext(positions=positions))
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-6  # the perturbation does reach j


def test_non_causal_nsa_does_see_the_future():
    m = make((0.0, 0.0, 0.0), block=4, selected=2, window=6, causal=False, kernel="masked")
    h = torch.randn(1, 16, D, dtype=torch.float64)
    g = h.clone()
    g[:, 12] += 1.0
    assert (m(g, CTX)[:, :12] - m(h, CTX)[:, :12]).abs().max() > 1e-6


def kernel_view(bm, batch: int, total: int) -> torch.Tensor:
    """The (B, T, T) pairs a block-sparse kernel computes from a BlockMask: ``mask_mod`` on the
    partial tiles it lists, every pair of its full tiles, nothing elsewhere."""
    tile = bm.BLOCK_SIZE[0]
    out = torch.zeros(batch, total, total, dtype=torch.bool)
    lists = [(bm.kv_num_blocks, bm.kv_indices, False)]
    if bm.full_kv_num_blocks is not None:
        lists.append((bm.full_kv_num_blocks, bm.full_kv_indices, True))
    for b in range(batch):
        bb = min(b, bm.kv_num_blocks.shape[0] - 1)
        for counts, indices, whole in lists:
            for qt in range(counts.shape[-1]):
                for kt in indices[bb, 0, qt, : int(counts[bb, 0, qt])].tolist():
                    q = torch.arange(qt * tile, min((qt + 1) * tile, total))[:, None]
                    k = torch.arange(kt * tile, min((kt + 1) * tile, total))[None, :]
                    assert not out[b, q, k].any(), "a tile listed twice"
                    if whole:
                        out[b, q, k] = True
                    else:
                        out[b, q, k] = bm.mask_mod(torch.tensor(b), torch.tensor(0), q, k)
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("total", "block", "tile"), [(40, 4, 4), (40, 4, 16), (37, 4, 8),
                                                      (50, 8, 16), (45, 16, 8), (130, 16, 128)])  # fmt: skip
def test_tiled_block_masks_are_exact(causal, total, block, tile):
    """The masks laid out in kernel tiles larger (or smaller) than the NSA block let a kernel
    compute exactly the chosen block pairs and the window, whatever it skips."""
    from ponderkit.plugins.nsa import flex

    g = torch.Generator().manual_seed(total + block + tile)
    nb = -(-total // block)
    chosen = torch.rand(2, nb, nb, generator=g) < 0.4
    chosen[:, -1] = True  # some tiles wholly chosen, so full tiles are exercised
    i = torch.arange(total)
    want = chosen[:, i[:, None] // block, i[None, :] // block]
    if causal:
        want &= i[None, :] <= i[:, None]
    bm = flex.selected_block_mask(chosen, total, block, causal, tile)
    assert torch.equal(kernel_view(bm, 2, total), want)
    window = 7
    d = i[:, None] - i[None, :]
    want_w = ((d >= 0) & (d < window)) if causal else (d.abs() < window)
    bm = flex.window_block_mask(1, total, tile, window, causal, "cpu")
    assert torch.equal(kernel_view(bm, 1, total)[0], want_w)


@pytest.mark.parametrize("prompt", [1, 4, 6])
@pytest.mark.parametrize("capacity", [None, 40, 20])  # cat per token, buffers, buffers outgrown
def test_decoding_token_by_token_equals_the_parallel_masked_forward(prompt, capacity):
    """A prompt, then one token at a time through the KV cache (blocks compressed as they
    complete, a selection made per query block, the window sliced) gives, row for row, the
    explicit-mask parallel forward of the whole sequence; float64. 8 blocks of 4 with 2
    selected and a window of 5: selection and window both drop most of the past."""
    from ponderkit import KVCache

    t = 32
    m = make((0.3, -0.2, 0.1), block=4, selected=2, window=5, causal=True, kernel="masked")
    torch.nn.init.normal_(m.gate.weight, std=0.3)
    h = torch.randn(3, t, D, dtype=torch.float64)
    with torch.no_grad():
        full = m(h, ForwardContext(positions="rope"))
        cache = KVCache(capacity=capacity)
        rows = []
        for start, end in [(0, prompt), *((i, i + 1) for i in range(prompt, t))]:
            ctx = ForwardContext(positions="rope", cache=cache)
            cache.begin()
            rows.append(m(h[:, start:end], ctx))
            cache.advance(end - start)
    torch.testing.assert_close(torch.cat(rows, 1), full, rtol=1e-10, atol=1e-10)


def test_rope_tables_grown_for_decoding_equal_fresh_ones():
    ctx = ForwardContext(positions="rope")
    for n in (3, 4, 9, 5, 30):
        cos, sin = ctx.rope(n, DH, torch.device("cpu"))
        fresh_cos, fresh_sin = ForwardContext(positions="rope").rope(n, DH, torch.device("cpu"))
        assert cos.shape == (n, DH)
        torch.testing.assert_close(cos, fresh_cos, rtol=0, atol=1e-7)
        torch.testing.assert_close(sin, fresh_sin, rtol=0, atol=1e-7)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("total", [24, 27])  # whole blocks, and a ragged last block
@pytest.mark.parametrize("n", [3, 9])  # some blocks, more than there are
def test_select_blocks_against_brute_force(causal, total, n):
    """Each query block: its own block, plus the ``selected - 1`` complete blocks (causal: not
    from the future) of highest importance."""
    from ponderkit.plugins.nsa.branches import select_blocks

    blk = 4
    nqb, nb = -(-total // blk), total // blk
    importance = torch.rand(2, nqb, nb, dtype=torch.float64)
    chosen = select_blocks(importance, n, blk, total, causal)
    for b in range(2):
        for qb in range(nqb):
            rest = [j for j in range(nb) if j != qb and (not causal or j < qb)]
            rest = sorted(rest, key=lambda j: -float(importance[b, qb, j]))[: n - 1]
            assert {int(j) for j in chosen[b, qb].nonzero()} == {qb, *rest}


def test_additive_mask_softmax_equals_the_masked_softmax_with_gradients():
    """The compressed branch's softmax through a cached additive mask: the same probabilities
    and gradients as the boolean masked softmax (float64), 0 on rows that allow nothing."""
    from ponderkit.plugins.nsa.branches import additive, masked_softmax, softmax_where

    mask = torch.rand(7, 5) < 0.5
    mask[2] = False  # a row with nothing visible
    scores = (10 * torch.randn(2, 3, 7, 5, dtype=torch.float64)).requires_grad_()
    upstream = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    outs, grads = [], []
    for fn in (lambda s: masked_softmax(s, mask), lambda s: softmax_where(s, additive(mask))):
        out = fn(scores)
        (grad,) = torch.autograd.grad((out * upstream).sum(), scores)
        outs.append(out)
        grads.append(grad)
    assert (outs[1][..., 2, :] == 0).all() and (grads[1][..., 2, :] == 0).all()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
