"""Factor ladders: rungs one factor group apart, a hand-built path, impossible rungs refused."""

from __future__ import annotations

import textwrap

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.errors import ConfigError
from ponderkit.lab.ablation import config_differences, load_ablation

# the test's own map of factor groups to config paths (independent of ladder.GROUP_PATTERNS)
PREFIXES = {
    "router": ("model.recursion.block.mixer.router.", "model.recursion.block.ffn.router."),
    "library": ("model.recursion.block.mixer.library", "model.recursion.block.ffn.library"),
    "mixer": ("model.recursion.block.mixer.",),
    "ffn": ("model.recursion.block.ffn.",),
    "recursion": ("model.recursion.",),
    "positions": ("model.positions",),
}
DYNSMHA = "{name: dynsmha, experts: 4, heads: 4}"
TARGET = """
  target:
    model.positions: learned
    model.recursion.block.mixer: {name: dynsmha, experts: 4, heads: 4,
                                   router: {name: cosine_threshold, weighting: softmax}}
    model.recursion.block.ffn.expansion: 4
    model.recursion.layers: 1
"""


def group_of(key: str, diff: dict) -> str:
    """A differing key's group; a key on one side only (a router a new mixer brings) belongs
    to the mixer whose name changed."""
    if None in diff[key] and key.startswith("model.recursion.block.mixer."):
        return "mixer"
    return next(g for g, ps in PREFIXES.items() if any(key.startswith(p) for p in ps))


@pytest.fixture
def ladder_file(write, sort_yaml):
    def _file(ladders: str, variants: str = TARGET) -> object:
        text = f"base: {sort_yaml.name}\nseeds: [0]\nvariants:\n  base: {{}}\n"
        text += textwrap.indent(textwrap.dedent(variants).strip("\n"), "  ")
        return write("ladder.yaml", text + "\n" + textwrap.dedent(ladders).lstrip("\n"))

    return _file


def test_rungs_differ_from_their_parent_in_exactly_one_factor_group(ladder_file, registry):
    path = ladder_file("ladders: [{from: base, to: target}]")
    ablation = load_ablation(path, registry=registry, build=False)
    (plan,) = ablation.ladders
    steps = [r["step"] for r in plan["rungs"]]
    # default order; the dynsmha mixer comes with its default router (weighting: mean)
    assert steps == ["positions", "mixer", "ffn", "router", "recursion"]
    assert plan["rungs"][-1]["name"] == "target"  # the last rung is the target arm itself
    for rung in plan["rungs"]:
        diff = config_differences(
            ablation.variant(rung["parent"]).config, ablation.variant(rung["name"]).config
        )
        assert diff and {group_of(k, diff) for k in diff} == {rung["step"]}, (rung, diff)


def test_hand_built_path_equals_the_derived_one(ladder_file, registry):
    # three factors (mixer with its router, ffn, recursion); the path written by hand, in order
    hand = f"""
      h1: {{model.recursion.block.mixer: {DYNSMHA}}}
      h2:
        model.recursion.block.mixer: {DYNSMHA}
        model.recursion.block.ffn.expansion: 4
      target:
        model.recursion.block.mixer: {DYNSMHA}
        model.recursion.block.ffn.expansion: 4
        model.recursion.layers: 1
    """
    path = ladder_file("ladders: [{from: base, to: target, order: [mixer, ffn, recursion]}]", hand)
    ablation = load_ablation(path, registry=registry, build=False)
    rungs = ablation.ladders[0]["rungs"]
    assert [r["name"] for r in rungs] == ["h1", "h2", "target"]  # the same configs: reused
    assert [r["step"] for r in rungs] == ["mixer", "ffn", "recursion"]
    assert ablation.derived == {}  # no new arm: each rung equals a hand-built one


UNIVERSAL = """
  target:
    model.recursion:
      name: universal
      block: {name: post_norm, mixer: {name: attention, heads: 4}, ffn: {name: swiglu, expansion: 2}}
    model.halting.steps: 2
"""


