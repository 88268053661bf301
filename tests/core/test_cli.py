"""The command line: list, show, validate; and `list` stays free of heavy imports."""

from __future__ import annotations

import subprocess
import sys

from ponderkit.app.cli import main


def test_list_shows_kinds_names_and_origins(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "block:" in out and "post_norm" in out and "[ponderkit.plugins.layers.blocks]" in out
    assert main(["list", "ffn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ffn:") and "swiglu" in out and "block:" not in out


def test_list_unknown_kind_suggests(capsys):
    assert main(["list", "mixr"]) == 1
    assert "did you mean 'mixer'" in capsys.readouterr().err


def test_list_does_not_import_torch_or_plugin_bodies():
    code = (
        "import sys; from ponderkit.app.cli import main; main(['list']); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('ponderkit.plugins.')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PONDERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_show_prints_fields_doc_and_origin(capsys):
    assert main(["show", "block/post_norm"]) == 0
    out = capsys.readouterr().out
    assert "block/post_norm  (from ponderkit.plugins.layers.blocks" in out
    assert "mixer: mixer component = 'attention'" in out
    assert "eps: float = 1e-05" in out
    assert "Post-norm residual block" in out


def test_show_unknown_component(capsys):
    assert main(["show", "mixer/atention"]) == 1
    assert "did you mean 'attention'" in capsys.readouterr().err
    assert main(["show", "attention"]) == 1
    err = capsys.readouterr().err
    assert "KIND/NAME" in err and "did you mean mixer/attention?" in err


def test_show_kind_prints_the_contract(capsys):
    assert main(["show", "router"]) == 0
    out = capsys.readouterr().out
    for member in ("num_experts: int", "max_active: int", "forward(x: 'Tensor', ctx"):
        assert member in out
    assert "num_experts=E" in out and "ForwardContext.add_routing" in out
    assert "ponderkit.ResettableRouter: enabled, activation_counts" in out
    assert "cosine_threshold" in out and "ponderkit.devkit.conformance.check_router" in out
    assert main(["show", "callback"]) == 0
    out = capsys.readouterr().out
    assert "on_step_end(trainer, step, metrics)" in out


def test_validate_prints_parameter_count(sort_yaml, capsys):
    assert main(["validate", str(sort_yaml)]) == 0
    out = capsys.readouterr().out.strip()
    # d=32, vocab 8, 2 post-norm blocks: qkv 32*96 + out 32*32 + swiglu(256 hidden) 3*32*256
    per_block = 32 * 96 + 32 * 32 + 32 * 512 + 256 * 32
    assert out == f"ok: {8 * 32 + 2 * per_block + 32 * 8} parameters"


def test_validate_reports_three_mistakes_with_paths_and_suggestions(write, capsys):
    path = write(
        "three.yaml",
        """
        task: {name: sort, lenght: 6}
        model:
          d_model: 32
          recursion:
            name: stacked
            block: {name: post_norm, mixer: {name: atention}}
        train: {steps: lots}
        """,
    )
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "three.yaml:1: task.lenght: unknown key (did you mean 'length'?)" in lines[0]
    assert (
        "model.recursion.block.mixer.name: unknown mixer 'atention'; did you mean 'attention'"
        in lines[1]
    )
    assert "three.yaml:7: train.steps: expected int, got str 'lots'" in lines[2]
