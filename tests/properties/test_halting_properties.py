"""Halting policies: properties of ACT and PonderNet against direct float64 formulas."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ponderkit.plugins.halting.act import act_weights
from ponderkit.plugins.halting.pondernet import halting_distribution, kl_to_prior

SETTINGS = settings(max_examples=60, deadline=None)


def probs(seed: int, steps: int, shape: tuple[int, ...], lo: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.uniform(lo, 1.0, size=(steps, *shape)), dtype=torch.float64)


@SETTINGS
@given(
    st.integers(0, 2**31), st.integers(1, 10), st.sampled_from([(3,), (2, 5)]), st.floats(0.0, 0.2)
)
def test_act_distribution_sums_to_one_and_halts_within_bounds(seed, steps, shape, eps):
    h = probs(seed, steps, shape)
    p, n, r = act_weights(h, eps)
    torch.testing.assert_close(p.sum(0), torch.ones(shape, dtype=torch.float64))
    assert (p >= 0).all()
    assert ((n >= 1) & (n <= steps)).all()
    assert ((r > 0) & (r <= 1)).all()
    # reference: walk the steps one by one, per element
    for idx in np.ndindex(*shape):
        cum, want_n = 0.0, steps
        for k in range(steps):
            if cum + float(h[(k, *idx)]) >= 1 - eps:
                want_n = k + 1
                break
            cum += float(h[(k, *idx)])
        assert int(n[idx]) == want_n
        assert (
            abs(float(r[idx]) - (1 - sum(float(h[(k, *idx)]) for k in range(want_n - 1)))) < 1e-12
        )


@SETTINGS
@given(st.integers(0, 2**31), st.integers(2, 8))
def test_act_ponder_cost_gradient_flows_only_through_the_remainder(seed, steps):
    h = probs(seed, steps, (4,)).requires_grad_(True)
    _, n, r = act_weights(h, 0.01)
    (n.to(r.dtype) + r).sum().backward()
    # dR/dh_k = -1 for steps before the halting step, 0 from it on (N itself is a count)
    order = torch.arange(1, steps + 1)[:, None]
    want = torch.where(order < n[None, :], -1.0, 0.0).to(torch.float64)
    torch.testing.assert_close(h.grad, want)


@SETTINGS
@given(st.integers(0, 2**31), st.integers(1, 10), st.floats(0.05, 0.95))
def test_pondernet_distribution_sums_to_one_and_kl_matches_float64(seed, steps, prior):
    lam = probs(seed, steps, (3,))
    p = halting_distribution(lam)
    torch.testing.assert_close(p.sum(0), torch.ones(3, dtype=torch.float64))
    kl = kl_to_prior(p, prior)
    for b in range(3):
        survive, ref_p = 1.0, []
        for k in range(steps):
            lk = 1.0 if k == steps - 1 else float(lam[k, b])
            ref_p.append(survive * lk)
            survive *= 1 - lk
        ref_q = [prior * (1 - prior) ** k for k in range(steps)]
        ref_q = [v / sum(ref_q) for v in ref_q]
        ref_kl = sum(a * np.log(a / c) for a, c in zip(ref_p, ref_q, strict=True) if a > 0)
        got_kl = float(kl[b])
        np.testing.assert_allclose(p[:, b].numpy(), ref_p, rtol=1e-12)
        np.testing.assert_allclose(got_kl, ref_kl, rtol=1e-9, atol=1e-12)
