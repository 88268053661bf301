"""The property tests have teeth: deliberately broken routers and a broken dispatch fail them.

Each case runs the same check the property tests run (``check_router_case``,
``check_dispatch_matches_brute_force``) under a fresh ``@given`` without the example database,
with one implementation swapped for a broken one.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import Phase, given, settings
from ponderkit.plugins.dynmoe.dispatch import combine
from ponderkit.plugins.routing.cosine_threshold import CosineThresholdRouter
from routing_props import (
    PROPERTY,
    check_dispatch_matches_brute_force,
    check_router_case,
    dispatch_cases,
    make_router,
    router_cases,
)


class UnmaskedWeights(CosineThresholdRouter):
    """Softmax over every expert, ignoring the router's own top-any mask."""

    def route(self, x):
        weights, mask, logits, aux, extra = super().route(x)
        return torch.softmax(self.cfg.tau * logits, -1), mask, logits, aux, extra


class ShiftedThreshold(CosineThresholdRouter):
    """Fires at cos > G - 0.2 instead of cos > G."""

    def cosine(self, x):
        return super().cosine(x) + 0.2


class IgnoresRemovedExperts(CosineThresholdRouter):
    """Routes as if every expert were enabled."""

    def route(self, x):
        enabled = self.enabled.clone()
        self.enabled.fill_(True)
        try:
            return super().route(x)
        finally:
            self.enabled.copy_(enabled)


class Unnormalised(CosineThresholdRouter):
    """Weight 1 for every active expert instead of 1/K."""

    def route(self, x):
        weights, mask, logits, aux, extra = super().route(x)
        return mask.to(weights.dtype), mask, logits, aux, extra


# a broken implementation must fail the check; the first failing example is reported as
# found (no shrinking, which took seconds a case and proves nothing more)
FIND = (Phase.explicit, Phase.generate)

BROKEN = [
    (UnmaskedWeights, "weights must be 0 where the mask is off"),
    (ShiftedThreshold, "K differs from|fallback"),
    (IgnoresRemovedExperts, "a removed expert was selected"),
    (Unnormalised, "must sum to 1"),
]
COSINE_VARIANTS = [
    ("cosine_threshold", {"weighting": "mean", "fallback": "topk"}),
    ("cosine_threshold", {"weighting": "softmax", "fallback": "zero"}),
]


@pytest.mark.parametrize(("broken", "message"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
def test_router_properties_catch_a_broken_router(broken, message):
    def factory(name, d, e, **overrides):
        router = make_router(name, d, e, **overrides)
        router.__class__ = broken  # same parameters and config, broken routing
        return router

    @settings(
        parent=PROPERTY, max_examples=300, database=None, phases=FIND, report_multiple_bugs=False
    )
    @given(case=router_cases(variants=COSINE_VARIANTS))
    def run(case):
        check_router_case(case, factory)

    with pytest.raises(AssertionError, match=message):
        run()


def test_dispatch_properties_catch_a_combine_that_cuts_the_router_gradient():
    def detached_combine(y, plan):
        return combine(y, plan._replace(weights=plan.weights.detach()))

    @settings(
        parent=PROPERTY, max_examples=150, database=None, phases=FIND, report_multiple_bugs=False
    )
    @given(case=dispatch_cases())
    def run(case):
        check_dispatch_matches_brute_force(case, detached_combine)

    with pytest.raises(AssertionError, match="gradients of the routing weights differ"):
        run()
