"""Builder mistakes are refused when the model is built: one line naming the component, its
plugin and the config path at file:line, exit 2, and no run directory left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ponderkit.app.cli import main

HERE = Path(__file__).resolve().parent

# the tiny sort experiment with one component swapped for a broken one
BASE = """
name: broken
task: {name: sort, length: 4, values: 5, eval_size: 32}
model:
  d_model: 16
  recursion:
    name: stacked
    layers: 1
    block:
      name: post_norm
      mixer: MIXER
      ffn: FFN
  halting: HALTING
callbacks: CALLBACKS
train: {steps: 2, batch_size: 8, log_every: 1, eval_every: 2, threads: 1}
"""

ATTN = "{name: attention, heads: 2}"
CASES = {
    # case: (mixer, ffn, halting, callbacks, expected line, dotted path)
    "none": (ATTN, "returns_none", "fixed", "[]", 11, "model.recursion.block.ffn"),
    "wrong type": ("returns_dict", "swiglu", "fixed", "[]", 10, "model.recursion.block.mixer"),
    "raises": (ATTN, "raises", "fixed", "[]", 11, "model.recursion.block.ffn"),
    "missing method": (ATTN, "swiglu", "no_should_halt", "[]", 12, "model.halting"),
    "misspelt hook": (ATTN, "swiglu", "fixed", "[misspelt_hook]", 13, "callbacks.0"),
    "misspelt argument": (ATTN, "swiglu", "fixed", "[misspelt_argument]", 13, "callbacks.0"),
    "unmarked hook": (ATTN, "swiglu", "fixed", "[unmarked_hook]", 13, "callbacks.0"),
}
EXPECTED = {
    "none": "ffn/returns_none (plugin bad_plugins): the builder returned None",
    "wrong type": "mixer/returns_dict (plugin bad_plugins): the builder returned a dict, "
    "not a torch.nn.Module",
    "raises": "ffn/raises (plugin bad_plugins): building failed: ValueError: hidden width",
    "missing method": "halting/no_should_halt (plugin bad_plugins): the builder returned a "
    "NoShouldHalt without should_halt",
    "misspelt hook": "callback/misspelt_hook (plugin bad_plugins): the builder returned a "
    "Misspelt with an unknown hook 'on_step_ends' (did you mean 'on_step_end'?)",
    "misspelt argument": "callback/misspelt_argument (plugin bad_plugins): the builder returned "
    "a MisspeltArgument whose hook on_step_end(trainer, steps, metrics) takes 'steps', which "
    "the hook does not pass: on_step_end(trainer, step, metrics)",
    "unmarked hook": "callback/unmarked_hook (plugin bad_plugins): the builder returned a "
    "Unmarked whose method 'on_step_end' is not marked @ponderkit.callback_hook",
}


@pytest.fixture(autouse=True)
def _plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_builder_mistake_is_one_located_line_exit_2_and_no_run_dir(
    case, command, tmp_path, monkeypatch, capsys
):
    mixer, ffn, halting, callbacks, line, path = CASES[case]
    text = BASE.replace("MIXER", mixer).replace("FFN", ffn).replace("HALTING", halting)
    file = tmp_path / "broken.yaml"
    file.write_text(text.replace("CALLBACKS", callbacks).lstrip("\n"))
    monkeypatch.chdir(tmp_path)
    args = [command, str(file), "--plugin", "bad_plugins"]
    if command == "run":
        args += ["--out", str(tmp_path / "runs" / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {file}:{line}: {path}: "), err[0]
    assert EXPECTED[case] in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_mutable_config_class_is_refused_at_registration(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    assert main(["list", "ffn", "--plugin", "mutable_config"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"config class Mutable of ffn/mutable must be frozen", err), err


def test_ablate_refuses_a_variant_with_a_builder_mistake_before_any_run(
    tmp_path, monkeypatch, capsys
):
    text = BASE.replace("MIXER", ATTN).replace("FFN", "swiglu").replace("HALTING", "fixed")
    (tmp_path / "base.yaml").write_text(text.replace("CALLBACKS", "[]").lstrip("\n"))
    abl = tmp_path / "abl.yaml"
    abl.write_text(
        "name: abl\nbase: base.yaml\nvariants:\n"
        "  bad: {model.recursion.block.ffn: raises}\nseeds: 1\nbudget: {steps: 2}\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["ablate", str(abl), "--out", str(tmp_path / "out"), "--plugin", "bad_plugins"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {abl}:4: variants.bad: model.recursion.block.ffn: "), line
    assert "ffn/raises (plugin bad_plugins): building failed: ValueError" in line
    assert not (tmp_path / "out").exists()


# -- runtime mistakes: the builder's result passes the contract check, its first forward
# does not; validate/run step the real model once on two samples and refuse it in one line
ROUTED = """
name: broken
task: {name: sort, length: 4, values: 5, eval_size: 32}
model:
  d_model: 16
  recursion:
    name: trm
    layers: 1
    H_cycles: 1
    L_cycles: 1
    block:
      name: post_norm
      mixer: {name: attention, heads: 2}
      ffn: {name: dynmoe, experts: 4, hidden: 8, router: ROUTER}
  halting: HALTING
