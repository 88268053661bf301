"""cosine_threshold's thresholds stay inside the range of a cosine, and the share of tokens
that take the fallback is logged (issue 31 item 5: in the ADR grid G climbed to 1.33, above
any cosine, and 85% of tokens went through the top-k fallback unnoticed)."""

from __future__ import annotations

import pytest
import torch
from ponderkit import ForwardContext
from ponderkit.plugins.routing.cosine_threshold import CosineThresholdConfig, CosineThresholdRouter

D, E = 16, 6


def _pressed(cfg: CosineThresholdConfig, updates: int = 60) -> CosineThresholdRouter:
    """Train a router under steady pressure to raise its thresholds: a sparsity loss with
    target 0 (every active expert costs), Adam at a high rate."""
    torch.manual_seed(0)
    router = CosineThresholdRouter(D, E, cfg).train()
    opt = torch.optim.Adam(router.parameters(), lr=0.05)
    for _ in range(updates):
        routing = router(torch.randn(64, D))
        loss = sum(routing.aux.values()) + sum(routing.param_aux.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return router


PRESSURE = dict(sparsity_weight=1.0, sparsity_target=0.0, sdl_weight=0.0)


def test_unbounded_thresholds_climb_above_every_cosine():
    # the defect, reproduced with the old parametrisation
    router = _pressed(CosineThresholdConfig(bound_thresholds=False, **PRESSURE))
    assert float(router.gate_thresholds().detach().max()) > 1.0


def test_thresholds_stay_inside_minus_one_one_under_the_same_pressure():
    router = _pressed(CosineThresholdConfig(**PRESSURE))
    g = router.gate_thresholds().detach()
    assert float(g.max()) < 1.0 and float(g.min()) > -1.0
    # G = tanh(theta), the parameter trained
    torch.testing.assert_close(g, torch.tanh(router.threshold.detach()))


@pytest.mark.parametrize("fallback", ["topk", "zero"])
def test_fallback_rate_equals_a_brute_force_count(fallback):
    torch.manual_seed(1)
    router = CosineThresholdRouter(D, E, CosineThresholdConfig(fallback=fallback)).double()
    with torch.no_grad():
        router.threshold.copy_(torch.linspace(0.2, 0.9, E, dtype=torch.float64))
        router.enabled[2] = False
    x = torch.randn(300, D, dtype=torch.float64)
    routing = router(x)
    # brute force, token by token: does any enabled expert have cos > tanh(theta)?
    w = router.weight.detach()
    unfired = 0
    for token in x:
        fires = False
        for e in range(E):
            cos = float(token @ w[:, e]) / float(token.norm() * w[:, e].norm())
            if router.enabled[e] and cos > torch.tanh(router.threshold[e]).item():
                fires = True
        unfired += not fires
    assert 0 < unfired < len(x)  # both kinds of token occur
    # an exact count, divided in float32
    assert float(routing.stats["fallback_rate"]) == pytest.approx(unfired / len(x), abs=1e-7)
    # the layer logs it under the router's prefix
    ctx = ForwardContext()
    ctx.add_routing(routing, router)
    assert float(ctx.metrics()["router/fallback_rate"]) == pytest.approx(unfired / len(x))
