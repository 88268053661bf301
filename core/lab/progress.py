"""Progress of an ablation's running runs: every ``every_s`` seconds one line per run that has
logged something new since the last one, read from the tail of its ``metrics.jsonl`` (so the
same watcher serves runs trained in this process and runs in subprocesses)::

    [  121.3 s] progress baseline/seed1: 41% of 10 epochs (step 1,024, 4.1 epochs), loss 0.2875,
                538 samples/s, ~3.9 min left

The share done is the largest of the run's limits reached so far (steps, epochs, FLOPs, wall
time): the first limit reached ends the run. The time left extrapolates the training time so
far (evaluation included, start-up excluded) at that share.

Given the grid's size (``total`` runs, ``finished`` of them done before this invocation), each
round ends with a line for the whole grid::

    [  121.3 s] progress overall: 1 of 4 runs finished, 2 running; 48% of the grid, ~5.0 min left

The grid's share counts every finished run (failed ones too: no work is left in them) as 1 and
each running run at its share. The time left divides the work left by the rate of this
invocation: the work done since it started (a resumed run counts from where it resumed) over
the wall time since, so runs in parallel (``--jobs``) and start-up costs are in the rate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def last_record(metrics: Path, tail_bytes: int = 16384) -> dict[str, Any] | None:
    """The newest complete training record (one with a ``loss``) of a ``metrics.jsonl``, read
    from its last ``tail_bytes``; None when there is none yet. A line being written (no newline
    yet, or cut JSON) is skipped."""
    try:
        with metrics.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[1:] if size > tail_bytes else lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "loss" in record and "step" in record:
            return record
    return None


def share_done(record: dict[str, Any], train: Any, time_budget: float | None) -> tuple[float, str]:
    """(fraction, the limit it is a fraction of) for ``record`` of a run with ``train`` (its
    ``TrainConfig``): the largest share of any limit that applies."""
    shares: list[tuple[float, str]] = []
    if train.steps:
        shares.append((record["step"] / train.steps, f"{train.steps:,} steps"))
    if train.epochs and "epoch" in record:
        shares.append((record["epoch"] / train.epochs, f"{train.epochs} epochs"))
    if train.flops and "flops" in record:
        shares.append((record["flops"] / train.flops, f"{train.flops:.3g} FLOPs"))
    caps = [t for t in (time_budget, train.max_time_s) if t]
    if caps and "elapsed_s" in record:
        shares.append((record["elapsed_s"] / min(caps), f"{min(caps):g} s"))
    if not shares:
        return 0.0, "?"
    share, limit = max(shares)
    return min(share, 1.0), limit


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def progress_text(record: dict[str, Any], train: Any, time_budget: float | None = None) -> str:
    """``41% of 10 epochs (step 1,024, 4.1 epochs), loss 0.2875, 538 samples/s, ~3.9 min
    left`` for the newest ``record`` of a run."""
    share, limit = share_done(record, train, time_budget)
    where = [f"step {int(record['step']):,}"]
    if "epoch" in record and train.epochs:
        where.append(f"{record['epoch']:.1f} epochs")
    if "flops" in record and train.flops:
        where.append(f"{record['flops']:.3g} FLOPs")
    parts = [f"{share:.0%} of {limit} ({', '.join(where)})", f"loss {record['loss']:.4f}"]
    if "samples_per_s" in record:
        parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    elapsed = record.get("elapsed_s")
    if elapsed and 0.01 <= share < 1.0:
        parts.append(f"~{_duration(elapsed * (1 - share) / share)} left")
    return ", ".join(parts)


class ProgressWatcher:
    """A daemon thread that says each watched run's progress every ``every_s`` seconds (none
    when ``every_s`` is 0). Use as a context manager; ``watch`` a run when it starts and
    ``forget`` it when it ends."""

    def __init__(
        self,
        say: Callable[[str], None],
        every_s: float,
        total: int = 0,
        finished: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.say, self.every_s = say, every_s
        self._runs: dict[str, tuple[Path, Any, float | None]] = {}
        self._shown: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the grid: ``total`` runs (0: no overall line), ``finished`` before this invocation
        self.total, self.finished = total, finished
        self._clock, self._t0 = clock, clock()
        self._begun: dict[str, float] = {}  # a running run's share when it was watched
        self._done_work = 0.0  # work of runs finished in this invocation (1 - share begun)

    def __enter__(self) -> ProgressWatcher:
        if self.every_s > 0:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def watch(self, key: str, run_dir: Path, train: Any, time_budget: float | None) -> None:
        record = last_record(Path(run_dir) / "metrics.jsonl")  # a resumed run's start
        begun = share_done(record, train, time_budget)[0] if record else 0.0
        with self._lock:
            self._runs[key] = (Path(run_dir), train, time_budget)
            self._begun[key] = begun

    def forget(self, key: str) -> None:
        with self._lock:
            if self._runs.pop(key, None) is not None:
                self.finished += 1
                self._done_work += 1.0 - self._begun.get(key, 0.0)
            self._begun.pop(key, None)
            self._shown.pop(key, None)

    def overall_text(self, shares: dict[str, float]) -> str:
        """``1 of 4 runs finished, 2 running; 48% of the grid, ~5.0 min left`` given each
        running run's share now (see the module docstring)."""
        with self._lock:
            finished, begun, done_work = self.finished, dict(self._begun), self._done_work
        running = [k for k in shares if k in begun]
        done = finished + sum(shares[k] for k in running)
        work = done_work + sum(max(0.0, shares[k] - begun[k]) for k in running)
        text = f"{finished} of {self.total} runs finished, {len(running)} running; "
        text += f"{min(done / self.total, 1.0):.0%} of the grid"
        elapsed = self._clock() - self._t0
        if work > 0.01 and elapsed > 0:  # under 1% of a run done: no guess of time left
            text += f", ~{_duration((self.total - done) * elapsed / work)} left"
        return text

    def tick(self) -> None:
        """One round of lines: a line for each watched run with a new record."""
        with self._lock:
            runs = list(self._runs.items())
        shares: dict[str, float] = {}
        for key, (run_dir, train, time_budget) in runs:
            record = last_record(run_dir / "metrics.jsonl")
            shares[key] = share_done(record, train, time_budget)[0] if record else 0.0
            if record is None or record["step"] == self._shown.get(key):
                continue
            text = progress_text(record, train, time_budget)
            with self._lock:  # said under the lock: `forget` returns after it, never before
                if key not in self._runs:  # ended meanwhile: its "finished" line says it all
                    continue
                self._shown[key] = record["step"]
                self.say(f"progress {key}: {text}")
        if self.total and runs:
            self.say(f"progress overall: {self.overall_text(shares)}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception as exc:  # progress lines must never stop a grid
                self.say(f"progress: could not read the runs' metrics ({exc})")
