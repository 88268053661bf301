"""Whole-layer properties of ``dynmoe`` and ``dynsmha``: the one-expert case is the dense
ffn, token permutations commute with the layer, dead-expert reset leaves live experts alone,
and the router learns from the task loss through the layer."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ponderkit import ForwardContext
from ponderkit.engine.callbacks import CallbackRelay
from ponderkit.engine.train import Trainer
from ponderkit.plugins.callbacks.ema import EMA
from ponderkit.plugins.dynmoe.expert_reset import ExpertReset, ExpertResetConfig
from ponderkit.plugins.dynmoe.experts import SwiGLUExperts
from ponderkit.plugins.dynmoe.moe import DynMoE
from ponderkit.plugins.dynmoe.smha import DynSMHA, DynSMHAConfig
from ponderkit.plugins.layers.swiglu import SwiGLU
from routing_props import DTYPES, PROPERTY, ROUTER_VARIANTS, make_router

shapes = st.fixed_dictionaries(
    {
        "b": st.integers(1, 3),
        "t": st.sampled_from([1]) | st.integers(0, 6),
        "d": st.integers(1, 8),
        "h": st.integers(1, 6),
        "e": st.integers(1, 5),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def dynmoe(name: str, overrides: dict, d: int, h: int, e: int) -> DynMoE:
    return DynMoE(make_router(name, d, e, **overrides), SwiGLUExperts(e, d, h, mode="loop"))


@PROPERTY
@given(
    shape=shapes,
    variant=st.sampled_from(
        [("dense", {}), ("topk_softmax", {"top_k": 1}), ("cosine_threshold", {"fallback": "topk"})]
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_one_expert_dynmoe_equals_the_dense_swiglu(shape, variant, dtype):
    torch.manual_seed(shape["seed"])
    d, h = shape["d"], shape["h"]
    layer = dynmoe(*variant, d, h, 1).to(dtype)
    dense = SwiGLU(d, h).to(dtype)
    with torch.no_grad():
        dense.gate_up.weight.copy_(layer.experts.gate_up[0].T)  # Linear stores (out, in)
        dense.down.weight.copy_(layer.experts.down[0].T)
    x = torch.randn(shape["b"], shape["t"], d, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(layer(x, ForwardContext()), dense(x), atol=tol, rtol=tol)


@PROPERTY
@given(shape=shapes, variant=st.sampled_from(ROUTER_VARIANTS))
def test_dynmoe_is_equivariant_to_token_permutations(shape, variant):
    torch.manual_seed(shape["seed"])
    layer = dynmoe(*variant, shape["d"], shape["h"], shape["e"]).double()
    x = torch.randn(1, shape["b"] * shape["t"], shape["d"], dtype=torch.float64)
    perm = torch.randperm(x.shape[1])
    assert torch.allclose(layer(x[:, perm], None), layer(x, None)[:, perm], atol=1e-12)


@PROPERTY
@given(shape=shapes, variant=st.sampled_from(ROUTER_VARIANTS))
def test_static_dispatch_equals_exact_dispatch(shape, variant):
    """Buffers sized by the router's max_active (N * k for top-k) hold every pair: the static
    layer equals the exact one in outputs and in every gradient."""
    torch.manual_seed(shape["seed"])
    exact = dynmoe(*variant, shape["d"], shape["h"], shape["e"]).double()
    static = copy.deepcopy(exact)
    static.dispatch = "static"
    x = torch.randn(shape["b"], shape["t"], shape["d"], dtype=torch.float64)
    results = []
    for layer in (exact, static):
        xx = x.clone().requires_grad_()
        out = layer(xx, None)
        out.square().sum().backward()
        grads = [p.grad for p in layer.parameters() if p.grad is not None]
        results.append([out.detach(), xx.grad, *grads])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-12), "static and exact dispatch differ"


@PROPERTY
@given(shape=shapes, variant=st.sampled_from(ROUTER_VARIANTS), heads=st.integers(1, 3))
def test_dynsmha_is_equivariant_to_position_and_batch_permutations(shape, variant, heads):
    """Without positional encoding, non-causal attention commutes with permuting positions."""
    torch.manual_seed(shape["seed"])
    d, e = shape["d"], shape["e"]
    cfg = DynSMHAConfig(experts=e, heads=heads, head_dim=shape["h"], grouped_gemm="loop")
    layer = DynSMHA(make_router(variant[0], d, e, **variant[1]), cfg, d, shape["h"]).double()
    ctx = ForwardContext(positions="none")
    x = torch.randn(shape["b"], shape["t"], d, dtype=torch.float64)
    pos, batch = torch.randperm(shape["t"]), torch.randperm(shape["b"])
    y = layer(x, ctx)
    assert torch.allclose(layer(x[:, pos], ctx), y[:, pos], atol=1e-12)
    assert torch.allclose(layer(x[batch], ctx), y[batch], atol=1e-12)


@settings(parent=PROPERTY, max_examples=30)
@given(
    shape=shapes,
    weighting=st.sampled_from(["mean", "softmax"]),
    dead=st.lists(st.booleans(), min_size=5, max_size=5),
    reset_weights=st.booleans(),
)
# failed once on a fresh clone when the output of untouched tokens was compared bit for bit
@example(
    shape={"b": 2, "t": 3, "d": 1, "h": 5, "e": 5, "seed": 54},
    weighting="mean",
    dead=[False, False, False, True, False],
    reset_weights=False,
)
def test_expert_reset_leaves_live_experts_unchanged(shape, weighting, dead, reset_weights):
    """Live experts keep their weights, moments and EMA; a token that no reset expert fires
    for keeps its routing bit for bit and its output up to rounding.

    Why not the output bit for bit: after a reset the dead expert's new tokens take rows in
    the expert-sorted pair buffer, so a live expert's slice starts at another offset. The
    same row times the same weight is then computed at another place of the BLAS kernel
    (SIMD body or scalar tail, another blocking), which may round the last bit differently;
    measured here: ``A[s:s+m] @ W`` differs from ``(A @ W)[s:s+m]`` in 7 of 3,610 rows of a
    (64, 5) @ (5, 1) float64 product. The live computation itself is unchanged, which the
    routing check asserts exactly."""
    torch.manual_seed(shape["seed"])
    d, h, e = shape["d"], shape["h"], shape["e"]
    forced = torch.tensor(dead[:e])
    router_cfg = {"weighting": weighting, "fallback": "zero"}
    layer = dynmoe("cosine_threshold", router_cfg, d, h, e).double().train()
    with torch.no_grad():
        layer.router.threshold.copy_(torch.where(forced, 20.0, torch.rand(e) * 0.6 - 0.3))
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    x = torch.randn(shape["b"], max(shape["t"], 1), d, dtype=torch.float64)
    layer(x, None).square().sum().backward()
    optimizer.step()  # non-zero moments everywhere a gradient reached
    before_out = layer(x, None).detach()
    with torch.no_grad():
        before_routing = layer.router(x.reshape(-1, d))
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in layer.named_parameters()}

    dead = layer.router.activation_counts == 0  # the forced ones, and any that never fired
    assert (dead | ~forced).all()
    # an EMA of the weights (made distinguishable from them) must follow the reset slices
    ema = EMA(decay=0.9)
    trainer = SimpleNamespace(model=layer, callbacks=[ema], hooks=CallbackRelay([ema], ["ema"]))
    trainer.parameters_reset = lambda *args: Trainer.parameters_reset(trainer, *args)
    ema.on_train_start(trainer)
    torch._foreach_add_(ema.shadow, 1.0)
    shadow = {n: s.clone() for (n, _), s in zip(layer.named_parameters(), ema.shadow, strict=True)}
    callback = ExpertReset(ExpertResetConfig(interval=1, reset_weights=reset_weights))
    reset = callback.reset_dead([(layer.router, layer)], optimizer, trainer)

    assert reset == int(dead.sum())
    live = ~dead
    after = dict(layer.named_parameters())
    assert torch.equal(after["router.weight"][:, live], before["router.weight"][:, live])
    assert torch.equal(after["router.threshold"][live], before["router.threshold"][live])
    assert (after["router.threshold"][dead] == 0).all()
    for name in ("experts.gate_up", "experts.down"):
        assert torch.equal(after[name][live], before[name][live])
        state = optimizer.state[after[name]]["exp_avg"]
        assert torch.equal(state[live], moments[name][live])
        if reset_weights:
            assert (state[dead] == 0).all()
    assert (optimizer.state[after["router.weight"]]["exp_avg"][:, dead] == 0).all()
    # EMA: reset slices restart at the new values, everything else keeps its average
    expert_dim = {"router.weight": 1, "router.threshold": 0}
    if reset_weights:
        expert_dim |= {"experts.gate_up": 0, "experts.down": 0}
    for (name, param), avg in zip(after.items(), ema.shadow, strict=True):
        dim = expert_dim.get(name)
        if dim is None:
            assert torch.equal(avg, shadow[name])
            continue
        assert torch.equal(avg.movedim(dim, 0)[dead], param.detach().movedim(dim, 0)[dead])
        assert torch.equal(avg.movedim(dim, 0)[live], shadow[name].movedim(dim, 0)[live])
    # a token none of the reset experts fires for keeps its routing exactly, its output up
    # to rounding (float64)
    with torch.no_grad():
        routing = layer.router(x.reshape(-1, d))
    untouched = ~(routing.mask & dead).any(-1)
    assert torch.equal(routing.mask[untouched], before_routing.mask[untouched])
    assert torch.equal(routing.weights[untouched], before_routing.weights[untouched])
    untouched = untouched.view(x.shape[:2])
    after_out = layer(x, None).detach()
    assert torch.allclose(after_out[untouched], before_out[untouched], rtol=1e-12, atol=1e-12)


@PROPERTY
@given(shape=shapes, dtype=st.sampled_from(DTYPES))
def test_router_learns_through_the_layer_by_the_straight_through_estimator(shape, dtype):
    torch.manual_seed(shape["seed"])
    d, e = max(shape["d"], 2), shape["e"]
    layer = dynmoe("cosine_threshold", {"sdl_weight": 0.0}, d, shape["h"], e)
    x = torch.randn(shape["b"], max(shape["t"], 1), d).to(dtype)
    out = layer(x, None)
    assert out.dtype == dtype and out.shape == x.shape
    out.float().square().sum().backward()
    w, g = layer.router.weight.grad, layer.router.threshold.grad
    assert w is not None and g is not None and torch.isfinite(w).all()
    assert g.abs().sum() > 0, "the task loss did not reach the thresholds"
