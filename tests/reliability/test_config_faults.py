"""Bad values in configs and overrides: refused at validate, one line each, exit 2.

Every float field of every component refuses nan and inf (the config layer's float leaf:
``.nan`` and ``.inf`` are valid YAML and train nothing but NaN); fields that must be positive
or in range say so; values that would overflow later (threads, batch, any int past int64) are
refused up front; echoed values and the number of lines are capped.
"""

from __future__ import annotations

import pytest

FLOAT_FIELDS = [
    "optimizer.lr",
    "optimizer.weight_decay",
    "optimizer.min_lr_ratio",
    "optimizer.grad_clip",
    "model.rope_theta",
    "train.max_time_s",
    "train.checkpoint_every_s",
    "model.recursion.block.eps",
    "callbacks.0.decay",
]
NON_FINITE = [".nan", ".inf", "-.inf"]
FINITE_CASES = [(f"{field}={value}", f"<command line>: {field}: must be a finite number")
                for field in FLOAT_FIELDS for value in NON_FINITE]  # fmt: skip

# a component swapped in by an override, with one bad field: (override, expected)
COMPONENT_CASES = [
    ("model.halting={name: act, init_bias: .nan}", "model.halting.init_bias: must be a finite"),
    ("model.halting={name: act, init_bias: .inf}", "model.halting.init_bias: must be a finite"),
    ("model.halting={name: act, eps: .nan}", "model.halting.eps: must be a finite"),
    ("model.halting={name: act, eps: -1}", "model.halting.eps"),
    ("model.halting={name: act, ponder_weight: .nan}", "model.halting.ponder_weight: must be"),
    ("model.halting={name: act, max_steps: 0}", "model.halting.max_steps"),
    ("model.halting={name: pondernet, init_bias: .nan}", "model.halting.init_bias: must be"),
    ("model.halting={name: pondernet, prior: .nan}", "model.halting.prior: must be a finite"),
    ("model.halting={name: pondernet, beta: -.inf}", "model.halting.beta: must be a finite"),
    ("model.halting={name: q_head, exploration: .nan}", "model.halting.exploration: must be"),
    ("model.halting={name: q_head, loss_weight: .inf}", "model.halting.loss_weight: must be"),
    ("model.halting={name: fixed, steps: 0}", "model.halting.steps"),
    ("model.recursion.block.eps=-1", "model.recursion.block.eps: 'eps' must be > 0"),
    ("model.recursion.block.eps=0", "model.recursion.block.eps: 'eps' must be > 0"),
    ("model.recursion.block.mixer.head_dim=-48", "model.recursion.block.mixer.head_dim"),
    ("model.recursion.block.mixer.head_dim=0", "model.recursion.block.mixer.head_dim"),
    ("model.recursion.block.mixer.heads=0", "model.recursion.block.mixer"),
    ("model.recursion.block.ffn.expansion=.nan", "model.recursion.block.ffn.expansion: must be"),
    ("model.recursion.block.ffn.expansion=-2", "model.recursion.block.ffn.expansion"),
    ("model.recursion.layers=0", "model.recursion.layers"),
    ("task={name: arc, eval_views: 0}", "task.eval_views: 'eval_views' must be > 0"),
    ("task={name: arc, data_seed: -1}", "task.data_seed: 'data_seed' must be >= 0"),
    ("task={name: arc, workers: 0}", "task.workers: 'workers' must be > 0"),
    ("task={name: sudoku, workers: 0}", "task.workers: 'workers' must be > 0"),
    ("task={name: sudoku, data_seed: -1}", "task.data_seed: 'data_seed' must be >= 0"),
    ("task={name: maze, workers: -2}", "task.workers: 'workers' must be > 0"),
    ("task={name: maze, data_seed: .nan}", "task.data_seed: expected int"),
    ("model.recursion.block={name: pre_norm, mixer: mlp_t, eps: -1e-5}", "block.eps: 'eps' must"),
    ("model.recursion.block={name: pre_norm, mixer: mlp_t, eps: .nan}", "block.eps: must be a fin"),
    ("task.length=-1", "task"),
    ("task.eval_size=0", "task"),
]
RANGE_CASES = [
    ("train.threads=1099511627776", "train.threads: 'threads' must be <= 4096"),
    ("train.threads=4097", "train.threads: 'threads' must be <= 4096"),
    ("train.batch_size=1000000000", "train.batch_size: 'batch_size' must be <= 1048576"),
    ("train.eval_batch_size=1000000000", "train.eval_batch_size: 'eval_batch_size' must be <="),
    ("train.batch_size=1e9", "train.batch_size: expected int, got str '1e9'"),
    ("model.d_model=1180591620717411303424", "model.d_model: must lie in [-2**63, 2**63)"),
    ("train.steps=-9223372036854775809", "train.steps: must lie in [-2**63, 2**63)"),
    ("model.recursion.layers=99999999999999999999", "model.recursion.layers: must lie in"),
    ("optimizer.lr=1e400", "optimizer.lr: must be a finite number, got '1e400'"),
    ("optimizer.lr=1" + "0" * 400, "optimizer.lr: must be a finite number"),
    ("train.nonfinite=ignore", "train.nonfinite: expected one of 'stop' | 'skip'"),
    ("train.nonfinite=true", "train.nonfinite"),
    ("train.log_every=-1", "train.log_every"),
    ("seed=-5", "seed"),
]
CASES = FINITE_CASES + COMPONENT_CASES + RANGE_CASES


