"""Recovery on damaged copies of a real tiny run: each ends where an undamaged run ends.

The reference is the same run trained straight through; training is deterministic on CPU, so
a recovered run must reproduce its metrics and final weights (to float tolerance).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.engine.flops import Replica
from ponderkit.engine.runs import CheckpointDamaged, load_checkpoint
from ponderkit.plugins.schedules.supervised import Supervised
from safetensors.torch import load_file

# the experiment of tests/conftest.py's sort_yaml, for module-scoped fixtures
SORT_EXPERIMENT = runpy.run_path(str(Path(__file__).parents[1] / "conftest.py"))["SORT_EXPERIMENT"]
TINY = ["train.steps=12", "train.log_every=2", "train.eval_every=0", "train.threads=1",
        "train.checkpoint_every=4", "train.batch_size=32"]  # fmt: skip


def steps(run) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def records(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def run_cli(sort_yaml, out, *extra) -> int:
    return main(["run", str(sort_yaml), "--out", str(out), "--quiet", *TINY, *extra])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 12 steps without interruption."""
    root = tmp_path_factory.mktemp("straight")
    (root / "sort.yaml").write_text(SORT_EXPERIMENT)
    assert run_cli(root / "sort.yaml", root / "run") == 0
    return root / "run"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The same run stopped during step 11: checkpoints at steps 4 and 8, metrics up to 10."""
    root = tmp_path_factory.mktemp("interrupted")
    (root / "sort.yaml").write_text(SORT_EXPERIMENT)
    real, calls = Supervised.train_step, {"n": 0}

    def dying(self, *args):
        # the FLOPs count's replay of a step, and the smoke step before the run (no run dir)
        if isinstance(args[-1], Replica) or not getattr(args[-1], "keeps_run", False):
            return real(self, *args)
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(self, *args)

    Supervised.train_step = dying
    try:
        assert run_cli(root / "sort.yaml", root / "run") == 130
    finally:
        Supervised.train_step = real
    assert steps(root / "run") == [2, 4, 6, 8, 10]
    return root / "run"


@pytest.fixture
def damaged(interrupted, tmp_path, sort_yaml):
    """A fresh copy of the interrupted run to damage."""
    run = tmp_path / "copy"
    shutil.copytree(interrupted, run)
    return run


def assert_same_as_straight(run, straight):
    assert steps(run) == steps(straight)  # nothing lost, nothing logged twice
    want = [r["loss"] for r in records(straight)]
    assert [r["loss"] for r in records(run)] == pytest.approx(want, rel=1e-5)
    a = load_file(str(straight / "checkpoints/final/model.safetensors"))
    b = load_file(str(run / "checkpoints/final/model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_resume_falls_back_past_a_truncated_newest_checkpoint(damaged, straight, sort_yaml,
                                                              capsys):  # fmt: skip
    truncate(damaged / "checkpoints/step_0000008/trainer.pt")
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    err = capsys.readouterr().err
    assert "step_0000008/trainer.pt: cannot be loaded" in err
    assert "falling back to step_0000004" in err
    assert_same_as_straight(damaged, straight)
    assert (damaged / "checkpoints" / ".damaged-step_0000008" / "trainer.pt").exists()  # kept


def test_a_truncated_oldest_checkpoint_does_not_block(damaged, straight, sort_yaml, capsys):
    truncate(damaged / "checkpoints/step_0000004/trainer.pt")
    truncate(damaged / "checkpoints/step_0000004/model.safetensors")
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    assert "warning" not in capsys.readouterr().err  # the newest was intact: never looked at
    assert_same_as_straight(damaged, straight)


def test_no_intact_checkpoint_starts_over(damaged, straight, sort_yaml, capsys):
    for name in ("step_0000004", "step_0000008"):
        (damaged / "checkpoints" / name / "model.safetensors").write_bytes(b"\0" * 10)
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    assert "no older checkpoint; starting over" in capsys.readouterr().err
    assert_same_as_straight(damaged, straight)


def test_half_written_last_metrics_line_is_dropped_on_resume(damaged, straight, sort_yaml,
                                                             capsys):  # fmt: skip
    with (damaged / "metrics.jsonl").open("a") as f:
        f.write('{"step": 12, "loss": 0.')  # the disk filled up mid-line
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl:6: half-written last line skipped" in err
    assert_same_as_straight(damaged, straight)


def test_bad_metrics_lines_are_skipped_by_compare_and_report(straight, tmp_path, capsys):
    run = tmp_path / "abl" / "base" / "seed0"
    shutil.copytree(straight, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "garbage"
    lines.insert(3, '{"step": "three"}')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["compare", str(run)]) == 0
    out, err = capsys.readouterr()
    assert f"{run}/metrics.jsonl:2: line skipped (not JSON" in err
    assert f"{run}/metrics.jsonl:4: line skipped (step 'three' is not a step number)" in err
    assert "| finished | 12 |" in out  # the good lines still make the row
    assert main(["report", str(tmp_path / "abl")]) == 0
    assert "metrics.jsonl:2: line skipped" in capsys.readouterr().err


@pytest.mark.parametrize("file", ["model.safetensors", "trainer.pt"])
def test_a_final_checkpoint_that_fails_to_load_marks_the_run_incomplete(straight, tmp_path,
                                                                        capsys, file):  # fmt: skip
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "halting.json").write_text("{}")  # even an analysed run
    truncate(run / "checkpoints" / "final" / file, keep=0.9)
    assert main(["compare", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "| incomplete |" in out and "final checkpoint damaged" in err
    with pytest.raises(CheckpointDamaged):
        load_checkpoint(run / "checkpoints" / "final")


def test_a_checkpoint_that_would_run_code_is_refused(damaged, sort_yaml, tmp_path, capsys):
    """``weights_only=True``: a crafted trainer.pt cannot execute anything on resume."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 8, "x": Exploit()}, damaged / "checkpoints/step_0000008/trainer.pt")
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    assert not marker.exists()
    assert "step_0000008/trainer.pt: cannot be loaded (UnpicklingError" in capsys.readouterr().err


