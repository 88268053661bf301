"""``dispatch: auto | exact | static`` of the routed layers: ``auto`` is exact on the CPU and
static on CUDA, and static equals exact, both equal to every expert on every token (float64)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from ponderkit import ForwardContext
from ponderkit.plugins.dynmoe import moe as moe_module
from ponderkit.plugins.dynmoe.dispatch import resolve_dispatch
from ponderkit.plugins.dynmoe.experts import SwiGLUExperts
from ponderkit.plugins.dynmoe.moe import DynMoE, DynMoEConfig
from ponderkit.plugins.dynmoe.smha import DynSMHA, DynSMHAConfig
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "properties"))
from routing_props import make_router  # noqa: E402

ROUTERS = [
    ("cosine_threshold", {"fallback": "topk", "weighting": "softmax"}),
    ("topk_softmax", {"top_k": 2}),
]


def test_auto_is_exact_on_cpu_and_static_on_cuda():
    assert resolve_dispatch("auto", torch.device("cpu")) == "exact"
    assert resolve_dispatch("auto", torch.device("cuda", 0)) == "static"
    for mode in ("exact", "static"):
        for device in (torch.device("cpu"), torch.device("cuda")):
            assert resolve_dispatch(mode, device) == mode
    assert DynMoEConfig().dispatch == "auto" and DynSMHAConfig().dispatch == "auto"


def test_auto_layer_plans_exactly_on_cpu(monkeypatch):
    """The default layer on the CPU makes a plan with host counts (no capacity rows)."""
    capacities = []
    real = moe_module.plan_dispatch

    def spy(weights, mask, capacity=None):
        capacities.append(capacity)
        return real(weights, mask, capacity)

    monkeypatch.setattr(moe_module, "plan_dispatch", spy)
    torch.manual_seed(0)
    layer = DynMoE(make_router("cosine_threshold", 8, 4), SwiGLUExperts(4, 8, 6, mode="loop"))
    assert layer.dispatch == "auto"
    layer(torch.randn(2, 5, 8), ForwardContext())
    layer.dispatch = "static"
    layer(torch.randn(2, 5, 8), ForwardContext())
    with FlopCounterMode(display=False):  # counting: the active pairs only, whatever the mode
        layer(torch.randn(2, 5, 8), ForwardContext())
    assert capacities == [None, 2 * 5 * 4, None]


def _dynmoe_reference(layer: DynMoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the routing weights (0 where inactive)."""
    flat = x.reshape(-1, x.shape[-1])
    weights = layer.router(flat, None).weights  # (N, E)
    gate, up = torch.einsum("nd,edh->enh", flat, layer.experts.gate_up).chunk(2, dim=-1)
    y = torch.einsum("enh,ehd->end", F.silu(gate) * up, layer.experts.down)  # (E, N, D)
    return torch.einsum("ne,end->nd", weights, y).view(x.shape)


def _dynsmha_reference(layer: DynSMHA, x: torch.Tensor) -> torch.Tensor:
    """Each token's q, k, v and output projections the routing-weighted sums of every
    expert's, then plain attention per head (no positional encoding)."""
    b, t, d = x.shape
    flat = x.reshape(b * t, d)
    weights = layer.router(flat, None).weights  # (N, E)
    qkv = torch.einsum("ne,nd,edk->nk", weights, flat, layer.qkv)  # (N, 3 H Dh)
    heads, dh = layer.heads, layer.head_dim
    q, k, v = (z.reshape(b, t, heads, dh).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
    att = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)  # (B, H, T, T)
    o = (att @ v).transpose(1, 2).reshape(b * t, heads * dh)
    return torch.einsum("ne,nk,ekd->nd", weights, o, layer.out).view(b, t, d)


def _loss_and_grads(layer: torch.nn.Module, x: torch.Tensor, ctx_fn) -> list[torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    out = layer(xx, ctx_fn())
    loss = out.square().mean()
    loss.backward()
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    return [loss.detach(), out.detach(), xx.grad, *grads]


@pytest.mark.parametrize("router", ROUTERS, ids=[r[0] for r in ROUTERS])
@pytest.mark.parametrize("kind", ["dynmoe", "dynsmha"])
def test_static_and_exact_dispatch_give_the_same_loss_as_the_dense_reference(kind, router):
    torch.manual_seed(1)
    d, e = 8, 4
    if kind == "dynmoe":
        exact = DynMoE(make_router(router[0], d, e, **router[1]), SwiGLUExperts(e, d, 6, "loop"))
        reference = _dynmoe_reference
    else:
        cfg = DynSMHAConfig(experts=e, heads=2, head_dim=3, grouped_gemm="loop")
        exact = DynSMHA(make_router(router[0], d, e, **router[1]), cfg, d, 3)
        reference = _dynsmha_reference
    exact = exact.double()
    exact.dispatch = "exact"
    static = copy.deepcopy(exact)
    static.dispatch = "static"
    x = torch.randn(3, 5, d, dtype=torch.float64)
    with torch.no_grad():
        mask = exact.router(x.reshape(-1, d), None).mask
    assert 0 < int(mask.sum()) < mask.numel()  # some pairs active, some not: routing matters

    def ctx() -> ForwardContext:
        return ForwardContext(positions="none")

    got_exact = _loss_and_grads(exact, x, ctx)
    got_static = _loss_and_grads(static, x, ctx)
    for a, b in zip(got_exact, got_static, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.no_grad():
        want = reference(exact, x)
    torch.testing.assert_close(got_exact[1], want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_exact[0], want.square().mean(), rtol=1e-10, atol=1e-12)