def test_a_rung_that_cannot_be_built_is_refused_in_one_line(ladder_file, registry, capsys):
    # two fixed steps of a stacked model (no carry) are refused: halting may not move first
    path = ladder_file(
        "ladders: [{from: base, to: target, order: [halting, recursion], merge: false}]", UNIVERSAL
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "ladder.yaml:" in err[0] and "rung base+halting cannot be built" in err[0]
    assert err[0].endswith("try order: [recursion, halting]")


def test_groups_that_must_move_together_are_merged_and_named(ladder_file, registry):
    path = ladder_file(
        "ladders: [{from: base, to: target, order: [halting, recursion]}]", UNIVERSAL
    )
    rungs = load_ablation(path, registry=registry, build=False).ladders[0]["rungs"]
    assert [r["step"] for r in rungs] == ["halting_and_recursion"]
    assert rungs[0]["name"] == "target"
    assert "halting alone" in rungs[0]["merged"]


def test_a_group_a_component_brings_moves_after_it(ladder_file, registry):
    # the router exists only once the dynsmha mixer does: asked first, it moves after it
    path = ladder_file("ladders: [{from: base, to: target, order: [router, mixer]}]")
    rungs = load_ablation(path, registry=registry, build=False).ladders[0]["rungs"]
    assert [r["step"] for r in rungs][:2] == ["mixer", "router"]


def test_add_one_in_and_leave_one_out(ladder_file, registry):
    path = ladder_file(
        """
        ladders:
          - {from: base, to: target, mode: add_one_in}
          - {from: base, to: target, mode: leave_one_out}
        """
    )
    ablation = load_ablation(path, registry=registry, build=False)
    add, leave = ablation.ladders
    assert [r["name"] for r in add["rungs"]] == [
        "base+positions", "base+mixer", "base+ffn", "base+recursion"
    ]  # fmt: skip
    assert all(r["parent"] == "base" for r in add["rungs"])
    assert [r["name"] for r in leave["rungs"]][:2] == ["target-positions", "target-mixer"]
    base, target = ablation.variant("base").config, ablation.variant("target").config
    for rung in leave["rungs"]:  # the target less one group: it differs from it there only
        diff = config_differences(target, ablation.variant(rung["name"]).config)
        assert {group_of(k, diff) for k in diff} == {rung["step"]}
    assert config_differences(base, ablation.variant("base+recursion").config) == {
        "model.recursion.layers": [2, 1]
    }


def test_a_bundle_of_groups_moves_in_one_rung(ladder_file, registry):
    """``order: [[positions, mixer], ...]``: a bundle moves in one rung (the groups it names that
    differ), groups the order leaves out follow alone; each rung still differs from its parent
    in exactly the groups it names."""
    path = ladder_file("ladders: [{from: base, to: target, order: [[positions, mixer], [ffn]]}]")
    ablation = load_ablation(path, registry=registry, build=False)
    rungs = ablation.ladders[0]["rungs"]
    # the mixer arrives with its default router, so the router follows as a rung of its own
    assert [r["step"] for r in rungs] == ["positions_and_mixer", "ffn", "router", "recursion"]
    assert rungs[0]["name"] == "base+positions_and_mixer"
    for rung in rungs:
        diff = config_differences(
            ablation.variant(rung["parent"]).config, ablation.variant(rung["name"]).config
        )
        assert {group_of(k, diff) for k in diff} == set(rung["step"].split("_and_")), rung


def test_a_bundle_moves_the_keys_its_component_brings(ladder_file, registry):
    """``[mixer, router]`` in one bundle: the dynsmha mixer arrives with the target's router
    settings in the same rung (its router keys belong to the mixer until it exists), so no
    router rung follows; the rung differs from its parent in mixer and router keys only."""
    path = ladder_file("ladders: [{from: base, to: target, order: [[positions, mixer, router]]}]")
    ablation = load_ablation(path, registry=registry, build=False)
    rungs = ablation.ladders[0]["rungs"]
    assert [r["step"] for r in rungs] == ["positions_and_mixer_and_router", "ffn", "recursion"]
    from ponderkit.lab.ladder import flat_config

    def mixer(name: str) -> dict:
        flat = flat_config(ablation.variant(name).config)
        return {k: v for k, v in flat.items() if k.startswith("model.recursion.block.mixer")}

    assert any(".router." in k for k in mixer("target"))
    assert mixer(rungs[0]["name"]) == mixer("target")


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("[[mixer, mixr]]", "unknown group(s) ['mixr']"),
        ("[[mixer], mixer]", "groups repeat"),
        ("[[]]", "expected a list of groups, or of lists of groups"),
    ],
)
def test_a_bad_bundle_is_refused_where_it_is_written(ladder_file, registry, order, message):
    path = ladder_file(f"ladders: [{{from: base, to: target, order: {order}}}]")
    with pytest.raises(ConfigError) as exc:
        load_ablation(path, registry=registry, build=False)
    assert f"ladders.0.order: {message}" in str(exc.value)


def test_bad_ladder_entries_name_the_key(ladder_file, registry):
    path = ladder_file(
        "ladders: [{from: base, to: target, order: [mixer, mixr]}, {from: base, to: targt}]"
    )
    with pytest.raises(ConfigError) as exc:
        load_ablation(path, registry=registry, build=False)
    text = str(exc.value)
    assert "ladders.0.order: unknown group(s) ['mixr']" in text
    assert "ladders.1: no variant named 'targt'" in text and "target" in text


def _runs(exact: dict[int, float], token: float = 0.9) -> list:
    from ponderkit.lab.run_analysis import RunSummary

    return [
        RunSummary(
            path=None,
            status="finished",
            step=1,
            records=[],
            halting={},
            params={},
            values={"exact_acc": e, "token_acc": token},
            meta={"seed": s},
        )  # fmt: skip
        for s, e in exact.items()
    ]


def test_the_report_attributes_the_difference_rung_by_rung(tmp_path):
    from ponderkit.lab.report_ladder import ladder_and_tune_plots, ladder_section

    plan = {"ladders": [{"from": "a", "to": "b", "mode": "path", "rungs": [
        {"name": "a+mixer", "parent": "a", "step": "mixer", "merged": ""},
        {"name": "b", "parent": "a+mixer", "step": "halting_and_schedule",
         "merged": "halting alone: no carry"},
    ]}]}  # fmt: skip
    done = {
        "a": _runs({0: 0.2, 1: 0.3}),
        "a+mixer": _runs({0: 0.5, 1: 0.7}),
        "b": _runs({0: 0.4, 1: 0.4}),
    }
    text = "\n".join(ladder_section(plan, done))
    # hand: mean of per-seed differences (0.3, 0.4) = +35 pp, then (-0.1, -0.3) = -20 pp
    assert "| `a+mixer` | `a` | mixer | 60.00% | +35.00 pp [" in text
    assert "| `b` | `a+mixer` | halting + schedule | 40.00% | -20.00 pp [" in text
    assert "halting alone: no carry" in text
    assert "Sum of the Δ exact acc: +15.00 pp (`b` - `a`)" in text
    (png,) = ladder_and_tune_plots(plan, done, tmp_path)
    assert png.name == "ladder_a_to_b.png" and png.stat().st_size > 1000
