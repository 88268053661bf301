"""A router that keeps no activation counts is measured by what it routes: a third-party
top-1 router's FFN counts 1/E of its experts as active, not all of them (dense)."""

from __future__ import annotations

import json
from pathlib import Path

from ponderkit.app.cli import main

HERE = Path(__file__).resolve().parent


def test_a_router_without_counts_is_reported_by_its_real_active_parameters(
    tmp_path, monkeypatch, registry, tiny_sort
):
    monkeypatch.syspath_prepend(str(HERE))
    file = tmp_path / "top1.yaml"
    ffn = "{name: dynmoe, experts: 4, hidden: 8, router: top1_no_counts}"
    train = "{steps: 1, batch_size: 8, log_every: 1, eval_every: 1, threads: 1}"
    file.write_text(tiny_sort("top1", ffn, train))
    run = tmp_path / "run"
    assert (
        main(["run", str(file), "--out", str(run), "--quiet", "--plugin", "third_party_router"])
        == 0
    )

    from ponderkit.contract.loading import Plugins
    from ponderkit.lab.run_analysis import analyse_run

    plugins = Plugins(["third_party_router"])
    analyse_run(run, plugins.registry)
    params = json.loads((run / "active_params.json").read_text())
    # hand count: the FFN's 4 SwiGLU experts of 16 -> 8 -> 16 hold 3 * 16 * 8 = 384 weights
    # each; a token uses exactly one of them, so 3 of 4 experts' weights are inactive
    assert params["routing"]["recursion.blocks.0.ffn.router"]["experts_per_token"] == 1.0
    assert params["parameters"] - params["active_parameters"] == 3 * 384
