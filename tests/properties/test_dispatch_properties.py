"""Sparse dispatch against a per-token brute-force reference, for any mask (float64)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from routing_props import (
    PROPERTY,
    check_dispatch_matches_brute_force,
    dispatch_cases,
    grads,
    make_dispatch_case,
    sparse_moe,
)


@settings(parent=PROPERTY, max_examples=150)
@given(case=dispatch_cases())
def test_sparse_dispatch_equals_brute_force_in_outputs_and_gradients(case):
    check_dispatch_matches_brute_force(case)


@settings(parent=PROPERTY, max_examples=150)
@given(case=dispatch_cases())
def test_dispatch_is_dropless_and_idle_experts_get_no_gradient(case):
    experts, mask, weights, x = make_dispatch_case(case)
    out, plan = sparse_moe(experts, mask, weights, x)
    # dropless: every active pair is dispatched exactly once, grouped by expert
    assert plan.counts == mask.sum(0).tolist()
    assert plan.rows == int(mask.sum())
    starts = [0, *torch.tensor(plan.counts, dtype=torch.long).cumsum(0).tolist()]
    # each expert's rows hold its tokens in ascending order; inactive pairs have no row
    for e in range(mask.shape[1]):
        expected = list(range(starts[e], starts[e + 1]))
        assert plan.pos[mask[:, e], e].tolist() == expected
        assert (plan.pos[~mask[:, e], e] == -1).all()
    assert sorted(plan.pos[mask].tolist()) == list(range(plan.rows))  # a bijection
    assert plan.offsets.tolist() == starts[1:]
    # tokens without experts get exactly 0; experts without tokens get zero gradient
    assert (out[~mask.any(-1)] == 0).all()
    gate_up, down = grads(out, torch.randn_like(out), [experts.gate_up, experts.down])
    for e, count in enumerate(plan.counts):
        if count == 0:
            assert (gate_up[e] == 0).all() and (down[e] == 0).all()
