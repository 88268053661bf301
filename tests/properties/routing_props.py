"""Shared pieces of the routing property tests: router factories, Hypothesis strategies,
independent references (formulas and brute force) and the router invariant check.

Not a test module (no ``test_`` prefix); the test modules import it by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from ponderkit.plugins.dynmoe.dispatch import combine, gather, plan_dispatch
from ponderkit.plugins.dynmoe.experts import SwiGLUExperts
from ponderkit.plugins.routing.cosine_threshold import (
    CosineThresholdConfig,
    CosineThresholdRouter,
)
from ponderkit.plugins.routing.dense import DenseRouter, DenseRouterConfig
from ponderkit.plugins.routing.spl import SPLRouter, SPLRouterConfig
from ponderkit.plugins.routing.topk_softmax import TopKSoftmaxConfig, TopKSoftmaxRouter

#: modest example counts and no deadline: the whole suite runs in minutes on 2 CPU cores
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: (router name, config overrides) pairs that the invariants are checked for
ROUTER_VARIANTS: list[tuple[str, dict]] = [
    ("cosine_threshold", {"weighting": "mean", "fallback": "topk", "min_experts": 1}),
    ("cosine_threshold", {"weighting": "softmax", "fallback": "topk", "min_experts": 2}),
    ("cosine_threshold", {"weighting": "mean", "fallback": "zero"}),
    ("cosine_threshold", {"weighting": "softmax", "fallback": "zero", "sparsity_weight": 0.1}),
    ("topk_softmax", {"top_k": 1}),
    ("topk_softmax", {"top_k": 2, "load_balance_weight": 0.01, "z_loss_weight": 0.001}),
    ("spl", {}),
    ("dense", {}),
    ("dense", {"uniform": True}),
]

_CLASSES = {
    "cosine_threshold": (CosineThresholdRouter, CosineThresholdConfig),
    "topk_softmax": (TopKSoftmaxRouter, TopKSoftmaxConfig),
    "spl": (SPLRouter, SPLRouterConfig),
    "dense": (DenseRouter, DenseRouterConfig),
}

#: router states: as built, random thresholds, nothing can fire, random experts removed
STATES = ("fresh", "random", "none_fire", "masked")

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def make_router(name: str, d: int, e: int, **overrides) -> torch.nn.Module:
    cls, cfg_cls = _CLASSES[name]
    return cls(d, e, cfg_cls(**overrides))


@torch.no_grad()
def set_state(router: torch.nn.Module, state: str, gen: torch.Generator) -> None:
    """Put ``router`` into one of :data:`STATES`."""
    e = router.num_experts
    if state == "random" and hasattr(router, "threshold"):
        router.threshold.copy_(torch.rand(e, generator=gen) * 1.2 - 0.6)
    elif state == "none_fire":
        if hasattr(router, "threshold"):
            router.threshold.fill_(20.0)  # G = tanh(20) = 1 >= cos: no expert can fire
        elif hasattr(router, "gate"):  # spl: all match - mas(gate) <= 0 for typical inputs
            router.prototypes.zero_()
    elif state == "masked":
        router.enabled.copy_(torch.rand(e, generator=gen) < 0.5)  # may remove all


@st.composite
def router_cases(draw, variants=ROUTER_VARIANTS) -> dict:
    """A router variant, a shape (N may be 0 or 1; E may be 1), a dtype, a state, a seed."""
    return {
        "variant": draw(st.sampled_from(variants)),
        "n": draw(st.sampled_from([0, 1]) | st.integers(0, 24)),
        "d": draw(st.integers(1, 12)),
        "e": draw(st.sampled_from([1]) | st.integers(1, 8)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "state": draw(st.sampled_from(STATES)),
        "scale": draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0])),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def build_case(case: dict, factory: Callable = make_router):
    """(router, x) for a case drawn by :func:`router_cases`."""
    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    name, overrides = case["variant"]
    router = factory(name, case["d"], case["e"], **overrides).double()
    set_state(router, case["state"], gen)
    x = torch.randn(case["n"], case["d"], generator=gen, dtype=torch.float64) * case["scale"]
    return router, x.to(case["dtype"])


def check_router_case(case: dict, factory: Callable = make_router) -> None:
    """Build the router and tokens of ``case`` and check every invariant."""
    router, x = build_case(case, factory)
    name, overrides = case["variant"]
    check_routing(router, x, name, overrides)


# -- sparse dispatch --------------------------------------------------------------------------
@st.composite
def dispatch_cases(draw) -> dict:
    return {
        "n": draw(st.sampled_from([0, 1]) | st.integers(0, 16)),
        "d": draw(st.integers(1, 6)),
        "h": draw(st.integers(1, 5)),
        "e": draw(st.sampled_from([1]) | st.integers(1, 6)),
        "density": draw(st.sampled_from([0.0, 0.2, 0.5, 1.0])),
        "seed": draw(st.integers(0, 2**31 - 1)),
        # pair buffers sized for this many pairs per token (no host sync), or exact (None)
        "capacity_per_token": draw(st.none() | st.integers(0, 2)),
    }


def make_dispatch_case(case: dict):
    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    n, d, e = case["n"], case["d"], case["e"]
    experts = SwiGLUExperts(e, d, case["h"], mode="loop").double()
    mask = torch.rand(n, e, generator=gen) < case["density"]
    weights = (torch.rand(n, e, generator=gen, dtype=torch.float64) * mask).requires_grad_()
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_()
    return experts, mask, weights, x


def sparse_moe(experts, mask, weights, x, combine_fn: Callable = combine, capacity=None):
    plan = plan_dispatch(weights, mask, capacity)
    return combine_fn(experts(gather(x, plan), plan), plan), plan


def brute_force_moe(gate_up, down, mask, weights, x):
    """out[n] = sum over the active experts e of token n: w[n,e] * SwiGLU_e(x[n])."""
    hidden = down.shape[1]
    rows = []
    for i in range(x.shape[0]):
        acc = torch.zeros(x.shape[1], dtype=x.dtype)
        for expert in range(mask.shape[1]):
            if mask[i, expert]:
                gate = x[i] @ gate_up[expert][:, :hidden]
                up = x[i] @ gate_up[expert][:, hidden:]
                y = (torch.nn.functional.silu(gate) * up) @ down[expert]
                acc = acc + weights[i, expert] * y
        rows.append(acc)
    return torch.stack(rows) if rows else x.new_zeros(0, x.shape[1])


def grads(out, upstream, tensors):
    if not out.requires_grad:  # the reference of an empty batch has no graph
        return [torch.zeros_like(t) for t in tensors]
    got = torch.autograd.grad((out * upstream).sum(), tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(got, tensors, strict=True)]


def check_dispatch_matches_brute_force(case: dict, combine_fn: Callable = combine) -> None:
    """Sparse dispatch equals :func:`brute_force_moe` in outputs and in the gradients of the
    tokens, the routing weights and both expert weights (float64, tight tolerances)."""
    experts, mask, weights, x = make_dispatch_case(case)
    capacity = None
    if case.get("capacity_per_token") is not None:  # every pair fits, some rows spare
        capacity = x.shape[0] * (mask.shape[1] + case["capacity_per_token"])
    out, plan = sparse_moe(experts, mask, weights, x, combine_fn, capacity)
    if capacity is not None:
        assert plan.counts is None and plan.rows == capacity
        assert plan.filled.tolist() == [int(mask.sum())]
    ref = brute_force_moe(experts.gate_up, experts.down, mask, weights, x)
    assert out.shape == ref.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-12, rtol=1e-10), "outputs differ"
    upstream = torch.randn_like(out)
    tensors = [x, weights, experts.gate_up, experts.down]
    names = ["tokens", "routing weights", "gate_up", "down"]
    got, want = grads(out, upstream, tensors), grads(ref, upstream, tensors)
    for name, g, w in zip(names, got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-12, rtol=1e-10), f"gradients of the {name} differ"


# -- independent references --------------------------------------------------------------------
def cosine_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """cos(x_n, w_e) in float64 from the definition (zero vectors have cosine 0)."""
    x, w = x.double(), w.double()
    xn = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    wn = w / w.norm(dim=0, keepdim=True).clamp(min=1e-6)
    return torch.einsum("nd,de->ne", xn, wn)


def spl_reference(x: torch.Tensor, wp: torch.Tensor, wg: torch.Tensor, enabled) -> torch.Tensor:
    """M = mas(x W_p^T / sqrt(D) - mas(x W_g^T)) (DESIGN.md), removed experts set to 0."""

    def mas(z):
        return torch.relu(z / (z.abs().max(dim=-1, keepdim=True).values + 1e-9))

    x = x.double()
    keep = enabled.double()
    match = x @ wp.double().T / math.sqrt(x.shape[-1])
    return mas((match - mas((x @ wg.double().T) * keep)) * keep)


# -- the invariants ----------------------------------------------------------------------------
def check_routing(router: torch.nn.Module, x: torch.Tensor, name: str, overrides: dict) -> None:
    """Assert every router invariant of DESIGN.md for ``router`` on tokens ``x`` (N, D)."""
    n, e = x.shape[0], router.num_experts
    r = router(x)
    w, mask, enabled = r.weights.detach(), r.mask, router.enabled
    assert w.shape == mask.shape == r.logits.shape == (n, e)
    assert mask.dtype == torch.bool
    assert torch.isfinite(w).all(), "weights must be finite"
    assert (w >= 0).all(), "weights must be >= 0"
    assert (w[~mask] == 0).all(), "weights must be 0 where the mask is off"
    assert not (mask & ~enabled).any(), "a removed expert was selected"
    sums = w.sum(-1)
    any_active = mask.any(-1)
    one = torch.ones_like(sums[any_active])
    assert torch.allclose(sums[any_active], one, atol=1e-6), "a token's weights must sum to 1"
    assert (sums[~any_active] == 0).all(), "a token without experts must have weights 0"

    k = mask.sum(-1)
    live = int(enabled.sum())
    # a static dispatch sizes its buffers by max_active: no token may exceed it
    assert (k <= router.max_active).all(), "a token has more experts than max_active"
    if name == "topk_softmax":
        assert (k == min(overrides["top_k"], live)).all()
    elif name == "dense":
        assert (k == live).all()
    elif name == "cosine_threshold":
        check_cosine_count(router, x, mask, overrides)
    elif name == "spl":
        m = spl_reference(x, router.prototypes, router.gate, enabled)
        clear = (m > 1e-6) | (m == 0)  # away from the decision boundary
        assert (mask[clear] == (m[clear] > 0)).all(), "spl mask differs from M > 0"

    assert torch.equal(r.stats["expert_counts"], mask.sum(0))
    per_token = float(k.sum()) / max(n, 1)
    assert math.isclose(float(r.stats["experts_per_token"]), per_token, rel_tol=1e-6)

    again = router(x)
    assert torch.equal(again.mask, mask) and torch.equal(again.weights.detach(), w)
    if n > 1:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        permuted = router(x[perm])
        assert torch.equal(permuted.mask, mask[perm]), "routing is not permutation equivariant"
        assert torch.allclose(permuted.weights.detach(), w[perm], atol=1e-6)


def check_cosine_count(router, x, mask, overrides) -> None:
    """K == #{e enabled: cos(x, w_e) > G_e}; when that is 0, the documented fallback."""
    cos = cosine_reference(x, router.weight.detach())
    gap = cos - router.gate_thresholds().detach().double()
    enabled = router.enabled
    clear = (gap.abs() > 1e-5).all(-1)  # skip tokens on a decision boundary
    fired = (gap > 0) & enabled
    k, want = mask.sum(-1), fired.sum(-1)
    some = clear & (want > 0)
    assert (k[some] == want[some]).all(), "K differs from #{e: cos > G_e}"
    assert (mask[some] == fired[some]).all()
    none = clear & (want == 0)
    if overrides.get("fallback", "topk") == "zero":
        assert (k[none] == 0).all(), "fallback zero must leave the token without experts"
    else:
        expect = min(overrides.get("min_experts", 1), int(enabled.sum()))
        assert (k[none] == expect).all(), "fallback topk must activate min_experts experts"
        best = cos.masked_fill(~enabled, float("-inf"))
        for i in none.nonzero().flatten().tolist():
            chosen = best[i][mask[i]]
            others = best[i][~mask[i] & enabled]
            if len(chosen) and len(others):
                assert chosen.min() >= others.max() - 1e-6, "fallback did not take the best"
