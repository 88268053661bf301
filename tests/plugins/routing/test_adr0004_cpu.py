"""ADR-0004 stacked DynMoE trains on CPU: accuracy rises far above chance within seconds."""

from __future__ import annotations

from pathlib import Path

from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parents[3]


def test_adr0004_learns_to_sort_on_cpu(registry):
    cfg = load_experiment(
        REPO / "experiments" / "adr0004_cpu.yaml",
        # 150 steps at lr 5e-3 after a 20-step warmup (the file: 3e-3, 50 warmup steps; 200
        # steps here before): seeds 0-3 reach 0.94-0.98 token and 0.59-0.87 exact accuracy
        ["train.steps=150", "train.eval_every=150", "train.log_every=50"]
        + ["optimizer.lr=5.0e-3", "optimizer.warmup_steps=20"],
        registry=registry,
    ).config
    trainer = Trainer(cfg, registry, quiet=True)
    records = []
    trainer._log = records.append
    before = trainer.evaluate()
    after = trainer.fit()
    # chance: token accuracy 1/10, exact accuracy about 0 on 8 sorted digits
    assert before["token_acc"] < 0.2 and before["exact_acc"] < 0.01
    assert after["token_acc"] > 0.85 and after["exact_acc"] > 0.3
    # the routers stayed sparse (two cosine routers per layer; 4 and 8 experts)
    assert 1.0 <= records[-1]["experts_per_token"] < 4.0
