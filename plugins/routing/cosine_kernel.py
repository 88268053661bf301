"""The ``cosine_threshold`` router as one Triton kernel forward and one backward (not a plugin
module; :mod:`.cosine_threshold` uses it on CUDA when Triton runs).

Forward, per block of tokens with all E experts in registers: cos = (x . w_e) / |x| (the
prototypes normalised by the caller; fp32 products for fp32 tokens, tf32 tensor-core products
for half-precision ones, see :data:`TUNING`), fired = cos > G_e on enabled experts, the
top-``min_experts`` fallback where nothing fired, then the weights (1/K, or a softmax of
tau * cos over the active experts). Backward: the straight-through gradient through
sigmoid(tau * (cos - G)), the softmax's own gradient, and the chain through cos = dot / |x| in
the same pass, with the input gradient and each block's share of the threshold gradient; the
prototype gradient is one cuBLAS call. The forward also counts tokens per expert and active
experts per token (the router's statistics and the sparsity loss need no torch reductions).

The routing equals the torch expressions of :class:`CosineThresholdRouter` (tested through
Triton's interpreter, in fp32), except that ties between equal cosines in the fallback may break
differently; for half-precision tokens, cosines within about 1e-6 of a threshold may too.
"""

from __future__ import annotations

from typing import Any

import torch
from ponderkit import kernels
from torch import Tensor

triton, tl = kernels.triton, kernels.tl

#: more experts than this route through the torch expressions
MAX_EXPERTS = 128

