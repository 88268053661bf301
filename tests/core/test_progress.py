"""Progress lines of `ponderkit ablate`: the share of the budget, the time left, and reading a
metrics file that is being written."""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.experiment import TrainConfig
from ponderkit.lab.progress import ProgressWatcher, last_record, progress_text, share_done
from ponderkit.plugins.schedules.supervised import Supervised


def test_share_is_the_largest_of_the_limits_that_apply():
    record = {"step": 500, "loss": 0.3, "epoch": 4.1, "flops": 3e15, "elapsed_s": 80.0}
    assert share_done(record, TrainConfig(steps=2000), None) == (0.25, "2,000 steps")
    assert share_done(record, TrainConfig(epochs=10), None) == (pytest.approx(0.41), "10 epochs")
    assert share_done(record, TrainConfig(flops=1e16), None) == (pytest.approx(0.3), "1e+16 FLOPs")
    # a wall-time cap reached first: 80 of 100 s beats 500 of 2000 steps
    assert share_done(record, TrainConfig(steps=2000, max_time_s=100.0), None)[0] == 0.8
    assert share_done(record, TrainConfig(steps=2000), 400.0) == (0.25, "2,000 steps")
    assert share_done(record, TrainConfig(steps=2000), 160.0) == (0.5, "160 s")
    assert share_done({**record, "step": 2500}, TrainConfig(steps=2000), None)[0] == 1.0


def test_progress_text_by_hand():
    record = {"step": 1024, "loss": 0.28754, "epoch": 4.1, "samples_per_s": 537.6,
              "elapsed_s": 100.0}  # fmt: skip
    # 41% done in 100 s: 100 * 0.59 / 0.41 = 143.9 s left
    assert progress_text(record, TrainConfig(epochs=10)) == (
        "41% of 10 epochs (step 1,024, 4.1 epochs), loss 0.2875, 538 samples/s, ~2.4 min left"
    )
    early = {"step": 1, "loss": 2.0, "elapsed_s": 3.0}  # under 1% done: no guess of time left
    assert (
        progress_text(early, TrainConfig(steps=1000)) == "0% of 1,000 steps (step 1), loss 2.0000"
    )
    assert progress_text({"step": 10, "loss": 1.0, "elapsed_s": 5.0}, TrainConfig(steps=20)) == (
        "50% of 20 steps (step 10), loss 1.0000, ~5 s left"
    )


def test_last_record_skips_a_line_being_written_and_evaluation_records(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    assert last_record(metrics) is None  # not there yet
    lines = [{"step": s, "loss": 1.0 / s, "pad": "x" * 200} for s in range(1, 200)]
    lines.append({"step": 199, "eval/exact_acc": 0.5})  # an evaluation record: no loss
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 200, "lo'
    metrics.write_text(text)
    assert len(text) > 16384  # only the tail is read
    assert last_record(metrics)["step"] == 199
    assert last_record(metrics, tail_bytes=100) is None  # the tail holds no whole record
    assert last_record(metrics, tail_bytes=700)["step"] == 199


def test_watcher_says_a_line_only_when_a_run_logged_something_new(tmp_path):
    said: list[str] = []
    watcher = ProgressWatcher(said.append, 0)
    run = tmp_path / "run"
    run.mkdir()
    watcher.watch("a/seed0", run, TrainConfig(steps=100), None)
    watcher.tick()
    assert said == []  # nothing logged yet
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 1.5}) + "\n")
    watcher.tick()
    watcher.tick()
    assert said == ["progress a/seed0: 10% of 100 steps (step 10), loss 1.5000"]
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 20, "loss": 1.25}) + "\n")
    watcher.forget("a/seed0")
    watcher.tick()
    assert len(said) == 1  # a finished run says no more


def test_ablate_says_progress_while_a_run_trains(write, sort_yaml, monkeypatch, capsys):
    path = write(
        "abl.yaml",
        f"base: {sort_yaml.name}\n"
        + textwrap.dedent("""
            budget: {steps: 30}
            overrides: {train.log_every: 1, train.eval_every: 0}
        """),
    )
    real = Supervised.train_step

    def slow(self, *args):
        time.sleep(0.03)  # 30 steps: about a second, several progress periods
        return real(self, *args)

    monkeypatch.setattr(Supervised, "train_step", slow)
    out = path.parent / "out"
    assert main(["ablate", str(path), "--out", str(out), "--progress", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [x for x in lines if "progress base/seed0: " in x]
    assert progress, lines
    assert all("% of 30 steps (step " in x and ", loss " in x for x in progress)
    start = next(i for i, x in enumerate(lines) if "start    base/seed0" in x)
    end = next(i for i, x in enumerate(lines) if "finished base/seed0" in x)
    assert all(start < lines.index(x) < end for x in progress)

    assert main(["ablate", str(path), "--out", str(path.parent / "o2"), "--progress", "0"]) == 0
    assert "] progress " not in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_progress_period_is_one_line_and_exit_2(write, sort_yaml, capsys, value):
    path = write("abl.yaml", f"base: {sort_yaml.name}\nbudget: {{steps: 5}}\n")
    out = path.parent / "out"
    assert main(["ablate", str(path), "--out", str(out), "--progress", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--progress" in err[0] and value in err[0]
    assert not out.exists()


def test_overall_line_counts_the_grid_and_extrapolates_this_invocations_rate(tmp_path):
    """4 runs, 1 finished before; at t=100 s run a (from scratch) is at 50/100 steps and run b
    (resumed at 20/100) at 40/100: done 1 + 0.5 + 0.4 = 1.9 runs (48%); work this invocation
    0.5 + 0.2 = 0.7 runs in 100 s, so (4 - 1.9) / 0.007 = 300 s left."""
    now = [0.0]
    said: list[str] = []
    watcher = ProgressWatcher(said.append, 0, total=4, finished=1, clock=lambda: now[0])
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (b / "metrics.jsonl").write_text(json.dumps({"step": 20, "loss": 2.0}) + "\n")
    watcher.watch("a/seed0", a, TrainConfig(steps=100), None)
    watcher.watch("b/seed0", b, TrainConfig(steps=100), None)
    now[0] = 100.0
    (a / "metrics.jsonl").write_text(json.dumps({"step": 50, "loss": 1.0}) + "\n")
    with (b / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 40, "loss": 1.5}) + "\n")
    watcher.tick()
    assert said[-1] == "progress overall: 1 of 4 runs finished, 2 running; 48% of the grid, " \
        "~5.0 min left"  # fmt: skip
    # a finishes (its 1.0 counts in full): done 2 + 0.4 = 2.4, work 1.0 + 0.2 = 1.2 in 120 s,
    # (4 - 2.4) * 120 / 1.2 = 160 s left
    now[0] = 120.0
    watcher.forget("a/seed0")
    watcher.tick()  # b logged nothing new: no line of its own, the overall line still
    assert said[-1] == "progress overall: 2 of 4 runs finished, 1 running; 60% of the grid, " \
        "~2.7 min left"  # fmt: skip
