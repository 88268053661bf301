"""ADR-0005 DynTRM: one global expert library across blocks and steps; it trains on CPU."""

from __future__ import annotations

from pathlib import Path

from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parents[2]


def build(registry, overrides=()):
    cfg = load_experiment(
        REPO / "experiments/adr0005_cpu.yaml", list(overrides), registry=registry
    ).config
    return Trainer(cfg, registry, quiet=True)


def library_params(model):
    return {
        id(p)
        for name, p in model.named_parameters()
        if name.endswith((".qkv", ".out", "w_gate_up", "w_down")) or ".experts." in name
    }


def test_global_library_is_shared_by_blocks_and_independent_of_depth(registry):
    one = build(registry, ["model.recursion.blocks=1"]).model
    two = build(registry, ["model.recursion.blocks=2"]).model
    deep = build(registry, ["model.recursion.blocks=2", "model.halting.max_steps=12"]).model
    blocks = two.recursion.blocks
    assert blocks[0].mixer.qkv is blocks[1].mixer.qkv
    assert blocks[0].ffn.experts is blocks[1].ffn.experts
    assert blocks[0].mixer.router is not blocks[1].mixer.router  # each block routes itself
    assert len(library_params(two)) == len(library_params(one)) > 0

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(deep) == count(two)
    local = build(
        registry,
        ["model.recursion.block.ffn.library=local", "model.recursion.block.mixer.library=local"],
    ).model
    assert count(local) > count(two)


def test_dyntrm_trains_on_cpu(registry):
    trainer = build(registry, ["train.steps=150", "train.batch_size=64", "train.eval_every=150"])
    before = trainer.evaluate()["exact_acc"]
    after = trainer.fit()
    assert before < 0.05 and after["exact_acc"] > 0.15 and after["token_acc"] > 0.7, after