if triton is not None:

    @triton.jit
    def _route_fwd(
        x_ptr, wn_ptr, g_ptr, en_ptr, w_ptr, m_ptr, cos_ptr, norm_ptr, counts_ptr, k_ptr,
        N, D, E, tau,
        MIN_K: tl.constexpr, TOPK: tl.constexpr, SOFTMAX: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rin = rows < N
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        dot = tl.zeros([BLOCK_N, BLOCK_E], dtype=tl.float32)
        sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            din = dd < D
            xt = tl.load(
                x_ptr + rows[:, None].to(tl.int64) * D + dd[None, :],
                mask=rin[:, None] & din[None, :], other=0.0,
            ).to(tl.float32)  # fmt: skip
            wt = tl.load(wn_ptr + dd[:, None] * E + ex[None, :], mask=din[:, None] & ein[None, :])
            dot += tl.dot(xt, wt.to(tl.float32), input_precision=PRECISION)
            sq += tl.sum(xt * xt, axis=1)
        norm = tl.maximum(tl.sqrt(sq), 1e-6)  # the torch path's clamp
        cos = dot / norm[:, None]
        g = tl.load(g_ptr + ex, mask=ein, other=0.0).to(tl.float32)
        valid = ein & (tl.load(en_ptr + ex, mask=ein, other=0) != 0)
        fired = ((cos - g[None, :]) > 0) & valid[None, :]
        none = tl.sum(fired.to(tl.int32), axis=1) == 0
        active = fired
        if TOPK:  # the MIN_K best enabled experts by cosine where nothing fired
            score = tl.where(valid[None, :], cos, float("-inf"))
            pick = fired & (ex[None, :] < 0)  # all False
            for _ in tl.static_range(MIN_K):
                best = tl.max(score, axis=1)
                first = tl.min(tl.where(score == best[:, None], ex[None, :], BLOCK_E), axis=1)
                chosen = (ex[None, :] == first[:, None]) & (best[:, None] > float("-inf"))
                pick = pick | chosen
                score = tl.where(chosen, float("-inf"), score)
            active = tl.where(none[:, None], pick, fired)
        hard = active.to(tl.float32)
        if SOFTMAX:
            z = tl.where(active, tau * cos, float("-inf"))
            top = tl.max(z, axis=1)
            top = tl.where(top > float("-inf"), top, 0.0)
            ez = tl.where(active, tl.exp(z - top[:, None]), 0.0)
            share = ez / tl.maximum(tl.sum(ez, axis=1), 1e-30)[:, None]
        else:
            share = hard / tl.maximum(tl.sum(hard, axis=1), 1.0)[:, None]
        out = rows[:, None].to(tl.int64) * E + ex[None, :]
        both = rin[:, None] & ein[None, :]
        tl.store(w_ptr + out, share, mask=both)
        tl.store(m_ptr + out, active.to(tl.int8), mask=both)
        tl.store(cos_ptr + out, cos, mask=both)
        tl.store(norm_ptr + rows, tl.sqrt(sq), mask=rin)
        tl.store(k_ptr + rows, tl.sum(hard, axis=1), mask=rin)  # active are all enabled
        # tokens per expert and, after them, tokens where nothing fired (integer atomics:
        # the same totals in any order)
        tl.atomic_add(counts_ptr + ex, tl.sum(tl.where(both, active, 0).to(tl.int32), 0), ein)
        tl.atomic_add(counts_ptr + E, tl.sum((none & rin).to(tl.int32), axis=0))

    @triton.jit
    def _route_bwd(
        gw_ptr, gc_ptr, gk_ptr, w_ptr, m_ptr, cos_ptr, norm_ptr, g_ptr, en_ptr, ddot_ptr,
        dthr_ptr, x_ptr, wn_ptr, dx_ptr, N, D, E, tau,
        HAS_GC: tl.constexpr, HAS_GK: tl.constexpr, SOFTMAX: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
        PRECISION: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rin = rows < N
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        both = rin[:, None] & ein[None, :]
        at = rows[:, None].to(tl.int64) * E + ex[None, :]
        gw = tl.load(gw_ptr + at, mask=both, other=0.0).to(tl.float32)
        share = tl.load(w_ptr + at, mask=both, other=0.0)
        hard = (tl.load(m_ptr + at, mask=both, other=0) != 0).to(tl.float32)
        cos = tl.load(cos_ptr + at, mask=both, other=0.0)
        g = tl.load(g_ptr + ex, mask=ein, other=0.0).to(tl.float32)
        soft = tl.sigmoid(tau * (cos - g[None, :]))
        slope = tau * soft * (1.0 - soft)  # straight through sigmoid(tau * gap)
        dgap = gw * share * slope
        if HAS_GK:  # k = sum over enabled experts of the straight-through mask
            gk = tl.load(gk_ptr + rows, mask=rin, other=0.0).to(tl.float32)
            enabled = (tl.load(en_ptr + ex, mask=ein, other=0) != 0).to(tl.float32)
            dgap += gk[:, None] * slope * enabled[None, :]
        dcos = dgap
        if SOFTMAX:  # share = softmax(tau * cos) over the active experts
            gs = gw * hard
            dcos += tau * share * (gs - tl.sum(share * gs, axis=1)[:, None])
        if HAS_GC:
            dcos += tl.load(gc_ptr + at, mask=both, other=0.0).to(tl.float32)
        length = tl.load(norm_ptr + rows, mask=rin, other=1.0)
        norm = tl.maximum(length, 1e-6)
        # cos = dot / max(|x|, eps): d dot = dcos / n; d|x| = -sum_e dcos * cos / n (0 where
        # the clamp holds), and d|x| / dx = x / |x|, applied by the caller as coef * x
        coef = tl.where(length > 1e-6, -tl.sum(dcos * cos, axis=1) / (norm * norm), 0.0)
        ddot = tl.where(both, dcos / norm[:, None], 0.0)
        tl.store(ddot_ptr + at, ddot.to(ddot_ptr.dtype.element_ty), mask=both)
        # G enters as cos - G: this block's share of its gradient (summed by the caller)
        dthr = -tl.sum(tl.where(both, dgap, 0.0), axis=0)
        tl.store(dthr_ptr + tl.program_id(0) * E + ex, dthr, mask=ein)
        # dx = coef * x + ddot @ wn^T, a block of columns at a time
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            din = dd < D
            xin = rin[:, None] & din[None, :]
            xat = rows[:, None].to(tl.int64) * D + dd[None, :]
            xt = tl.load(x_ptr + xat, mask=xin, other=0.0).to(tl.float32)
            wt = tl.load(wn_ptr + dd[None, :] * E + ex[:, None], mask=ein[:, None] & din[None, :])
            dx = coef[:, None] * xt + tl.dot(ddot, wt.to(tl.float32), input_precision=PRECISION)
            tl.store(dx_ptr + xat, dx.to(dx_ptr.dtype.element_ty), mask=xin)

    # The prototypes (D, E) and the SDL loss in one program each way (D x E is small): unit
    # columns, norms and W_n^T W_n - I forward; the prototype gradient from the unit columns'
    # gradient, SDL's terms and the normalisation backward.

    @triton.jit
    def _column_sums(ptr, R, E, ex, SQUARES: tl.constexpr, BLOCK_R: tl.constexpr):
        """Per column ``ex`` of a row-major (R, E) table: the sum over its rows (of the
        squares when SQUARES), fp32."""
        total = tl.zeros(ex.shape, dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)
            v = tl.load(ptr + rr[:, None] * E + ex[None, :],
                        mask=(rr < R)[:, None] & (ex < E)[None, :], other=0.0)  # fmt: skip
            v = v.to(tl.float32)
            total += tl.sum(v * v if SQUARES else v, 0)
        return total

    @triton.jit
    def _prototypes_fwd(
        w_ptr, wn_ptr, norms_ptr, gram_ptr, sdl_ptr, D, E, sdl_weight,
        SDL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        norms = tl.sqrt(_column_sums(w_ptr, D, E, ex, True, BLOCK_D))
        clamped = tl.maximum(norms, 1e-6)
        tl.store(norms_ptr + ex, norms, mask=ein)
        gram = tl.zeros([BLOCK_E, BLOCK_E], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            at = dd[:, None] * E + ex[None, :]
            both = (dd < D)[:, None] & ein[None, :]
            v = tl.load(w_ptr + at, mask=both, other=0.0).to(tl.float32) / clamped[None, :]
            tl.store(wn_ptr + at, v, mask=both)
            if SDL:
                gram = tl.dot(tl.trans(v), v, gram, input_precision="ieee")
        if SDL:
            valid = ein[:, None] & ein[None, :]
            gram -= tl.where(valid & (ex[:, None] == ex[None, :]), 1.0, 0.0)
            tl.store(gram_ptr + ex[:, None] * E + ex[None, :], gram, mask=valid)
            diversity = tl.sqrt(tl.sum(tl.sum(gram * gram, 1), 0))
            simplicity = tl.sum(tl.where(ein, norms, 0.0), 0) / E
            tl.store(sdl_ptr, diversity)
            tl.store(sdl_ptr + 1, simplicity)
            tl.store(sdl_ptr + 2, sdl_weight * (diversity + simplicity))  # the aux loss

    @triton.jit
    def _prototypes_unit_grad(
        dwn_ptr, wn_ptr, gram_ptr, dd, ex, both, E, scale, SDL_GRAD: tl.constexpr
    ):
        """The unit columns' gradient at rows ``dd``: the routes' plus SDL diversity's
        scale * W_n A (A = W_n^T W_n - I, symmetric)."""
        at = dd[:, None] * E + ex[None, :]
        g = tl.load(dwn_ptr + at, mask=both, other=0.0)
        if SDL_GRAD:
            wn = tl.load(wn_ptr + at, mask=both, other=0.0)
            ein = ex < E
            a = tl.load(gram_ptr + ex[:, None] * E + ex[None, :],
                        mask=ein[:, None] & ein[None, :], other=0.0)  # fmt: skip
            g += scale * tl.dot(wn, a, input_precision="ieee")
        return g

    @triton.jit
    def _prototypes_bwd(
        dwn_ptr, w_ptr, wn_ptr, norms_ptr, gram_ptr, sdl_ptr, gsdl_ptr, dw_ptr,
        dthr_ptr, dthreshold_ptr, D, E, B, sdl_weight,
        SDL_GRAD: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        # the thresholds' gradient: the sum of the route kernel's B per-block shares (B, E)
        dthr = _column_sums(dthr_ptr, B, E, ex, False, BLOCK_D)
        tl.store(dthreshold_ptr + ex, dthr.to(dthreshold_ptr.dtype.element_ty), mask=ein)
        norms = tl.load(norms_ptr + ex, mask=ein, other=1.0)
        clamped = tl.maximum(norms, 1e-6)
        scale = 0.0
        g_sdl = 0.0
        if SDL_GRAD:  # d||A||_F = <A, dA> / ||A||_F; the loss is sdl_weight * (||A|| + mean)
            g_sdl = sdl_weight * tl.load(gsdl_ptr)
            diversity = tl.load(sdl_ptr)
            scale = tl.where(diversity > 0, 2.0 * g_sdl / diversity, 0.0)
        dot = tl.zeros([BLOCK_E], dtype=tl.float32)  # sum over D of the unit grad * w
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            both = (dd < D)[:, None] & ein[None, :]
            g = _prototypes_unit_grad(dwn_ptr, wn_ptr, gram_ptr, dd, ex, both, E, scale, SDL_GRAD)
            w = tl.load(w_ptr + dd[:, None] * E + ex[None, :], mask=both, other=0.0)
            dot += tl.sum(g * w.to(tl.float32), 0)
        # wn = w / max(norm, 1e-6): the norm's gradient (through the clamp where it passes)
        dnorms = tl.where(norms >= 1e-6, -dot / (clamped * clamped), 0.0)
        if SDL_GRAD:
            dnorms += g_sdl / E
        per_w = tl.where(norms > 0, dnorms / norms, 0.0)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            both = (dd < D)[:, None] & ein[None, :]
            g = _prototypes_unit_grad(dwn_ptr, wn_ptr, gram_ptr, dd, ex, both, E, scale, SDL_GRAD)
            at = dd[:, None] * E + ex[None, :]
            w = tl.load(w_ptr + at, mask=both, other=0.0).to(tl.float32)
            dw = g / clamped[None, :] + w * per_w[None, :]
            tl.store(dw_ptr + at, dw.to(dw_ptr.dtype.element_ty), mask=both)

    @triton.jit
    def _route_stats(counts_ptr, en_ptr, out_ptr, N, E, BLOCK_E: tl.constexpr):
        """From the tokens per expert (E,) and the unfired count after them: experts per
        token, dead experts (enabled, no token), the fallback's share of tokens."""
        ex = tl.arange(0, BLOCK_E)
        ein = ex < E
        counts = tl.load(counts_ptr + ex, mask=ein, other=0)
        enabled = tl.load(en_ptr + ex, mask=ein, other=0) != 0
        tokens = tl.maximum(N, 1).to(tl.float32)  # divided as torch does (rounded once)
        tl.store(out_ptr, tl.math.div_rn(tl.sum(counts, 0).to(tl.float32), tokens))
        dead = tl.sum((ein & enabled & (counts == 0)).to(tl.float32), 0)
        tl.store(out_ptr + 1, dead)
        tl.store(out_ptr + 2, tl.math.div_rn(tl.load(counts_ptr + E).to(tl.float32), tokens))


#: launch settings (benchmarks/dispatch_kernels.py sweeps them); tokens per program None:
#: 128 up to 32 experts, else 32. The products with the prototypes run in fp32 for fp32
#: tokens ("ieee"); for half-precision tokens (exact in tf32) the forward takes three tf32
#: tensor-core products (about fp32's accuracy, so the same experts fire) and the backward,
#: whose input gradient is stored in half precision, one.
TUNING: dict = {
    "fwd_tokens": None, "fwd_cols": 32, "bwd_tokens": 64, "bwd_cols": 64,
    "fwd_precision_half": "tf32x3", "bwd_precision_half": "tf32",
}  # fmt: skip


def _precision(x: Tensor, key: str) -> str:
    return "ieee" if x.dtype == torch.float32 else TUNING[key]


def _blocks(e: int, tokens: int | None) -> tuple[int, int]:
    block_e = max(16, 1 << max(e - 1, 0).bit_length())
    return block_e, tokens or (128 if block_e <= 32 else 32)  # (experts, tokens) per program


def route_stats(counts: Tensor, enabled: Tensor, n: int) -> dict[str, Tensor]:
    """The routing statistics (0-dim fp32) from ``counts`` (E + 1,): tokens per expert, then
    the tokens where no expert fired; one kernel (see ``RouterBase.finish``)."""
    e = enabled.shape[0]
    out = torch.empty(3, dtype=torch.float32, device=counts.device)
    _route_stats[(1,)](counts, enabled, out, n, e, BLOCK_E=kernels.block_size(e))
    return {
        "expert_counts": counts[:e],
        "experts_per_token": out[0],
        "dead_experts": out[1],
        "fallback_rate": out[2],
    }


def _prototype_blocks(d: int, e: int) -> tuple[int, int, int]:
    """(rows per step, experts, warps) of the one-program prototype kernels."""
    block_e = kernels.block_size(e)  # e <= MAX_EXPERTS
    return kernels.block_size(d, cap=max(16, 4096 // block_e)), block_e, 4 if block_e <= 32 else 8


def prototypes(w: Tensor, sdl_weight: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Of prototypes ``w`` (D, E): unit columns w / max(norm, 1e-6) (D, E) fp32, the column
    norms (E,), and when ``sdl_weight`` > 0 W_n^T W_n - I (E, E) and the SDL loss's terms
    (3,): diversity ||W_n^T W_n - I||_F, simplicity mean_e ||w_e||, and the loss
    sdl_weight * (diversity + simplicity) (zeros without)."""
    sdl = sdl_weight > 0
    d, e = w.shape
    f32 = dict(dtype=torch.float32, device=w.device)
    wn, norms = torch.empty(d, e, **f32), torch.empty(e, **f32)
    gram = torch.empty(e if sdl else 0, e, **f32)
    terms = (torch.empty if sdl else torch.zeros)(3, **f32)  # the kernel writes them with SDL
    block_d, block_e, warps = _prototype_blocks(d, e)
    _prototypes_fwd[(1,)](
        w.contiguous(), wn, norms, gram, terms, d, e, float(sdl_weight), SDL=sdl, BLOCK_D=block_d,
        BLOCK_E=block_e, num_warps=warps,
    )  # fmt: skip
    return wn, norms, gram, terms


def prototypes_backward(
    dwn: Tensor, w: Tensor, wn: Tensor, norms: Tensor, gram: Tensor, terms: Tensor,
    g_sdl: Tensor | None, sdl_weight: float, dthreshold_blocks: Tensor, threshold: Tensor,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The gradients of ``w`` (from that of the unit columns ``dwn`` (D, E) fp32 and of the
    SDL loss ``g_sdl`` (0-dim), None: no SDL gradient) and of the thresholds (the sum of the
    route kernel's per-block shares ``dthreshold_blocks`` (B, E)), in their dtypes."""
    d, e = w.shape
    dw, dthreshold = torch.empty_like(w), torch.empty_like(threshold)
    sdl = g_sdl is not None and gram.numel() > 0
    block_d, block_e, warps = _prototype_blocks(d, e)
    _prototypes_bwd[(1,)](
        dwn.contiguous(), w.contiguous(), wn, norms, gram, terms,
        g_sdl if sdl else terms, dw, dthreshold_blocks, dthreshold, d, e,
        dthreshold_blocks.shape[0], float(sdl_weight), SDL_GRAD=sdl, BLOCK_D=block_d,
        BLOCK_E=block_e, num_warps=warps,
    )  # fmt: skip
    return dw, dthreshold


class CosineRoute(torch.autograd.Function):
    """(x (N,D), prototypes w (D,E), thresholds G (E,), enabled (E,)) -> weights (N,E) fp32,
    active mask (N,E) bool, cos (N,E) fp32, k (N,) fp32: active experts per token, whose
    gradient is that of the straight-through sum over enabled experts (what the sparsity loss
    needs), the tokens per expert (E,) followed by the tokens where nothing fired, and, when
    ``sdl_weight`` > 0, the SDL loss over the same prototypes (0-dim fp32:
    sdl_weight * (||W_n^T W_n - I||_F + mean_e ||w_e||); else 0).

    The prototypes are normalised (and SDL computed) by one small kernel each way
    (:func:`prototypes`), rather than by two dozen small autograd operations."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w: Tensor,
        threshold: Tensor,
        enabled: Tensor,
        tau: float,
        min_experts: int,
        topk: bool,
        softmax: bool,
        sdl_weight: float = 0.0,
    ) -> tuple[Tensor, ...]:
        x = x.contiguous()  # itself when already contiguous
        n, d = x.shape
        e = w.shape[1]
        wn, norms, gram, terms = prototypes(w, sdl_weight)
        f32 = dict(dtype=torch.float32, device=x.device)
        weights, cos = torch.empty(n, e, **f32), torch.empty(n, e, **f32)
        active = torch.empty(n, e, dtype=torch.int8, device=x.device)
        norm = torch.empty(n, **f32)
        counts = torch.zeros(e + 1, dtype=torch.int32, device=x.device)
        k = torch.empty(n, **f32)
        block_e, block_n = _blocks(e, TUNING["fwd_tokens"])
        if n:
            _route_fwd[(triton.cdiv(n, block_n),)](
                x, wn, threshold.contiguous(), enabled.contiguous(),
                weights, active, cos, norm, counts, k,
                n, d, e, float(tau), MIN_K=min(min_experts, e), TOPK=topk, SOFTMAX=softmax,
                BLOCK_N=block_n, BLOCK_D=TUNING["fwd_cols"], BLOCK_E=block_e,
                PRECISION=_precision(x, "fwd_precision_half"),
            )  # fmt: skip
        mask = active.view(torch.bool)
        ctx.save_for_backward(
            x, w, norms, wn, threshold, enabled, weights, active, cos, norm, gram, terms
        )
        ctx.tau, ctx.softmax, ctx.sdl_weight = float(tau), softmax, float(sdl_weight)
        ctx.mark_non_differentiable(mask, counts)
        ctx.set_materialize_grads(False)  # unused outputs' gradients stay None, not zeros
        return weights, mask, cos, k, counts, terms[2]

    @staticmethod
    def backward(
        ctx: Any,
        g_weights: Tensor,
        _mask: Any,
        g_cos: Tensor | None,
        g_k: Tensor | None,
        _counts: Any,
        g_sdl: Tensor | None,
    ):
        x, w, norms, wn, threshold, enabled, weights, active, cos, norm, gram, terms = (
            ctx.saved_tensors
        )
        (n, e), d = weights.shape, x.shape[1]
        f32 = dict(dtype=torch.float32, device=x.device)
        # ddot in the tokens' dtype: the prototype gradient x^T @ ddot is then a half-precision
        # tensor-core GEMM (fp32 accumulation) like every weight gradient of a bf16 layer
        ddot = torch.empty(n, e, dtype=x.dtype, device=x.device)
        dx = torch.empty_like(x)
        if g_weights is None:
            g_weights = torch.zeros_like(weights)
        block_e, block_n = _blocks(e, TUNING["bwd_tokens"])
        dthreshold = torch.empty(triton.cdiv(n, block_n), e, **f32)  # per block of tokens
        if n:
            _route_bwd[(triton.cdiv(n, block_n),)](
                g_weights.contiguous(), g_cos.contiguous() if g_cos is not None else cos,
                g_k.contiguous() if g_k is not None else norm, weights, active, cos, norm,
                threshold.contiguous(), enabled.contiguous(), ddot, dthreshold, x,
                wn, dx, n, d, e, ctx.tau, HAS_GC=g_cos is not None,
                HAS_GK=g_k is not None, SOFTMAX=ctx.softmax, BLOCK_N=block_n,
                BLOCK_D=TUNING["bwd_cols"], BLOCK_E=block_e,
                PRECISION=_precision(x, "bwd_precision_half"),
            )  # fmt: skip
        dwn = (x.t() @ ddot).float()
        dw, dthreshold = prototypes_backward(
            dwn, w, wn, norms, gram, terms, g_sdl, ctx.sdl_weight, dthreshold, threshold
        )
        return dx, dw, dthreshold, None, None, None, None, None, None
