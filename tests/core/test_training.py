"""End to end on CPU: a small model learns to sort; the run directory is complete."""

from __future__ import annotations

import json

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.flops import Replica
from ponderkit.engine.train import Trainer, lr_factor
from safetensors.torch import load_file


def test_tiny_model_learns_to_sort(sort_yaml, registry):
    cfg = load_experiment(
        sort_yaml, ["train.steps=150", "train.eval_every=150"], registry=registry
    ).config
    trainer = Trainer(cfg, registry, quiet=True)
    before = trainer.evaluate()
    after = trainer.fit()
    # chance exact accuracy on 6 sorted digits is about 0; the trained model is far above it
    assert before["exact_acc"] < 0.05
    assert after["exact_acc"] > 0.5 and after["token_acc"] > 0.9
    assert after["steps"] == 1.0


def test_run_writes_run_directory_and_refuses_to_overwrite(sort_yaml, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(sort_yaml), "--out", str(out), "--quiet", "train.steps=20"]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "checkpoints",
    }
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert {"loss", "token_acc", "exact_acc", "lr", "samples_per_s"} <= set(records[0])
    assert "eval/exact_acc" in records[-1]
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["seed"] == 0
        and meta["parameters"] > 0
        and "ponderkit.plugins.tasks.sort" in meta["plugins"]
    )
    weights = load_file(str(out / "checkpoints/final/model.safetensors"))
    state = torch.load(out / "checkpoints/final/trainer.pt", weights_only=True)
    assert state["step"] == 20 and state["optimizer"]["state"]
    assert any(k.startswith("recursion.blocks.1.") for k in weights)
    # the resolved config re-validates to the same experiment
    assert "train:" in (out / "config.yaml").read_text()

    capsys.readouterr()
    assert main(["run", str(sort_yaml), "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # nothing lost


def test_resolved_config_round_trips(sort_yaml, tmp_path, registry):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(sort_yaml),
                "--out",
                str(out),
                "--quiet",
                "train.steps=10",
                "model.d_model=16",
            ]
        )
        == 0
    )
    original = load_experiment(
        sort_yaml, ["train.steps=10", "model.d_model=16"], registry=registry
    ).config
    assert load_experiment(out / "config.yaml", registry=registry).config == original


@pytest.mark.parametrize("decay", ["constant", "cosine"])
def test_lr_schedule_warmup_then_decay(sort_yaml, registry, decay):
    cfg = load_experiment(
        sort_yaml,
        [f"optimizer.decay={decay}", "optimizer.warmup_steps=10", "optimizer.min_lr_ratio=0.1"],
        registry=registry,
    ).config
    opt = cfg.optimizer.config
    assert lr_factor(0, 100, opt) == pytest.approx(0.1)
    assert lr_factor(9, 100, opt) == pytest.approx(1.0)
    if decay == "constant":
        assert lr_factor(99, 100, opt) == 1.0
    else:
        assert lr_factor(10, 100, opt) == pytest.approx(1.0)
        assert lr_factor(55, 100, opt) == pytest.approx(0.55)
        assert lr_factor(100, 100, opt) == pytest.approx(0.1)


def test_interrupted_run_resumes_to_the_same_result(sort_yaml, tmp_path, registry, monkeypatch):
    overrides = [
        "train.steps=30",
        "train.log_every=5",
        "train.eval_every=0",
        "train.checkpoint_every=10",
    ]
    straight = tmp_path / "straight"
    assert main(["run", str(sort_yaml), "--out", str(straight), "--quiet", *overrides]) == 0

    # the same run, killed during step 25 (after the step-20 checkpoint)
    broken = tmp_path / "broken"
    from ponderkit.plugins.schedules.supervised import Supervised

    real = Supervised.train_step
    calls = {"n": 0}

    def dying(self, *args):
        if isinstance(args[-1], Replica):  # the FLOPs count's replay of a step
            return real(self, *args)
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Supervised, "train_step", dying)
    assert main(["run", str(sort_yaml), "--out", str(broken), "--quiet", *overrides]) == 130
    monkeypatch.setattr(Supervised, "train_step", real)
    steps = [
        json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [5, 10, 15, 20]

    assert (
        main(["run", str(sort_yaml), "--out", str(broken), "--quiet", "--resume", *overrides]) == 0
    )
    records = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]  # nothing lost or doubled
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)  # the clock continues across the resume
    want = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in want], rel=1e-5)
    a = load_file(str(straight / "checkpoints/final/model.safetensors"))
    b = load_file(str(broken / "checkpoints/final/model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    assert (
        main(["run", str(sort_yaml), "--out", str(broken), "--quiet", "--resume", *overrides]) == 0
    )  # finished: nothing to do
    other = main(["run", str(sort_yaml), "--out", str(broken), "--resume", "train.steps=40"])
    assert other == 2  # a different config is refused (bad input)


def test_git_state_outside_a_repository_takes_the_commit_it_is_told(tmp_path, monkeypatch):
    """A GPU machine gets the sources without .git: the commit travels in the environment."""
    import os
    import subprocess

    from ponderkit.engine.runs import git_state

    monkeypatch.delenv("PONDERKIT_GIT_COMMIT", raising=False)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("PONDERKIT_GIT_COMMIT", "0123abcd")
    monkeypatch.setenv("PONDERKIT_GIT_DIRTY", "1")
    assert git_state(tmp_path) == {"commit": "0123abcd", "dirty": True}
    # inside a repository git decides, whatever the environment says
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(
        ["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
        env={**os.environ, **env},
    )
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
