"""A corpus of bad inputs: every one gets exit 2 and one line naming where, before any work.

Configs, command-line overrides, ablation files, damaged run directories and a broken data
cache. Each case runs the CLI's ``main()`` in-process (a few in subprocesses, to see what a
user sees) from an empty working directory and asserts: exit status 2, exactly one line on
stderr, starting ``error:`` and naming the file (``file:line`` where the fault has a line),
no traceback, and no directory created anywhere under the test's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ponderkit.app.cli import main

BASE = [
    "name: tiny",  # 1
    "seed: 0",  # 2
    "task: {name: sort, length: 6, values: 8, eval_size: 64}",  # 3
    "model:",  # 4
    "  d_model: 16",  # 5
    "  recursion:",  # 6
    "    name: stacked",  # 7
    "    layers: 1",  # 8
    "    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: swiglu}",  # 9
    "optimizer: {lr: 1.0e-3}",  # 10
    "train: {steps: 4, batch_size: 8, log_every: 2, eval_every: 0, threads: 1}",  # 11
    "callbacks: [ema]",  # 12
]


def base_text(**lines: str) -> str:
    """BASE with line N replaced by ``lines[f"l{N}"]`` (append with ``extra``)."""
    out = [lines.get(f"l{i}", text) for i, text in enumerate(BASE, 1)]
    return "\n".join(out + ([lines["extra"]] if "extra" in lines else [])) + "\n"


# -- configs given to `validate` (and some to `run`): (id, line patch, expected text) --------
CONFIG_CASES = [
    (
        "lr_inf",
        {"l10": "optimizer: {lr: .inf}"},
        "bad.yaml:10: optimizer.lr: must be a finite number",
    ),
    ("lr_nan", {"l10": "optimizer: {lr: .nan}"}, "bad.yaml:10: optimizer.lr"),
    ("lr_negative", {"l10": "optimizer: {lr: -1.0}"}, "bad.yaml:10: optimizer.lr"),
    ("lr_zero", {"l10": "optimizer: {lr: 0}"}, "bad.yaml:10: optimizer.lr"),
    ("lr_string", {"l10": "optimizer: {lr: fast}"}, "bad.yaml:10: optimizer.lr: expected float"),
    ("betas_big", {"l10": "optimizer: {betas: [2, 3]}"}, "bad.yaml:10: optimizer.betas"),
    ("betas_neg", {"l10": "optimizer: {betas: [-0.1, 0.9]}"}, "bad.yaml:10: optimizer.betas"),
    ("betas_one", {"l10": "optimizer: {betas: [1.0, 0.9]}"}, "bad.yaml:10: optimizer.betas"),
    ("betas_short", {"l10": "optimizer: {betas: [0.9]}"}, "bad.yaml:10: optimizer.betas"),
    ("grad_clip_neg", {"l10": "optimizer: {grad_clip: -1}"}, "bad.yaml:10: optimizer.grad_clip"),
    ("grad_clip_inf", {"l10": "optimizer: {grad_clip: .inf}"}, "bad.yaml:10: optimizer.grad_clip"),
    ("wd_neg", {"l10": "optimizer: {weight_decay: -0.1}"}, "bad.yaml:10: optimizer.weight_decay"),
    ("wd_inf", {"l10": "optimizer: {weight_decay: .inf}"}, "bad.yaml:10: optimizer.weight_decay"),
    ("warmup_neg", {"l10": "optimizer: {warmup_steps: -5}"}, "bad.yaml:10: optimizer.warmup"),
    ("min_lr_big", {"l10": "optimizer: {min_lr_ratio: 2}"}, "bad.yaml:10: optimizer.min_lr_ratio"),
    ("decay_typo", {"l10": "optimizer: {decay: cosin}"}, "did you mean 'cosine'"),
    ("optimizer_typo", {"l10": "optimizer: {lrr: 1.0}"}, "bad.yaml:10: optimizer.lrr: unknown"),
    ("max_time_neg", {"l11": "train: {max_time_s: -1}"}, "bad.yaml:11: train.max_time_s"),
    ("max_time_inf", {"l11": "train: {max_time_s: .inf}"}, "bad.yaml:11: train.max_time_s"),
    ("max_time_zero", {"l11": "train: {max_time_s: 0}"}, "bad.yaml:11: train.max_time_s"),
    ("threads_zero", {"l11": "train: {threads: 0}"}, "bad.yaml:11: train.threads"),
    ("threads_neg", {"l11": "train: {threads: -2}"}, "bad.yaml:11: train.threads"),
    ("threads_float", {"l11": "train: {threads: 1.5}"}, "bad.yaml:11: train.threads"),
    ("steps_zero", {"l11": "train: {steps: 0}"}, "bad.yaml:11: train.steps"),
    ("steps_words", {"l11": "train: {steps: lots}"}, "bad.yaml:11: train.steps: expected int"),
    ("batch_zero", {"l11": "train: {batch_size: 0}"}, "bad.yaml:11: train.batch_size"),
    ("log_every_zero", {"l11": "train: {log_every: 0}"}, "bad.yaml:11: train.log_every"),
    ("eval_every_neg", {"l11": "train: {eval_every: -1}"}, "bad.yaml:11: train.eval_every"),
    ("ckpt_neg", {"l11": "train: {checkpoint_every: -1}"}, "bad.yaml:11: train.checkpoint_every"),
    ("ckpt_s_neg", {"l11": "train: {checkpoint_every_s: -1}"}, "train.checkpoint_every_s"),
    ("keep_neg", {"l11": "train: {keep_checkpoints: -1}"}, "bad.yaml:11: train.keep_checkpoints"),
    ("precision", {"l11": "train: {precision: fp8}"}, "bad.yaml:11: train.precision"),
    ("compile_str", {"l11": "train: {compile: yes please}"}, "bad.yaml:11: train.compile"),
    ("device_bogus", {"l11": "train: {device: bogus}"}, "bad.yaml:11: train.device: unknown"),
    ("device_tpu", {"l11": "train: {device: tpu}"}, "bad.yaml:11: train.device"),
    ("device_cuda", {"l11": "train: {device: cuda}"}, "bad.yaml:11: train.device: device 'cuda'"),
    ("device_cuda7", {"l11": "train: {device: 'cuda:7'}"}, "bad.yaml:11: train.device"),
    ("device_int", {"l11": "train: {device: 3}"}, "bad.yaml:11: train.device: expected str"),
    ("seed_huge", {"l2": "seed: 1180591620717411303424"}, "bad.yaml:2: seed: must lie"),
    ("seed_neg", {"l2": "seed: -1"}, "bad.yaml:2: seed"),
    ("seed_float", {"l2": "seed: 1.5"}, "bad.yaml:2: seed: expected int"),
    ("seed_date", {"l2": "seed: 2024-01-01"}, "bad.yaml:2: seed: expected int"),
    ("name_escape", {"l1": "name: ../../x"}, "bad.yaml:1: name: 'name' names the run directory"),
    ("name_slash", {"l1": "name: a/b"}, "bad.yaml:1: name"),
    ("name_abs", {"l1": "name: /etc"}, "bad.yaml:1: name"),
    ("name_dot", {"l1": "name: .hidden"}, "bad.yaml:1: name"),
    ("name_list", {"l1": "name: [a]"}, "bad.yaml:1: name: expected str"),
    ("d_model_zero", {"l5": "  d_model: 0"}, "bad.yaml:5: model.d_model"),
    ("d_model_huge", {"l5": "  d_model: 30000000"}, "bad.yaml:4: model: the model has"),
    ("layers_huge", {"l8": "    layers: 100000000"}, "registers more than 2000 modules"),
    ("rope_neg", {"l5": "  d_model: 16\n  rope_theta: -1"}, "bad.yaml:6: model.rope_theta"),
    ("rope_inf", {"l5": "  d_model: 16\n  rope_theta: .inf"}, "bad.yaml:6: model.rope_theta"),
    ("positions", {"l5": "  d_model: 16\n  positions: absolute"}, "bad.yaml:6: model.positions"),
    ("loss", {"l5": "  d_model: 16\n  loss: mse"}, "bad.yaml:6: model.loss"),
    ("prefix_neg", {"l5": "  d_model: 16\n  puzzle_emb_len: -1"}, "bad.yaml:6: model.puzzle"),
    ("mixer_typo", {"l9": "    block: {name: post_norm, mixer: atention}"}, "bad.yaml:9:"),
    ("task_typo", {"l3": "task: {name: sortt}"}, "bad.yaml:3: task.name"),
    ("task_field", {"l3": "task: {name: sort, lenght: 6}"}, "bad.yaml:3: task.lenght: unknown"),
    ("task_range", {"l3": "task: {name: sort, length: 1}"}, "bad.yaml:3: task"),
    ("callbacks_map", {"l12": "callbacks: {ema: 1}"}, "bad.yaml:12: callbacks: expected a list"),
    ("callback_typo", {"l12": "callbacks: [emma]"}, "bad.yaml:12: callbacks.0"),
    ("top_typo", {"extra": "traim: {steps: 3}"}, "bad.yaml:13: traim: unknown key"),
    # the YAML itself
    ("dup_top", {"extra": "seed: 3"}, "bad.yaml:13: YAML error: duplicate key 'seed'"),
    ("dup_nested", {"l10": "optimizer: {lr: 1.0e-3, lr: 2.0e-3}"}, "bad.yaml:10: YAML error"),
    ("dup_block", {"extra": "model: {d_model: 8}"}, "bad.yaml:13: YAML error: duplicate key"),
    ("bad_indent", {"l5": "   d_model: 16"}, "bad.yaml:"),
    ("unclosed", {"l10": "optimizer: {lr: 1.0e-3"}, "bad.yaml:"),
    ("tab", {"l5": "\td_model: 16"}, "bad.yaml:5: YAML error"),
    ("python_tag", {"l2": "seed: !!python/object/apply:os.system ['true']"}, "bad.yaml:2: YAML"),
    ("custom_tag", {"l3": "task: !thing {name: sort}"}, "bad.yaml:3: YAML error"),
    ("key_is_list", {"extra": "? [a, b]\n: 1"}, "bad.yaml:13: YAML error: a mapping key"),
    ("recursive_alias", {"extra": "loop: &a [*a]"}, "bad.yaml:13: YAML error: nested deeper"),
    ("undefined_alias", {"l2": "seed: *nothing"}, "bad.yaml:2: YAML error"),
]

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    for i in range(8)
)
# (id, file name -> content, argv, expected text)
FILE_CASES = [
    (
        "not_utf8",
        {"bad.yaml": b"name: x\nseed: \xff\xfe\n"},
        ["validate", "bad.yaml"],
        "bad.yaml:2: not UTF-8 text (byte 0xff",
    ),
    (
        "latin1",
        {"bad.yaml": "name: café\n".encode("latin-1")},
        ["validate", "bad.yaml"],
        "bad.yaml:1: not UTF-8",
    ),
    (
        "nul_byte",
        {"bad.yaml": b"name: x\n\x00\n"},
        ["validate", "bad.yaml"],
        "bad.yaml:2: YAML error: control character #x0000",
    ),
    (
        "deep_100k",
        {"bad.yaml": "a: " + "[" * 100_000 + "]" * 100_000 + "\n"},
        ["validate", "bad.yaml"],
        "bad.yaml:1: YAML error: nested deeper than 64",
    ),
    (
        "deep_maps",
        {"bad.yaml": "".join("  " * i + f"k{i}:\n" for i in range(200))},
        ["validate", "bad.yaml"],
        "bad.yaml:64: YAML error: nested deeper than 64",
    ),
    (
        "alias_bomb",
        {"bad.yaml": BOMB},
        ["validate", "bad.yaml"],
        "bad.yaml:1: YAML error: expands to more than",
    ),
    (
        "too_many_aliases",
        {"bad.yaml": "a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n"},
        ["validate", "bad.yaml"],
        "bad.yaml:2: YAML error: more than 1000 aliases",
    ),
    (
        "huge_file",
        {"bad.yaml": "# " + "x" * (4 * 2**20) + "\n"},
        ["validate", "bad.yaml"],
        "bad.yaml is larger than 4 MiB",
    ),
    (
        "top_list",
        {"bad.yaml": "- a\n- b\n"},
        ["validate", "bad.yaml"],
        "bad.yaml: the top level must be a mapping",
    ),
    ("top_scalar", {"bad.yaml": "hello\n"}, ["validate", "bad.yaml"], "bad.yaml: the top level"),
    ("empty", {"bad.yaml": ""}, ["validate", "bad.yaml"], "bad.yaml: task: missing required"),
    ("missing", {}, ["validate", "nothere.yaml"], "config file not found: nothere.yaml"),
    ("directory", {"adir/x.txt": "x"}, ["validate", "adir"], "config file adir is a directory"),
    (
        "extends_missing",
        {"bad.yaml": "extends: gone.yaml\n"},
        ["validate", "bad.yaml"],
        "bad.yaml: extends: extends file not found",
    ),
    (
        "extends_dir",
        {"bad.yaml": "extends: adir\n", "adir/x.txt": "x"},
        ["validate", "bad.yaml"],
        "extends file adir is a directory",
    ),
    (
        "extends_cycle",
        {"bad.yaml": "extends: bad.yaml\n"},
        ["validate", "bad.yaml"],
        "cyclic extends",
    ),
    (
        "extends_list",
        {"bad.yaml": "extends: [a]\n"},
        ["validate", "bad.yaml"],
        "bad.yaml:1: extends: extends must be a file name",
    ),
    (
        "extends_binary",
        {"bad.yaml": "extends: p.yaml\n", "p.yaml": b"\xff\n"},
        ["validate", "bad.yaml"],
        "p.yaml:1: not UTF-8",
    ),
]

# -- overrides on the command line: (id, override, expected text) ---------------------------
OVERRIDE_CASES = [
    ("no_equals", "train.steps", "override 'train.steps' is not of the form key.path=value"),
    ("empty_key", "=3", "not of the form key.path=value"),
    ("empty_part", "train..steps=3", "not of the form key.path=value"),
    ("bad_yaml", "train.steps=[1", "train.steps: override value '[1' is not valid YAML"),
    ("deep", "a=" + "[" * 100_000, "nested deeper than 64"),
    ("alias_loop", "a=&a [*a]", "override value '&a [*a]' is not valid YAML"),
    ("dup_in_value", "optimizer={lr: 1, lr: 2}", "duplicate key 'lr'"),
    ("index_past_end", "callbacks.3=ema", "callbacks.3: list index 3 out of range"),
    ("index_deep_past", "callbacks.3.decay=0.5", "list index 3 out of range (the list has 1"),
    ("index_word", "callbacks.first=ema", "callbacks is a list; index it with a number"),
    ("under_scalar", "model.d_model.x=1", "cannot set a key under model.d_model"),
    ("lr_inf", "optimizer.lr=.inf", "<command line>: optimizer.lr: must be a finite number"),
    ("betas", "optimizer.betas=[2, 3]", "<command line>: optimizer.betas"),
    ("grad_clip", "optimizer.grad_clip=-1", "<command line>: optimizer.grad_clip"),
    ("device", "train.device=bogus", "<command line>: train.device: unknown device"),
    ("cuda", "train.device=cuda:0", "<command line>: train.device"),
    ("threads", "train.threads=-1", "<command line>: train.threads"),
    ("seed_big", "seed=1180591620717411303424", "<command line>: seed"),
    ("seed_date", "seed=2024-01-01", "<command line>: seed: expected int"),
    ("name", "name=../../x", "<command line>: name"),
    ("max_time", "train.max_time_s=-1", "<command line>: train.max_time_s"),
    ("unknown", "train.stepz=3", "train.stepz: unknown key (did you mean 'steps'?)"),
    ("huge", "model.d_model=30000000", "model: the model has"),
]

# -- ablation files: (id, text after `base: exp.yaml`, extra argv, expected text) -----------
ABLATION_CASES = [
    ("seeds_1e9", "seeds: 1e9", [], "abl.yaml:2: seeds: expected a list of seeds"),
    ("seeds_billion", "seeds: 1000000000", [], "abl.yaml:2: seeds"),
    ("seeds_zero", "seeds: 0", [], "abl.yaml:2: seeds"),
    ("seeds_empty", "seeds: []", [], "abl.yaml:2: seeds"),
    ("seeds_negative", "seeds: [-1]", [], "abl.yaml:2: seeds"),
    ("seeds_huge", "seeds: [1180591620717411303424]", [], "abl.yaml:2: seeds"),
    ("seeds_float", "seeds: 2.5", [], "abl.yaml:2: seeds"),
    ("seeds_repeat", "seeds: [1, 1]", [], "abl.yaml:2: seeds: seeds repeat"),
    ("seeds_date", "seeds: [2024-01-01]", [], "abl.yaml:2: seeds"),
    (
        "variant_date",
        "variants:\n  x: {seed: 2024-01-01}",
        [],
        "abl.yaml:3: variants.x.seed: seed: datetime.date(2024, 1, 1) is a date",
    ),
    (
        "variant_date_deep",
        "variants:\n  x: {optimizer: {lr: 2024-01-01}}",
        [],
        "abl.yaml:3: variants.x.optimizer: optimizer: datetime.date",
    ),
    (
        "variant_time",
        "variants:\n  x: {train.steps: 2024-01-01 10:00:00}",
        [],
        "abl.yaml:3: variants.x.train.steps: train.steps: datetime.datetime",
    ),
    (
        "variant_name_escape",
        "variants:\n  ../x: {train.steps: 3}",
        [],
        "abl.yaml:3: variants.../x: a variant name is a directory name",
    ),
    ("variant_name_reserved", "variants:\n  plots: {train.steps: 3}", [], "abl.yaml:3"),
    ("variant_dup", "variants:\n  x: {}\n  x: {}", [], "abl.yaml:4: YAML error: duplicate key"),
    ("variant_not_map", "variants: [a, b]", [], "abl.yaml:2: variants"),
    ("variant_bad_overrides", "variants:\n  x: 3", [], "abl.yaml:3: variants.x: overrides"),
    (
        "variant_unknown_key",
        "variants:\n  x: {train.stepz: 3}",
        [],
        "abl.yaml:3: variants.x: train.stepz: unknown key",
    ),
    (
        "variant_lr_inf",
        "variants:\n  x: {optimizer.lr: .inf}",
        [],
        "abl.yaml:3: variants.x: optimizer.lr",
    ),
    (
        "variant_device",
        "variants:\n  x: {train.device: bogus}",
        [],
        "abl.yaml:3: variants.x: train.device: unknown device",
    ),
    (
        "variant_huge",
        "variants:\n  x: {model.d_model: 30000000}",
        [],
        "variants.x: model: the model has",
    ),
    ("variant_seed", "variants:\n  x: {seed: 3}", [], "abl.yaml:3: variants.x: 'seed=3' sets"),
    (
        "variant_past_end",
        "variants:\n  x: {callbacks.4: ema}",
        [],
        "abl.yaml:3: variants.x: callbacks.4: list index 4 out of range",
    ),
    (
        "steps_budget_time",
        "budget: {steps: 5}\nvariants:\n  x: {train.max_time_s: 5}",
        [],
        "abl.yaml:4: variants.x: 'train.max_time_s=5' sets what the budget (steps) fixes",
    ),
    (
        "time_budget_steps",
        "budget: {time_s: 5}\nvariants:\n  x: {train.steps: 9}",
        [],
        "abl.yaml:4: variants.x: 'train.steps=9' sets what the budget (time_s) fixes",
    ),
    (
        "flops_budget_time",
        "budget: {flops: 1.0e9}\nvariants:\n  x: {train.max_time_s: 5}",
        [],
        "abl.yaml:4: variants.x: 'train.max_time_s=5' sets what the budget (flops)",
    ),
    (
        "budget_whole_train",
        "budget: {steps: 5}\nvariants:\n  x: {train: {threads: 1}}",
        [],
        "abl.yaml:4: variants.x: 'train=",
    ),
    (
        "budget_own_common",
        "budget: {steps: 5}\noverrides: {train.steps: 9}",
        [],
        "abl.yaml:3: overrides: 'train.steps=9' sets what the budget (steps)",
    ),
    ("budget_two", "budget: {steps: 5, time_s: 3}", [], "abl.yaml:2: budget: set one of"),
    ("budget_negative", "budget: {steps: -5}", [], "abl.yaml:2: budget.steps"),
    ("budget_unknown", "budget: {epoch: 5}", [], "abl.yaml:2: budget.epoch: unknown key"),
    ("budget_epochs_no_train_set", "budget: {epochs: 5}", [], "train.epochs: task 'sort' has"),
    ("baseline_unknown", "baseline: bse", [], "abl.yaml:2: baseline: no variant named 'bse'"),
    ("name_escape", "name: ../../x", [], "abl.yaml:2: name: 'name' names the run directory"),
    ("unknown_top", "variantz: {}", [], "abl.yaml:2: variantz: unknown key"),
    ("overrides_str", "overrides: fast", [], "abl.yaml:2: overrides: overrides are a mapping"),
    ("alias_bomb", BOMB.replace("a:", "zz:", 1).replace("*a", "*zz"), [], "abl.yaml"),
    ("only_unknown", "variants: {x: {}}", ["--only", "y"], "--only 'y' is no variant or run"),
    ("jobs_zero", "", ["--jobs", "0"], "--jobs must be at least 1"),
]
ABLATION_FILE_CASES = [
    ("base_missing", "base: nope.yaml\n", "abl.yaml:1: base: base experiment not found"),
    ("base_dir", "base: adir\n", "config file adir is a directory"),
    ("base_bad_yaml", "base: broken.yaml\n", "broken.yaml:2: YAML error"),
    ("no_base", "seeds: [0]\n", "abl.yaml: base: missing required field"),
    ("binary", b"base: exp.yaml\n\xff\n", "abl.yaml:2: not UTF-8"),
]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def check(capsys, root: Path, argv: list[str], expected: str) -> None:
    before = _snapshot(root)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expected in lines[0], (expected, lines[0])
    assert "Traceback" not in captured.err + captured.out
    assert _snapshot(root) == before, "a directory was created"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory holding the base experiment as exp.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(base_text())
    (tmp_path / "broken.yaml").write_text("task: [\n")
    return tmp_path


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


@pytest.mark.parametrize(("patch", "expected"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_bad_config(here, capsys, monkeypatch, patch, expected):
    from ponderkit.engine import build

    monkeypatch.setattr(build, "MAX_MODULES", 2000)  # the real limit, reached sooner
    (here / "bad.yaml").write_text(base_text(**patch))
    check(capsys, here, ["validate", "bad.yaml"], expected)


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_run_and_ablate_refuse_what_validate_refuses(here, capsys, command):
    """`validate` ok means `run` starts; a bad device stops all three the same way."""
    (here / "bad.yaml").write_text(base_text(l11="train: {device: bogus}"))
    (here / "abl.yaml").write_text("base: bad.yaml\n")
    file = "bad.yaml" if command == "run" else "abl.yaml"
    check(capsys, here, [command, file, "--out", "out"], "train.device: unknown device 'bogus'")
    assert not (here / "out").exists()


@pytest.mark.parametrize(("files", "argv", "expected"), [c[1:] for c in FILE_CASES],
                         ids=[c[0] for c in FILE_CASES])  # fmt: skip
def test_bad_file(here, capsys, files, argv, expected):
    _write(here, files)
    check(capsys, here, argv, expected)


@pytest.mark.parametrize(("override", "expected"), [c[1:] for c in OVERRIDE_CASES],
                         ids=[c[0] for c in OVERRIDE_CASES])  # fmt: skip
def test_bad_override(here, capsys, override, expected):
    check(capsys, here, ["validate", "exp.yaml", override], expected)


@pytest.mark.parametrize(("text", "argv", "expected"), [c[1:] for c in ABLATION_CASES],
                         ids=[c[0] for c in ABLATION_CASES])  # fmt: skip
def test_bad_ablation(here, capsys, text, argv, expected):
    (here / "abl.yaml").write_text(f"base: exp.yaml\n{text}\n")
    check(capsys, here, ["ablate", "abl.yaml", "--out", "out", *argv], expected)


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in ABLATION_FILE_CASES],
                         ids=[c[0] for c in ABLATION_FILE_CASES])  # fmt: skip
def test_bad_ablation_file(here, capsys, content, expected):
    (here / "adir").mkdir()
    _write(here, {"abl.yaml": content})
    check(capsys, here, ["ablate", "abl.yaml", "--out", "out"], expected)


# -- damaged run directories --------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real, tiny finished run (4 steps, checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("real")
    (root / "exp.yaml").write_text(base_text())
    out = root / "run"
    argv = ["run", str(root / "exp.yaml"), "--out", str(out), "--quiet"]
    assert main([*argv, "train.checkpoint_every=2"]) == 0
    return out


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _damage(kind: str, run: Path) -> None:
    final = run / "checkpoints" / "final"
    if kind == "final_weights_truncated":
        _truncate(final / "model.safetensors")
    elif kind == "final_state_truncated":
        _truncate(final / "trainer.pt")
    elif kind == "final_weights_garbage":
        (final / "model.safetensors").write_bytes(b"\x00" * 64)
    elif kind == "final_state_text":
        (final / "trainer.pt").write_text("not a checkpoint")
    elif kind == "final_weights_missing":
        (final / "model.safetensors").unlink()
    elif kind == "config_garbage":
        (run / "config.yaml").write_text("task: [\n")
    elif kind == "config_binary":
        (run / "config.yaml").write_bytes(b"\xff\xfe")
    elif kind == "config_missing":
        (run / "config.yaml").unlink()
    elif kind == "config_dir":
        (run / "config.yaml").unlink()
        (run / "config.yaml").mkdir()
    elif kind == "metrics_missing":
        (run / "metrics.jsonl").unlink()
    elif kind == "metrics_dir":
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").mkdir()


RUN_DIR_CASES = [
    # (id, damage, argv with {run}, expected text)
    (
        "eval_weights_truncated",
        "final_weights_truncated",
        ["eval", "{run}"],
        "final/model.safetensors: cannot be loaded",
    ),
    (
        "eval_state_truncated",
        "final_state_truncated",
        ["eval", "{run}"],
        "final/trainer.pt: cannot be loaded",
    ),
    ("eval_weights_garbage", "final_weights_garbage", ["eval", "{run}"], "model.safetensors"),
    ("eval_state_text", "final_state_text", ["eval", "{run}"], "final/trainer.pt: cannot be"),
    (
        "eval_weights_missing",
        "final_weights_missing",
        ["eval", "{run}"],
        "no checkpoint 'final' in",
    ),
    (
        "eval_no_such_checkpoint",
        None,
        ["eval", "{run}", "--checkpoint", "step_0000099"],
        "no checkpoint 'step_0000099'",
    ),
    ("eval_config_missing", "config_missing", ["eval", "{run}"], "is not a run directory"),
    ("eval_config_garbage", "config_garbage", ["eval", "{run}"], "config.yaml:2: YAML error"),
    ("eval_config_binary", "config_binary", ["eval", "{run}"], "config.yaml:1: not UTF-8"),
    ("eval_config_dir", "config_dir", ["eval", "{run}"], "config.yaml is a directory"),
    ("eval_nothing", None, ["eval", "{run}/nowhere"], "is not a run directory"),
    (
        "resume_config_garbage",
        "config_garbage",
        ["run", "exp.yaml", "--out", "{run}", "--resume"],
        "config.yaml:2: YAML error",
    ),
    (
        "resume_config_missing",
        "config_missing",
        ["run", "exp.yaml", "--out", "{run}", "--resume"],
        "is not a run directory (no config.yaml)",
    ),
    (
        "resume_other_config",
        None,
        ["run", "exp.yaml", "train.steps=9", "--out", "{run}", "--resume"],
        "holds a run of a different config",
    ),
    ("resume_no_out", None, ["run", "exp.yaml", "--resume"], "--resume needs --out"),
    (
        "resume_into_file",
        None,
        ["run", "exp.yaml", "--resume", "--out", "{run}/metrics.jsonl"],
        "metrics.jsonl is a file",
    ),
    ("run_existing", None, ["run", "exp.yaml", "--out", "{run}"], "already exists and is not"),
    ("run_into_file", None, ["run", "exp.yaml", "--out", "{run}/meta.json"], "meta.json"),
    ("compare_missing", None, ["compare", "{run}/nowhere"], "not a run directory"),
    ("compare_no_metrics", "metrics_missing", ["compare", "{run}"], "no metrics.jsonl"),
    ("compare_metrics_dir", "metrics_dir", ["compare", "{run}"], "no metrics.jsonl"),
    ("compare_file", None, ["compare", "{run}/meta.json"], "meta.json"),
    ("report_missing", None, ["report", "{run}/nowhere"], "is not a directory"),
    ("report_not_ablation", None, ["report", "{run}"], "is not an ablation directory"),
    ("report_file", None, ["report", "{run}/meta.json"], "meta.json is not a directory"),
    ("ablate_out_file", None, ["ablate", "abl.yaml", "--out", "{run}/meta.json"], "is a file"),
]


@pytest.mark.parametrize(("damage", "argv", "expected"), [c[1:] for c in RUN_DIR_CASES],
                         ids=[c[0] for c in RUN_DIR_CASES])  # fmt: skip
def test_damaged_run_dir(here, real_run, capsys, damage, argv, expected):
    run = here / "copy"
    shutil.copytree(real_run, run)
    (here / "abl.yaml").write_text("base: exp.yaml\n")
    if damage:
        _damage(damage, run)
    check(capsys, here, [a.replace("{run}", "copy") for a in argv], expected)


def test_ablation_over_a_foreign_run_dir(here, real_run, capsys):
    (here / "abl.yaml").write_text("base: exp.yaml\nvariants: {x: {train.steps: 6}}\n")
    shutil.copytree(real_run, here / "out" / "x" / "seed0")  # a run of another config
    check(capsys, here, ["ablate", "abl.yaml", "--out", "out"], "x/seed0: ")
    (here / "out" / "x" / "seed0" / "config.yaml").unlink()
    check(capsys, here, ["ablate", "abl.yaml", "--out", "out"], "is not empty and not a run")


@pytest.mark.parametrize("command", ["validate", "run", "ablate"])
def test_unwritable_cache_fails_before_work(here, capsys, monkeypatch, command):
    (here / "afile").write_text("x")
    monkeypatch.setenv("PONDERKIT_CACHE", str(here / "afile" / "cache"))
    (here / "abl.yaml").write_text("base: exp.yaml\n")
    file = "abl.yaml" if command == "ablate" else "exp.yaml"
    argv = [command, file] + ([] if command == "validate" else ["--out", "out"])
    check(capsys, here, argv, "afile is not a directory")
    assert not (here / "out").exists()


def test_read_only_cache_fails_before_work(here, capsys, monkeypatch):
    """A write that the file system refuses (a read-only mount; root ignores mode bits, so the
    refusal is simulated at the one place the probe writes)."""
    import tempfile

    cache = here / "cache"
    cache.mkdir()
    monkeypatch.setenv("PONDERKIT_CACHE", str(cache))
    real = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == cache:
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    check(capsys, here, ["run", "exp.yaml", "--out", "out"], "is not writable: Read-only")
    assert not (here / "out").exists()


SUBPROCESS_CASES = [
    (["validate", "bad.yaml"], "bad.yaml:13: YAML error: duplicate key 'seed'"),
    (["validate", "bad.yaml", "a=" + "[" * 50_000], "bad.yaml:13: YAML error"),
    (["run", "exp.yaml", "train.device=cuda:3"], "train.device: device 'cuda:3'"),
    (["ablate", "abl.yaml"], "abl.yaml:2: seeds"),
]


@pytest.mark.parametrize(("argv", "expected"), SUBPROCESS_CASES)
def test_what_a_user_sees(here, argv, expected):
    """The real command: status 2, one line on stderr, nothing created in the cwd."""
    (here / "bad.yaml").write_text(base_text(extra="seed: 3"))
    (here / "abl.yaml").write_text("base: exp.yaml\nseeds: 100000000000\n")
    before = _snapshot(here)
    env = {**os.environ, "PONDERKIT_CACHE": str(here / "cache")}
    result = subprocess.run([sys.executable, "-m", "ponderkit", *argv], capture_output=True,
                            text=True, env=env, timeout=120)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert _snapshot(here) == before and result.stdout == ""


def test_corpus_size():
    """The issue asks for at least 100 bad inputs."""
    total = (
        len(CONFIG_CASES) + len(FILE_CASES) + len(OVERRIDE_CASES) + len(ABLATION_CASES)
        + len(ABLATION_FILE_CASES) + len(RUN_DIR_CASES) + 2 + 2 + 3 + 1 + len(SUBPROCESS_CASES)
    )  # fmt: skip
    assert total >= 100, total
    print(json.dumps({"bad inputs": total}))
