"""Sweeps: ``ablate --sweep KEY=V1,V2`` and ``sweep:`` in ablation files expand into variants."""

from __future__ import annotations

import itertools
import json
import textwrap

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.errors import ConfigError
from ponderkit.lab.ablation import load_ablation


def optimizer(config):
    """The optimizer's config (a component's since optimizers are plugins)."""
    return getattr(config.optimizer, "config", config.optimizer)


@pytest.fixture
def grid(write, sort_yaml):
    def _grid(text: str = "", name: str = "abl.yaml"):
        return write(name, f"base: {sort_yaml.name}\n" + textwrap.dedent(text).lstrip("\n"))

    return _grid


def test_cli_sweep_is_a_cross_product_named_by_values(grid, registry):
    path = grid("budget: {steps: 5}\n")
    sweep = ["optimizer.lr=1e-4,3e-4,1e-3", "model.d_model=16,32"]
    ablation = load_ablation(path, registry=registry, build=False, sweep=sweep)
    want = list(itertools.product(["1e-4", "3e-4", "1e-3"], ["16", "32"]))  # brute force
    assert [v.name for v in ablation.variants] == [f"lr-{a}_d_model-{b}" for a, b in want]
    assert ablation.baseline == "lr-1e-4_d_model-16"  # the first value of every key
    for v, (lr, d) in zip(ablation.variants, want, strict=True):
        assert optimizer(v.config).lr == float(lr) and v.config.model.d_model == int(d)
        assert v.config.train.steps == 5
    # "1e-4" is read as YAML 1.2 reads it: a number, not the text PyYAML would make of it
    assert ablation.variant("lr-1e-4_d_model-16").overrides[0].text == "optimizer.lr=0.0001"


def test_file_sweep_zip_and_variants_crossed(grid, registry):
    path = grid(
        """
        variants:
          one_layer: {model.recursion.layers: 1}
        sweep:
          mode: zip
          keys:
            optimizer.lr: [1.0e-3, 3.0e-3]
            optimizer.weight_decay: [0.0, 0.1]
        """
    )
    ablation = load_ablation(path, registry=registry, build=False)
    names = [v.name for v in ablation.variants]
    points = ["lr-0.001_weight_decay-0", "lr-0.003_weight_decay-0.1"]
    assert names == [f"{v}.{p}" for v in ("base", "one_layer") for p in points]
    assert ablation.baseline == "base." + points[0]
    v = ablation.variant("one_layer." + points[1])
    assert (optimizer(v.config).lr, optimizer(v.config).weight_decay) == (3e-3, 0.1)
    assert v.config.model.recursion.config.layers == 1


def test_cli_replaces_a_key_the_file_sweeps(grid, registry):
    path = grid("sweep: {keys: {optimizer.lr: [1.0e-3, 3.0e-3]}}\n")
    ablation = load_ablation(path, registry=registry, build=False, sweep=["optimizer.lr=0.5"])
    assert [v.name for v in ablation.variants] == ["lr-0.5"]


def test_keys_ending_alike_are_named_in_full(grid, registry):
    path = grid()
    sweep = ["model.recursion.layers=1,2", "model.recursion.block.mixer.heads=2"]
    ablation = load_ablation(path, registry=registry, build=False, sweep=sweep)
    assert [v.name for v in ablation.variants] == ["layers-1_heads-2", "layers-2_heads-2"]


@pytest.mark.parametrize(
    "sweep, message",
    [
        (["optimizer.lr"], "'optimizer.lr' is not KEY=V1,V2"),
        (["optimizer.lr=1e-4,,3e-4"], "an empty value"),
        (["optimizer.lr=1e-4,1e-4"], "a value repeats"),
        (["optimizer.lr=[1"], "not a YAML scalar"),
        (["optimizer.lrr=0.1"], "optimizer.lrr"),
        (["optimizer.lr=fast"], "optimizer.lr"),
    ],
)
def test_bad_cli_sweep_is_one_line_exit_2(grid, capsys, sweep, message):
    path = grid()
    code = main(["ablate", str(path), "--out", str(path.parent / "out"), "--sweep", *sweep])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (path.parent / "out").exists()  # before any work


def test_bad_file_sweep_located(grid, registry):
    path = grid("sweep:\n  mode: zip\n  keys: {optimizer.lr: [0.1, 0.2], model.d_model: [8]}\n")
    with pytest.raises(ConfigError) as info:
        load_ablation(path, registry=registry, build=False)
    (issue,) = info.value.issues
    assert "zip needs as many values" in issue.message and issue.line == 3  # mode:
    path = grid("sweep: {keys: {optimizer.lr: 0.1}}\n", name="b.yaml")
    with pytest.raises(ConfigError, match="b.yaml:2: sweep.keys.optimizer.lr: expected a non"):
        load_ablation(path, registry=registry, build=False)


def test_sweep_plans_like_any_ablation_and_workers_get_it(grid, tmp_path, monkeypatch):
    """``ablate --sweep``: the plan the report reads names the points as variants, and the
    worker command (``--jobs``) carries the sweep, so a worker expands the same variants."""
    from ponderkit.lab import grid as grid_module
    from ponderkit.lab import report

    seen = {}

    def fake_run_grid(ablation, runs, out, registry, **kw):  # the grid itself is tested elsewhere
        seen.update(ablation=ablation, runs=[r.key for r in runs], argv=kw["child_argv"])
        grid_module.write_plan(ablation, runs, out)
        return []

    monkeypatch.setattr(grid_module, "run_grid", fake_run_grid)
    monkeypatch.setattr(report, "write_report", lambda out, **kw: out / "report.md")
    path = grid("budget: {steps: 2}\nseeds: 2\n")
    out = tmp_path / "out"
    code = main(["ablate", str(path), "--out", str(out), "--sweep", "optimizer.lr=1e-3,2e-3"])
    assert code == 0
    assert seen["runs"] == ["lr-1e-3/seed0", "lr-1e-3/seed1", "lr-2e-3/seed0", "lr-2e-3/seed1"]
    assert seen["argv"][-1] == "--sweep=optimizer.lr=1e-3,2e-3"
    plan = json.loads((out / "ablation.json").read_text())
    assert plan["baseline"] == "lr-1e-3"
    assert plan["variants"] == {
        "lr-1e-3": ["optimizer.lr=0.001"],
        "lr-2e-3": ["optimizer.lr=0.002"],
    }
    assert plan["differences"] == {"lr-2e-3": {"optimizer.lr": [0.001, 0.002]}}
    # the worker's own parse of its argv expands the same variants
    from ponderkit.app.cli import build_parser

    args = build_parser().parse_args(seen["argv"][seen["argv"].index("ablate") :])
    assert args.sweep == ["optimizer.lr=1e-3,2e-3"] and args.worker