schedule: deep_supervision
train: {steps: 2, batch_size: 8, log_every: 1, eval_every: 2, threads: 1}
"""
RUNTIME = {
    # case: (router, halting, line, dotted path, expected message)
    "router wrong shape": (
        "wrong_shape",
        "q_ok",
        13,
        "model.recursion.block.ffn.router",
        "router/wrong_shape (plugin bad_plugins): at the first training step, forward "
        "returned Routing.weights of shape (8, 3), not (8, 4) (N, E)",
    ),
    "router wrong type": (
        "wrong_type",
        "q_ok",
        13,
        "model.recursion.block.ffn.router",
        "router/wrong_type (plugin bad_plugins): at the first training step, forward returned "
        "a tensor of shape (8, 4), not a ponderkit.Routing",
    ),
    "router missing method": (
        "missing_method",
        "q_ok",
        13,
        "model.recursion.block.ffn.router",
        "router/missing_method (plugin bad_plugins): at the first training step, "
        "AttributeError: 'RouterMissingMethod' object has no attribute 'rout'",
    ),
    "halting wrong shape": (
        "top1",
        "wrong_shape",
        14,
        "model.halting",
        "halting/wrong_shape (plugin bad_plugins): at the first training step, should_halt "
        "returned a tensor of shape (2, 1) of dtype torch.bool, not a (2,) bool tensor",
    ),
    "halting wrong type": (
        "top1",
        "wrong_type",
        14,
        "model.halting",
        "halting/wrong_type (plugin bad_plugins): at the first training step, forward returned "
        "a tensor of shape (2,), not a dict of halting signals",
    ),
    "halting missing method": (
        "top1",
        "missing_method",
        14,
        "model.halting",
        "halting/missing_method (plugin bad_plugins): at the first training step, "
        "AttributeError: 'HaltingMissingMethod' object has no attribute 'bce'",
    ),
}


@pytest.mark.parametrize("case", list(RUNTIME))
def test_validate_refuses_a_runtime_mistake_in_one_line_exit_2_no_run_dir(
    case, tmp_path, monkeypatch, capsys
):
    router, halting, line, path, expected = RUNTIME[case]
    file = tmp_path / "broken.yaml"
    file.write_text(ROUTED.replace("ROUTER", router).replace("HALTING", halting).lstrip("\n"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(file), "--plugin", "bad_plugins"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {file}:{line}: {path}: "), err[0]
    assert expected in err[0], err[0]
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("*/metrics.jsonl"))


def test_run_refuses_a_runtime_mistake_before_any_run_dir(tmp_path, monkeypatch, capsys):
    file = tmp_path / "broken.yaml"
    file.write_text(ROUTED.replace("ROUTER", "wrong_type").replace("HALTING", "q_ok").lstrip("\n"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "x"
    assert main(["run", str(file), "--out", str(out), "--plugin", "bad_plugins"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "router/wrong_type (plugin bad_plugins): at the first training step" in err
    assert not (tmp_path / "runs").exists()


def test_the_same_plugins_written_right_validate_ok(tmp_path, monkeypatch, capsys):
    file = tmp_path / "fine.yaml"
    file.write_text(ROUTED.replace("ROUTER", "top1").replace("HALTING", "q_ok").lstrip("\n"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(file), "--plugin", "bad_plugins"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
