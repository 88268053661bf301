"""``library: shared``: one expert library for attention and FFN (ADR-0005 POS-001), its
parameter count, and dead-expert reset over every router that draws from it."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from hypothesis import given
from hypothesis import strategies as st
from ponderkit import ForwardContext
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.callbacks import CallbackRelay
from ponderkit.engine.train import Trainer
from ponderkit.plugins.callbacks.ema import EMA
from ponderkit.plugins.dynmoe.expert_reset import ExpertReset, ExpertResetConfig
from ponderkit.plugins.dynmoe.experts import SharedSwiGLUExperts, library_weights
from ponderkit.plugins.dynmoe.moe import DynMoE
from ponderkit.plugins.dynmoe.smha import DynSMHA, DynSMHAConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "properties"))
from routing_props import PROPERTY, make_router  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def model(registry, overrides=()):
    cfg = load_experiment(REPO / "experiments/adr0005_cpu.yaml", list(overrides), registry=registry)
    return Trainer(cfg.config, registry, quiet=True).model


def count(m) -> int:
    return sum(p.numel() for p in m.parameters())


def routers(m) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if ".router." in n)


def test_attention_and_ffn_draw_from_one_library(registry):
    one = model(registry)
    block = one.recursion.blocks[0]
    assert block.mixer.qkv is block.ffn.experts.w_in and block.mixer.out is block.ffn.experts.w_out
    e, d, w = 8, 64, 64  # experts, d_model, heads * head_dim
    assert tuple(block.mixer.qkv.shape) == (e, d, 3 * w)
    assert tuple(block.mixer.out.shape) == (e, w, d)
    # depth: more steps or more blocks add no library weights (more blocks add routers only)
    assert count(model(registry, ["model.halting.max_steps=12"])) == count(one)
    two = model(registry, ["model.recursion.blocks=2"])
    assert count(two) - count(one) == routers(two) - routers(one) > 0
    # how many modules draw: dropping the FFN removes only its router
    no_ffn = model(registry, ["model.recursion.block.ffn=none"])
    assert count(one) - count(no_ffn) == routers(one) - routers(no_ffn) > 0
    # a library per module costs a second set of expert weights
    local = model(
        registry,
        ["model.recursion.block.mixer.library=local", "model.recursion.block.ffn.library=local"],
    )
    assert count(local) > count(one)


def test_a_shared_ffn_expert_is_a_swiglu_of_the_first_two_thirds():
    torch.manual_seed(0)
    shared: dict = {}
    w_in, w_out = library_weights(shared, 3, 4, 5)
    layer = DynMoE(make_router("dense", 4, 3), SharedSwiGLUExperts(w_in, w_out, "loop")).double()
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    weights = layer.router(x[0]).weights
    wi, wo = w_in.double(), w_out.double()
    expected = sum(
        weights[:, e, None]
        * ((torch.nn.functional.silu(x[0] @ wi[e, :, :5]) * (x[0] @ wi[e, :, 5:10])) @ wo[e])
        for e in range(3)
    )
    assert torch.allclose(layer(x, ForwardContext())[0], expected, atol=1e-12)


@PROPERTY
@given(
    used_attn=st.lists(st.booleans(), min_size=6, max_size=6),
    used_ffn=st.lists(st.booleans(), min_size=6, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_an_expert_is_reset_only_when_every_router_left_it_unused(used_attn, used_ffn, seed):
    torch.manual_seed(seed)
    e, d, heads, dh = 6, 4, 2, 2
    shared: dict = {}
    w_in, w_out = library_weights(shared, e, d, heads * dh)
    cfg = DynSMHAConfig(experts=e, heads=heads, head_dim=dh, grouped_gemm="loop")
    attn = DynSMHA(make_router("cosine_threshold", d, e), cfg, d, dh)
    attn.qkv, attn.out = w_in, w_out
    ffn = DynMoE(make_router("cosine_threshold", d, e), SharedSwiGLUExperts(w_in, w_out, "loop"))
    net = torch.nn.ModuleList([attn, ffn])
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x = torch.randn(2, 3, d)
    (attn(x, ForwardContext()) + ffn(x, ForwardContext())).square().sum().backward()
    optimizer.step()
    with torch.no_grad():  # the window's counts: which experts each router used
        attn.router.activation_counts.copy_(torch.tensor(used_attn).long() * 3)
        ffn.router.activation_counts.copy_(torch.tensor(used_ffn).long() * 2)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in net.named_parameters()}
    ema = EMA(decay=0.9)
    trainer = SimpleNamespace(
        model=net, callbacks=[ema], hooks=CallbackRelay([ema], ["ema"]), optimizer=optimizer
    )
    trainer.parameters_reset = lambda *args: Trainer.parameters_reset(trainer, *args)
    ema.on_train_start(trainer)

    callback = ExpertReset(ExpertResetConfig(interval=1))  # default: weights re-initialised
    metrics: dict = {}
    callback.on_step_end(trainer, 1, metrics)

    dead = ~(torch.tensor(used_attn) | torch.tensor(used_ffn))  # idle in both routers
    assert metrics["dead_experts"] == int(dead.sum())
    after = dict(net.named_parameters())
    assert set(after) == {"0.router.weight", "0.router.threshold", "0.qkv", "0.out"} | {
        "1.router.weight",
        "1.router.threshold",
    }, "the FFN's expert weights are the attention's, named once"
    for name in ("0.qkv", "0.out"):
        param, state = after[name], optimizer.state[after[name]]["exp_avg"]
        assert torch.equal(param[~dead], before[name][~dead])
        assert torch.equal(state[~dead], moments[name][~dead])
        assert (state[dead] == 0).all()
        assert not torch.equal(param[dead], before[name][dead]) or not dead.any()
    for owner in ("0", "1"):  # every router of the group gets fresh slots, live ones kept
        w, g = after[f"{owner}.router.weight"], after[f"{owner}.router.threshold"]
        assert torch.equal(w[:, ~dead], before[f"{owner}.router.weight"][:, ~dead])
        assert (g[dead] == 0).all()
    # EMA restarts the reset slices at the new values
    shadow = dict(zip(after, ema.shadow, strict=True))
    for name in ("0.qkv", "0.out"):
        assert torch.equal(shadow[name][dead], after[name].detach()[dead])


def test_a_shared_ffn_without_a_matching_shared_attention_is_refused(registry):
    from ponderkit import ConfigError

    path = REPO / "experiments/adr0005_cpu.yaml"
    for bad in ("model.recursion.block.ffn.experts=4", "model.recursion.block.mixer.library=local"):
        try:
            load_experiment(path, [bad], registry=registry)
        except ConfigError as exc:
            assert "model.recursion.block.ffn.library" in str(exc), str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")