@pytest.mark.parametrize(("override", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_bad_value_is_refused_at_validate(fails, override, expected):
    fails(["validate", "exp.yaml", override], expected)


@pytest.mark.parametrize("command", ["run", "ablate"])
def test_run_and_ablate_refuse_them_before_any_folder(fails, here, command):
    """``batch_size: 1e9`` ended in an allocator traceback and left a run folder."""
    (here / "abl.yaml").write_text("base: exp.yaml\noverrides: {train.batch_size: 1000000000}\n")
    argv = (["run", "exp.yaml", "train.batch_size=1000000000"] if command == "run"
            else ["ablate", "abl.yaml"]) + ["--out", "out"]  # fmt: skip
    fails(argv, "train.batch_size")
    assert not (here / "out").exists()


# -- error lines stay readable ------------------------------------------------------------
LONG_CASES = [
    ("name=" + "a" * 3_000_000, "name: 'name' names the run directory: at most 200"),
    ("name=" + "a/" * 1_000_000, "name: 'name' names the run directory"),
    ("train.steps=" + "x" * 1_000_000, "train.steps: expected int, got str 'xxx"),
    ("train.precision=" + "f" * 1_000_000, "train.precision: expected one of"),
    ("k" * 100_000 + "=1", "unknown key"),
    ("model.halting=" + "h" * 100_000, "model.halting"),
]


@pytest.mark.parametrize(("override", "expected"), LONG_CASES, ids=[f"long{i}" for i in range(len(LONG_CASES))])
def test_a_huge_value_is_echoed_cut(fails, override, expected):
    line = fails(["validate", "exp.yaml", override], expected)
    assert len(line) < 1300, len(line)


def test_a_huge_value_in_a_file_is_echoed_cut(fails, here, base_yaml):
    (here / "bad.yaml").write_text(base_yaml + "description: [" + "1, " * 2_000 + "1]\n")
    line = fails(["validate", "bad.yaml"], "bad.yaml:13: description: expected str, got list")
    assert len(line) < 1300 and "more characters" in line


def test_three_thousand_problems_print_twenty_lines_and_a_count(here, capsys, base_yaml):
    from ponderkit.app.cli import main

    (here / "bad.yaml").write_text(base_yaml + "".join(f"junk{i}: 1\n" for i in range(3_000)))
    assert main(["validate", "bad.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 21, len(lines)
    assert lines[0].startswith("error: bad.yaml:13: junk0: unknown key")
    assert lines[-1] == "error: ... and 2980 more problems like these"


def test_case_count():
    assert len(CASES) + len(LONG_CASES) + 2 + 2 >= 70, len(CASES)
