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
