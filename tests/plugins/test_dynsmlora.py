"""DynSMLoRA against independent references: B = 0 is the base attention bit for bit; one
expert of weight 1 is base + B A x in float64; experts are exchangeable; only active experts
learn; it trains inside stacked, universal and trm recursions."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ponderkit import ForwardContext
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer
from ponderkit.plugins.dynsmlora.mixer import DynSMLoRA, DynSMLoRAConfig
from ponderkit.plugins.layers.attention import Attention

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "properties"))
from routing_props import PROPERTY, ROUTER_VARIANTS, make_router  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

layers = st.fixed_dictionaries(
    {
        "b": st.integers(1, 3),
        "t": st.integers(1, 6),
        "kv_heads": st.sampled_from([1, 2, 4]),
        "head_dim": st.sampled_from([2, 4]),
        "experts": st.integers(1, 6),
        "rank": st.integers(1, 4),
        "projections": st.sampled_from(["qkvo", "q", "kv", "o", "qv"]),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def make_layer(p: dict, router=("topk_softmax", {"top_k": 1}), d: int = 8) -> DynSMLoRA:
    torch.manual_seed(p["seed"])
    heads = 4
    cfg = DynSMLoRAConfig(
        experts=p["experts"],
        rank=p["rank"],
        heads=heads,
        kv_heads=p["kv_heads"],
        head_dim=p["head_dim"],
        projections=tuple(p["projections"]),
    )
    base = Attention(d, heads, p["head_dim"], False, p["kv_heads"])
    return DynSMLoRA(make_router(router[0], d, p["experts"], **router[1]), base, cfg, d)


def randomise_b(layer: DynSMLoRA) -> None:
    with torch.no_grad():
        for param in layer.lora_parameters():
            if param.dim() == 3:
                param.normal_()


@PROPERTY
@given(p=layers, router=st.sampled_from(ROUTER_VARIANTS), rope=st.booleans())
def test_zero_b_is_the_base_attention_exactly(p, router, rope):
    layer = make_layer(p, router)
    ctx = ForwardContext(positions="rope" if rope else "none")
    x = torch.randn(p["b"], p["t"], 8)
    assert torch.equal(layer(x, ctx), layer.base(x, ctx))


def reference(layer: DynSMLoRA, x: torch.Tensor) -> torch.Tensor:
    """float64, no positions: the chosen expert i (weight 1) of each token adds
    B_i A_i x to every projection with a delta; attention written out."""
    base = layer.base
    b, t, d = x.shape
    x = x.double().reshape(b * t, d)
    chosen = layer.router(x.float()).mask.float().argmax(-1)  # (N,), exactly one each
    wq, wk, wv = base.qkv.weight.double().split(base.widths, dim=0)
    names = layer.inputs

    def delta(name: str, inp: torch.Tensor) -> torch.Tensor:
        if name == "o":
            a, bb = layer.lora_a_out[:, 0], layer.lora_b_out
        else:
            a, bb = layer.lora_a_in[:, names.index(name)], layer.lora_b_in[names.index(name)]
        a, bb = a.double()[chosen], bb.double()[chosen]  # (N, r, Din), (N, r, Dout)
        return torch.einsum("nrd,nd,nro->no", a, inp, bb)

    proj = {}
    for name, weight in zip("qkv", (wq, wk, wv), strict=True):
        proj[name] = x @ weight.T + (delta(name, x) if name in names else 0.0)
    h, kvh, dh = base.heads, base.kv_heads, base.head_dim
    q = proj["q"].view(b, t, h, dh)
    k = proj["k"].view(b, t, kvh, dh).repeat_interleave(h // kvh, dim=2)
    v = proj["v"].view(b, t, kvh, dh).repeat_interleave(h // kvh, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(dh)
    o = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(b * t, h * dh)
    y = o @ base.out.weight.double().T + (delta("o", o) if layer.delta_o else 0.0)
    return y.view(b, t, d)


@PROPERTY
@given(p=layers)
def test_one_active_expert_of_weight_one_is_base_plus_b_a_x(p):
    layer = make_layer(p, ("topk_softmax", {"top_k": 1}))
    randomise_b(layer)
    x = torch.randn(p["b"], p["t"], 8)
    expected = reference(layer, x)
    got = layer.double()(x.double(), ForwardContext(positions="none"))
    assert torch.allclose(got, expected, atol=1e-10, rtol=1e-10)


@PROPERTY
@given(p=layers, router=st.sampled_from([("topk_softmax", {"top_k": 2}), ("dense", {})]))
def test_permuting_experts_with_the_router_columns_leaves_outputs_unchanged(p, router):
    layer = make_layer(p, router).double()
    randomise_b(layer)
    ctx = ForwardContext(positions="rope")
    x = torch.randn(p["b"], p["t"], 8, dtype=torch.float64)
    y = layer(x, ctx)
    perm = torch.randperm(p["experts"])
    with torch.no_grad():
        layer.router.weight.copy_(layer.router.weight[perm])  # (E, D) gate rows
        for param in layer.lora_parameters():
            param.copy_(param[perm])
    assert torch.allclose(layer(x, ctx), y, atol=1e-12)


@PROPERTY
@given(p=layers, top_k=st.integers(1, 2))
def test_gradients_reach_only_the_active_experts(p, top_k):
    layer = make_layer(p, ("topk_softmax", {"top_k": top_k})).double()
    randomise_b(layer)
    # two positions at least: over one key the attention weights are constant, and q, k get
    # no gradient at all
    x = torch.randn(p["b"], max(p["t"], 2), 8, dtype=torch.float64)
    ctx = ForwardContext(positions="rope")
    layer(x, ctx).square().sum().backward()
    with torch.no_grad():
        active = layer.router(x.reshape(-1, 8)).mask.any(0)  # (E,) used by some token
    for param in layer.lora_parameters():
        grad = param.grad.flatten(1)
        assert (grad[~active] == 0).all(), "an inactive expert got a gradient"
        assert (grad[active].abs().sum(-1) > 0).all(), "an active expert got no gradient"


def test_reset_restarts_an_expert_as_no_change():
    p = {"b": 2, "t": 5, "kv_heads": 2, "head_dim": 2, "experts": 4, "rank": 3}
    layer = make_layer({**p, "projections": "qkvo", "seed": 0})
    randomise_b(layer)
    before = [q.detach().clone() for q in layer.lora_parameters()]
    dead = torch.tensor([1, 3])
    touched = layer.reset_experts(dead, weights=True)
    assert {id(q) for q, _ in touched} >= {id(q) for q in layer.lora_parameters()}
    live = torch.tensor([0, 2])
    for old, new in zip(before, layer.lora_parameters(), strict=True):
        assert torch.equal(new[live], old[live])
        if new.dim() == 3:  # B: zero, so the reset experts add nothing
            assert (new[dead] == 0).all()
        else:
            assert not torch.equal(new[dead], old[dead])


@pytest.mark.parametrize(
    "recursion",
    [
        [],
        [
            "model.recursion={name: universal, block: {name: post_norm, mixer: {name: dynsmlora,"
            " heads: 4, experts: 4, rank: 2}, ffn: none}}",
            "model.halting={name: fixed, steps: 2}",
        ],
        [
            "model.recursion={name: trm, layers: 1, H_cycles: 2, L_cycles: 1, block: {name: "
            "post_norm, mixer: {name: dynsmlora, heads: 4, experts: 4, rank: 2}, ffn: none}}"
        ],
    ],
    ids=["stacked", "universal", "trm"],
)
def test_dynsmlora_trains_inside_every_recursion(registry, recursion):
    overrides = ["train.steps=3", "train.batch_size=16", "train.eval_every=0", "task.eval_size=32"]
    overrides += recursion
    cfg = load_experiment(REPO / "experiments/dynsmlora_cpu.yaml", overrides, registry=registry)
    trainer = Trainer(cfg.config, registry, quiet=True)
    lora = [m for m in trainer.model.modules() if isinstance(m, DynSMLoRA)]
    assert lora
    b_before = [m.lora_parameters()[-1].detach().clone() for m in lora]
    trainer.fit()
    # B starts at 0 and the task loss moves it: the deltas learn in this recursion
    assert any((m.lora_parameters()[-1] != b).any() for m, b in zip(lora, b_before, strict=True))
