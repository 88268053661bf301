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
    # 6 values of 8 (not 8 of 10), lr 6e-3 after a 20-step warmup: 80 steps reach 0.44-0.52
    # exact and 0.88-0.90 token accuracy on seeds 0-2 (150 steps on 8 of 10 reached 0.31-0.42)
    trainer = build(
        registry,
        ["task.length=6", "task.values=8", "optimizer.lr=6.0e-3", "optimizer.warmup_steps=20"]
        + ["train.steps=80", "train.batch_size=64", "train.eval_every=80"],
    )
    before = trainer.evaluate()["exact_acc"]
    after = trainer.fit()
    assert before < 0.05 and after["exact_acc"] > 0.15 and after["token_acc"] > 0.7, after
