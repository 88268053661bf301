"""Tuned arms: the validation split, tuning that never reads the evaluation set, the pick."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from ponderkit.app.cli import main
from ponderkit.contract.errors import ConfigError
from ponderkit.lab import grid
from ponderkit.lab.ablation import flat_config, load_ablation
from ponderkit.lab.tune import apply_tuning, tuning_runs
from ponderkit.plugins.tasks.arrays import ArrayTask
from ponderkit.plugins.tasks.sort import SortConfig, SortTask

# lr 1e-6 learns nothing in 8 steps, 3e-3 something: the pick is known in advance
TUNED = """
overrides: {train.log_every: 4, train.eval_every: 100, train.checkpoint_every: 0,
            train.batch_size: 32, optimizer.warmup_steps: 0, task.eval_size: 64}
variants:
  base: {}
  narrow: {model.d_model: 16}
seeds: [0]
budget: {steps: 2}
tune: {lr: [1e-6, 3.0e-3], budget: {steps: 8}, split: 0.5}
"""


@pytest.fixture
def tuned(write, sort_yaml):
    def _file(text: str = TUNED):
        return write("tuned.yaml", f"base: {sort_yaml.name}\n" + textwrap.dedent(text).lstrip())

    return _file


def test_array_holdout_is_the_tail_of_the_training_set_and_training_never_draws_it():
    n = 40
    data = {
        "train_inputs": np.arange(n)[:, None].repeat(3, 1),  # row i holds i: its identity
        "train_labels": np.arange(n)[:, None].repeat(3, 1),
        "eval_inputs": np.full((5, 3), -1),
        "eval_labels": np.full((5, 3), -1),
    }
    task = ArrayTask(100, 3, lambda: data, augment=None).holdout(0.25)
    held = [int(x) for b in task.eval_batches(4) for x in b["inputs"][:, 0]]
    assert held == list(range(30, 40))  # the last 10 training examples, in order
    stream = task.train_batches(8, seed=0)
    seen = {int(x) for _ in range(50) for x in next(stream)["inputs"][:, 0]}
    assert seen == set(range(30))  # all of the rest, none held out, no evaluation row
    assert task.train_size == 30


def test_sort_holdout_keeps_its_sequences_out_of_training():
    task = SortTask(SortConfig(length=3, values=3, eval_size=40), seed=0).holdout(0.25)
    held = {tuple(r) for b in task.eval_batches(64) for r in b["inputs"].tolist()}
    assert len(held) >= 5  # 10 draws of 27 possible sequences
    stream = task.train_batches(64, seed=1)
    for _ in range(20):
        batch = next(stream)
        assert len(batch["inputs"]) == 64
        assert not {tuple(r) for r in batch["inputs"].tolist()} & held


def test_tuning_never_reads_the_evaluation_split(tuned, registry, tmp_path, monkeypatch):
    ablation = load_ablation(tuned(), registry=registry)
    runs = tuning_runs(ablation, registry)
    assert [r.key for r in runs] == [
        "tune/base/lr=1e-06/seed0", "tune/base/lr=0.003/seed0",
        "tune/narrow/lr=1e-06/seed0", "tune/narrow/lr=0.003/seed0",
    ]  # fmt: skip

    def forbidden(self, batch_size):
        raise AssertionError("the evaluation set was read")

    monkeypatch.setattr(SortTask, "eval_batches", forbidden)
    out = tmp_path / "out"
    assert grid.run_grid(ablation, runs[:1], out, registry, say=lambda _: None) == []
    scores = json.loads((runs[0].directory(out) / "validation.json").read_text())
    assert 0 <= scores["token_acc"] <= 1 and scores["flops"] > 0
    # the instrument bites: a comparison run evaluates on the evaluation set, and fails
    (plain,) = [r for r in ablation.runs() if r.variant == "base"]
    assert grid.run_grid(ablation, [plain], out, registry, say=lambda _: None) == [plain.key]


def test_each_arm_runs_with_the_argmax_of_its_validation_scores(tuned, registry, tmp_path):
    path = tuned()
    out = tmp_path / "out"
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    ablation = load_ablation(path, registry=registry)
    for arm in ("base", "narrow"):
        by_lr = {}
        for run_dir in (out / "tune" / arm).glob("lr=*/seed0"):
            records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n")
                       if x]  # fmt: skip
            evals = [r for r in records if "eval/exact_acc" in r]
            by_lr[float(run_dir.parent.name[3:])] = (
                evals[-1]["eval/exact_acc"],
                evals[-1]["eval/token_acc"],
            )
        assert set(by_lr) == {1e-6, 3e-3}
        best = max(by_lr, key=lambda lr: by_lr[lr])  # exact, then token accuracy
        assert best == 3e-3  # lr 1e-6 learns nothing in 8 steps
        saved = (out / arm / "seed0" / "config.yaml").read_text()
        assert "lr: 0.003" in saved, saved
    plan = json.loads((out / "ablation.json").read_text())
    assert plan["tuning"]["picks"]["narrow"]["optimizer.lr"] == 3e-3
    assert plan["confounds"]["narrow"] == ["model.d_model"]  # the tuned lr is no confound
    report = (out / "report.md").read_text()
    assert "## Tuned arms" in report and "**" in report
    assert (out / "plots" / "tuning.png").exists()
    # a second ablate skips every tuning and comparison run, and picks the same
    again = apply_tuning(ablation, out, registry)
    assert flat_config(again.variant("base").config)["optimizer.lr"] == 3e-3


def test_confounds_error_accepts_tuned_keys_only(tuned, registry):
    text = TUNED.replace("narrow: {model.d_model: 16}", "narrow: {optimizer.lr: 0.01}")
    with pytest.raises(ConfigError) as exc:
        load_ablation(tuned("confounds: error\nfactor: [model]\n" + text), registry=registry)
    assert "'optimizer.lr=0.01' sets what tune: picks for every arm" in str(exc.value)
    ok = TUNED.replace("narrow: {model.d_model: 16}", "narrow: {model.recursion.layers: 1}")
    load_ablation(tuned("confounds: error\nfactor: [model]\n" + ok), registry=registry)


def test_tune_on_a_task_without_a_validation_split_is_refused_in_one_line(write, capsys):
    # seq2seq wraps another task and has no holdout(fraction)
    path = write(
        "seq.yaml",
        """
        task: {name: seq2seq, task: {name: sort, length: 4, values: 4, eval_size: 16}}
        model:
          d_model: 16
          recursion:
            name: stacked
            layers: 1
            block: {name: pre_norm, mixer: {name: attention, heads: 2, causal: true}}
          halting: fixed
        schedule: teacher_forcing
        train: {steps: 2, batch_size: 8}
        """,
    )
    ablation = write("abl.yaml", f"base: {path.name}\ntune: {{lr: [1.0e-3]}}\n")
    assert main(["validate", str(ablation)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "abl.yaml:2: tune: task 'seq2seq' cannot set part" in err[0], err


def test_only_a_tuning_run(tuned, tmp_path):
    out = tmp_path / "out"
    assert main(["ablate", str(tuned()), "--out", str(out), "--only", "tune/base/lr=1e-06"]) == 0
    assert (out / "tune" / "base" / "lr=1e-06" / "seed0" / "validation.json").exists()
    assert not (out / "tune" / "base" / "lr=0.003").exists()
    assert not (out / "base").exists()  # no comparison run without every arm's pick
