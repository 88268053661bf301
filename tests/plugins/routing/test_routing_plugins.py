"""The routing and dynmoe plugins through the registry: YAML configs, errors, the catalogue,
the expert_reset callback inside a real training run, and the ADR-0004 experiments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ponderkit import BuildContext, ConfigError, ForwardContext
from ponderkit.app.cli import main
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parents[3]
ROUTERS = ["cosine_threshold", "topk_softmax", "spl", "dense"]


def build(registry, kind: str, data, d_model: int = 16, **kwargs):
    from ponderkit.contract.config import Structurer

    s = Structurer(registry)
    spec = s.structure_spec(kind, data, ())
    assert not s.issues, s.issues
    return BuildContext(registry, d_model=d_model, seq_len=5).build(spec, **kwargs)


@pytest.mark.parametrize("router", ROUTERS)
def test_each_router_builds_inside_dynmoe_and_dynsmha_from_yaml_data(registry, router):
    torch.manual_seed(0)
    ffn = build(registry, "ffn", {"name": "dynmoe", "experts": 3, "hidden": 8, "router": router})
    mixer = build(
        registry, "mixer", {"name": "dynsmha", "experts": 3, "heads": 2, "router": {"name": router}}
    )
    assert ffn.router.num_experts == mixer.router.num_experts == 3
    ctx = ForwardContext()
    h = torch.randn(2, 5, 16)
    out = ffn(mixer(h, ctx), ctx)
    assert out.shape == h.shape and torch.isfinite(out).all()
    assert {"router/expert_counts", "router/experts_per_token", "router/dead_experts"} <= set(
        ctx.stats
    )
    if router == "cosine_threshold":
        assert set(ctx.losses) == {"router/sdl"}  # two routers, summed under one name


BAD = """
task: {name: sort, length: 4}
model:
  d_model: 16
  recursion:
    name: stacked
    block:
      name: post_norm
      mixer: {name: dynsmha, heads: HEADS}
      ffn: {name: dynmoe, router: ROUTER}
"""


@pytest.mark.parametrize(
    ("heads", "router", "expected"),
    [
        (
            4,
            "{name: cosine_treshold}",
            "ffn.router.name: unknown router 'cosine_treshold'; did you mean 'cosine_threshold'?",
        ),
        (4, "{name: cosine_threshold, weighting: meen}", "expected one of 'mean' | 'softmax'"),
        (4, "{name: topk_softmax, top_k: 0}", "top_k"),
        (3, "cosine_threshold", "d_model=16 is not divisible by heads=3"),
    ],
)
def test_routing_config_errors_name_the_path(registry, write, heads, router, expected):
    path = write("bad.yaml", BAD.replace("HEADS", str(heads)).replace("ROUTER", router))
    with pytest.raises(ConfigError) as err:
        load_experiment(path, registry=registry)
    assert expected in str(err.value)
    assert "model.recursion.block." in str(err.value)


def test_show_describes_the_router(capsys):
    assert main(["show", "router/cosine_threshold"]) == 0
    out = capsys.readouterr().out
    assert "cos(x, w_e) > G_e" in out and "sdl_weight" in out and "fallback" in out


def test_default_configs_match_the_design():
    from ponderkit.plugins.dynmoe.moe import DynMoEConfig
    from ponderkit.plugins.routing.cosine_threshold import CosineThresholdConfig

    cfg = CosineThresholdConfig()
    assert cfg.sdl_weight == 0.01 and cfg.fallback == "topk" and cfg.weighting == "mean"
    assert DynMoEConfig().router == "cosine_threshold"  # the YAML default, resolved on load


@pytest.mark.parametrize(
    "name",
    ["adr0004_stacked_dynmoe.yaml", "adr0004_stacked_dynmoe_maze.yaml", "adr0004_cpu.yaml"],
)
def test_adr0004_experiments_validate(name, registry):
    cfg = load_experiment(REPO / "experiments" / name, registry=registry).config
    block = cfg.model.recursion.config.block.config
    assert (cfg.model.recursion.name, block.mixer.name, block.ffn.name) == (
        "stacked",
        "dynsmha",
        "dynmoe",
    )
    assert block.ffn.config.router.name == block.mixer.config.router.name == "cosine_threshold"
    assert block.ffn.config.router.config.sdl_weight > 0
    assert [c.name for c in cfg.callbacks] == ["expert_reset"]


def test_expert_reset_revives_dead_experts_during_training(registry, sort_yaml):
    overrides = [
        "train.steps=6",
        "train.eval_every=0",
        "model.recursion.block.ffn={name: dynmoe, experts: 4, hidden: 8}",
        "callbacks=[{name: expert_reset, interval: 3, reset_weights: true}]",
    ]
    cfg = load_experiment(sort_yaml, overrides, registry=registry).config
    trainer = Trainer(cfg, registry, quiet=True)
    routers = [b.ffn.router for b in trainer.model.recursion.blocks]
    with torch.no_grad():
        for router in routers:
            router.threshold[0] = 20.0  # G = tanh(20) = 1 >= cos: expert 0 can never fire
            router.cfg = type(router.cfg)(fallback="zero")  # nor be a fallback
    records = []
    trainer._log = records.append
    trainer.fit()
    for router in routers:
        assert abs(float(router.threshold.detach()[0])) < 0.1  # reset to 0 at step 3, then trained
    assert records[-1]["experts_reset"] >= len(routers)
    assert "experts_per_token" in records[-1]


def test_an_ffn_without_experts_is_refused_before_building(registry, write):
    path = write(
        "zero.yaml",
        "task: sort\nmodel:\n  recursion:\n    name: stacked\n"
        "    block: {name: post_norm, ffn: {name: dynmoe, experts: 0}}\n",
    )
    with pytest.raises(ConfigError, match="experts"):
        load_experiment(path, registry=registry)