def test_first_speed_after_a_resume_counts_only_the_new_window(damaged, sort_yaml, monkeypatch):
    """A resume continues the clock (elapsed_s) but its first speed window starts at the
    resume; before, it spanned the whole earlier run and read far too slow."""
    from ponderkit.engine.train import Trainer

    real = Trainer.restore

    def restore_after_a_long_run(self, checkpoint):
        real(self, checkpoint)
        self.elapsed_before += 1000.0  # as if the first segment had trained for 1000 s more

    monkeypatch.setattr(Trainer, "restore", restore_after_a_long_run)
    before = [r["samples_per_s"] for r in records(damaged)]
    assert run_cli(sort_yaml, damaged, "--resume") == 0
    after = records(damaged)
    first = next(r for r in after if r["step"] == 10)  # the first record logged after resuming
    assert first["elapsed_s"] > 1000.0
    # 2 steps x 32 samples in well under a second; the old window would give < 0.07 samples/s
    assert first["samples_per_s"] > 0.2 * sorted(before)[len(before) // 2]


def test_default_cadence_checkpoints_by_time_and_keeps_the_newest(sort_yaml, tmp_path):
    from ponderkit.contract.experiment import TrainConfig

    assert TrainConfig().checkpoint_every == 0 and TrainConfig().checkpoint_every_s > 0
    out = tmp_path / "run"
    argv = [
        "train.checkpoint_every=0",
        "train.checkpoint_every_s=1.0e-9",
        "train.keep_checkpoints=2",
    ]
    assert run_cli(sort_yaml, out, *argv) == 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["final", "step_0000011", "step_0000012"]  # every step saved, 2 kept


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_then_exits(sort_yaml, tmp_path, sig):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "ponderkit", "run", str(sort_yaml), "--out", str(out),
            "--quiet", "train.steps=100000", "train.log_every=1", "train.eval_every=0",
            "train.threads=1", "train.checkpoint_every_s=0"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len(steps(out)) >= 3
    ):
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    saved = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert len(saved) == 1, err
    _, state = load_checkpoint(saved[0])
    assert state["step"] == int(saved[0].name[5:]) >= max(steps(out))
    assert f"{signal.Signals(sig).name} at step {state['step']}; checkpoint" in err


def test_files_follow_the_umask(sort_yaml, tmp_path):
    old = os.umask(0o027)
    try:
        assert run_cli(sort_yaml, tmp_path / "run") == 0
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path, mode in [("config.yaml", 0o640), ("meta.json", 0o640), ("metrics.jsonl", 0o640),
                       ("checkpoints/final", 0o750), ("checkpoints/final/trainer.pt", 0o640),
                       ("checkpoints/final/model.safetensors", 0o640),  # safetensors: 0600
                       ("checkpoints/step_0000004", 0o750)]:  # fmt: skip
        assert (run / path).stat().st_mode & 0o777 == mode, path
