"""Router invariants (DESIGN.md, Routing) over random shapes, dtypes and router states."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from ponderkit import ForwardContext
from routing_props import PROPERTY, ROUTER_VARIANTS, check_router_case, make_router, router_cases


@settings(parent=PROPERTY, max_examples=300)
@given(case=router_cases())
def test_every_router_keeps_the_routing_invariants(case):
    check_router_case(case)


LEARNED = [v for v in ROUTER_VARIANTS if not v[1].get("uniform")]


@pytest.mark.parametrize(("name", "overrides"), LEARNED)
def test_router_learns_from_the_task_loss(name, overrides):
    """Weights times a fixed per-expert signal: the task loss reaches the router's parameters
    (through the straight-through estimator for cosine_threshold's hard mask)."""
    torch.manual_seed(0)
    router = make_router(name, 16, 6, **overrides)
    with torch.no_grad():
        if hasattr(router, "threshold"):
            router.threshold.fill_(0.1)
    x = torch.randn(64, 16)
    signal = torch.randn(6)
    (router(x).weights * signal).sum().backward()
    grads = {n: p.grad for n, p in router.named_parameters() if p.requires_grad}
    for param_name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, (
            f"{name}: no task gradient on {param_name}"
        )
    if name == "cosine_threshold":
        assert set(grads) == {"weight", "threshold"}


@pytest.mark.parametrize(
    ("name", "overrides", "loss"),
    [
        ("cosine_threshold", {"sdl_weight": 0.01}, "router/sdl"),
        ("cosine_threshold", {"sdl_weight": 0.0, "sparsity_weight": 0.1}, "router/sparsity"),
        ("topk_softmax", {"load_balance_weight": 0.01}, "router/load_balance"),
        ("topk_softmax", {"z_loss_weight": 0.001}, "router/z_loss"),
    ],
)
def test_router_learns_from_its_aux_loss(name, overrides, loss):
    torch.manual_seed(0)
    router = make_router(name, 16, 6, **overrides)
    with torch.no_grad():
        router.weight.add_(0.1 * torch.randn_like(router.weight))  # off the orthogonal optimum
    ctx = ForwardContext()
    ctx.add_routing(router(torch.randn(64, 16), ctx))  # as a routed layer reports it
    assert set(ctx.losses) == {loss}
    ctx.losses[loss].backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    if loss == "router/sparsity":
        assert router.threshold.grad.abs().sum() > 0


def test_sdl_matches_its_formula():
    from ponderkit.plugins.routing.losses import sdl_loss

    w = torch.randn(5, 3, dtype=torch.float64)
    diversity, simplicity = sdl_loss(w)
    norms = [float(w[:, e].norm()) for e in range(3)]
    unit = [w[:, e] / norms[e] for e in range(3)]
    frob = sum(
        (float(unit[i] @ unit[j]) - (1.0 if i == j else 0.0)) ** 2
        for i in range(3)
        for j in range(3)
    )
    assert abs(float(diversity) - frob**0.5) < 1e-12
    assert abs(float(simplicity) - sum(norms) / 3) < 1e-12
