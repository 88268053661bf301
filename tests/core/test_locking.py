"""One writer per run directory, workers that die with their parent, a closed pipe."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ponderkit.app.cli import main
from ponderkit.engine.runlock import RunLock, RunLocked

HOLD = textwrap.dedent(
    """
    import sys, time
    from ponderkit.engine.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding ``directory``'s lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie waits for its reaper but runs nothing


def test_a_second_writer_is_refused_with_the_holders_pid(sort_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=4"]) == 0
    (tmp_path / "abl.yaml").write_text(f"base: {sort_yaml.name}\nbudget: {{steps: 4}}\n")
    holder = hold_lock(run)
    try:
        argv = ["run", str(sort_yaml), "train.steps=4", "--out", str(run), "--resume"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{run} is in use by pid {holder.pid}" in err[0]

        ablation = tmp_path / "out"
        ablation.mkdir()
        other = hold_lock(ablation)
        try:
            assert main(["ablate", str(tmp_path / "abl.yaml"), "--out", str(ablation)]) == 2
            assert f"is in use by pid {other.pid}" in capsys.readouterr().err
            assert not (ablation / "base").exists()  # refused before any run started
        finally:
            other.kill()
            other.wait()
    finally:
        holder.kill()  # like kill -9: no clean release
        holder.wait()
    # its lock is stale now: the next writer takes it over and says from whom
    assert main(["run", str(sort_yaml), "train.steps=4", "--out", str(run), "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"taking over the lock of pid {holder.pid} (since " in captured.err
    assert "which is no longer running" in captured.err
    assert "already finished" in captured.out


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path, warn=False):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()  # a second open file description: refused too
    assert (tmp_path / ".lock").read_text() == ""  # a clean release leaves no holder behind
    with RunLock(tmp_path):
        pass


def test_two_ablations_on_one_directory(write, sort_yaml, tmp_path, capsys):
    """The real race: an `ablate` process trains; a second `ablate` is refused at once."""
    abl = write("abl.yaml", f"base: {sort_yaml.name}\nbudget: {{steps: 3000}}\n"
                "overrides: {train.log_every: 100, train.eval_every: 0, train.threads: 1}\n")  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ponderkit", "ablate", str(abl), "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "base" / "seed0" / "metrics.jsonl").exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        before = (out / "base" / "seed0" / "metrics.jsonl").read_text()
        assert main(["ablate", str(abl), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out} is in use by pid {first.pid}")
        assert (out / "base" / "seed0" / "metrics.jsonl").read_text().startswith(before)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130  # and it checkpointed on the way out
    assert any(p.name.startswith("step_") for p in (out / "base/seed0/checkpoints").iterdir())


def test_workers_die_with_a_killed_parent(write, sort_yaml, tmp_path):
    """`kill -9` of `ablate --jobs 2` leaves no worker training: each checkpoints and exits."""
    abl = write("abl.yaml", f"base: {sort_yaml.name}\nseeds: [0, 1]\nbudget: {{steps: 100000}}\n"
                "overrides: {train.log_every: 1, train.eval_every: 0, train.threads: 1,"
                " train.checkpoint_every_s: 0}\n")  # fmt: skip
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ponderkit", "ablate", str(abl), "--out", str(out), "--jobs", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = [out / "base" / "seed0", out / "base" / "seed1"]
    deadline = time.time() + 180
    while not all((r / "metrics.jsonl").exists() for r in runs):
        assert time.time() < deadline and parent.poll() is None
        time.sleep(0.2)
    import json

    workers = [json.loads((r / ".lock").read_text())["pid"] for r in runs]
    assert parent.pid not in workers and all(alive(w) for w in workers)
    parent.kill()
    parent.wait()
    deadline = time.time() + 60
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "orphaned workers still training"
    for r in runs:  # each stopped at a step boundary and saved it
        assert any(p.name.startswith("step_") for p in (r / "checkpoints").iterdir())


def test_a_closed_pipe_is_no_error(monkeypatch):
    """`ponderkit list | head`: the reader goes away; no BrokenPipeError traceback."""

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["list"]) == 0

    proc = subprocess.Popen([sys.executable, "-m", "ponderkit", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # nobody reads: every write fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
