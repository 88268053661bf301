"""Counting FLOPs leaves every plugin's state as it was: a plugin with Python state trains to
bit-identical weights whether or not its steps are counted."""

from __future__ import annotations

from pathlib import Path

import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer

HERE = Path(__file__).resolve().parent


def trained(tmp_path: Path, text: str, flops_every: int) -> tuple[dict, int, float]:
    plugins = Plugins(["stateful_plugin"])
    file = tmp_path / "stateful.yaml"
    file.write_text(text)
    exp = load_experiment(file, [f"train.flops_every={flops_every}"], registry=plugins.registry)
    trainer = Trainer(exp.config, plugins.registry, quiet=True)
    trainer.fit()
    ffn = trainer.model.recursion.blocks[0].ffn
    return trainer.model.state_dict(), ffn.calls, trainer.flops


def test_a_stateful_plugin_trains_bit_identically_with_and_without_flops_counting(
    tmp_path, monkeypatch, tiny_sort
):
    monkeypatch.syspath_prepend(str(HERE))
    text = tiny_sort(
        "stateful", "counting", "{steps: 4, batch_size: 8, log_every: 4, eval_every: 0, threads: 1}"
    )
    plain, plain_calls, _ = trained(tmp_path, text, 0)
    counted, counted_calls, flops = trained(tmp_path, text, 1)  # every step counted
    assert flops > 0
    assert counted_calls == plain_calls == 4  # one training call per step, none from counting
    assert plain.keys() == counted.keys()
    assert all(torch.equal(plain[k], counted[k]) for k in plain)
