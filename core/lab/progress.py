"""Progress of an ablation's running runs: every ``every_s`` seconds one line per run that has
logged something new since the last one, read from the tail of its ``metrics.jsonl`` (so the
same watcher serves runs trained in this process and runs in subprocesses)::

    [  121.3 s] progress baseline/seed1: 41% of 10 epochs (step 1,024, 4.1 epochs), loss 0.2875,
                538 samples/s, ~3.9 min left

The share done is the largest of the run's limits reached so far (steps, epochs, FLOPs, wall
time): the first limit reached ends the run. The time left extrapolates the training time so
far (evaluation included, start-up excluded) at that share.
"""

from __future__ import annotations

import json
import threading
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

    def __init__(self, say: Callable[[str], None], every_s: float):
        self.say, self.every_s = say, every_s
        self._runs: dict[str, tuple[Path, Any, float | None]] = {}
        self._shown: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        with self._lock:
            self._runs[key] = (Path(run_dir), train, time_budget)

    def forget(self, key: str) -> None:
        with self._lock:
            self._runs.pop(key, None)
            self._shown.pop(key, None)

    def tick(self) -> None:
        """One round of lines: a line for each watched run with a new record."""
        with self._lock:
            runs = list(self._runs.items())
        for key, (run_dir, train, time_budget) in runs:
            record = last_record(run_dir / "metrics.jsonl")
            if record is None or record["step"] == self._shown.get(key):
                continue
            text = progress_text(record, train, time_budget)
            with self._lock:  # said under the lock: `forget` returns after it, never before
                if key not in self._runs:  # ended meanwhile: its "finished" line says it all
                    continue
                self._shown[key] = record["step"]
                self.say(f"progress {key}: {text}")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception as exc:  # progress lines must never stop a grid
                self.say(f"progress: could not read the runs' metrics ({exc})")
