"""Continuing a run from what its directory holds, whatever got damaged.

A resume takes the newest checkpoint that loads whole; a damaged one (a truncated
``trainer.pt``, say, after a full disk) is named in a warning and an older one is used. With
none intact the run starts again from step 0. Old ``step_*`` checkpoints are pruned to the
newest few; ``final`` is never pruned.

A kill inside a checkpoint write leaves a temporary ``.<name>.*`` folder: a resume removes it
(or, where the kill fell between the two renames of a rewrite, puts ``.<name>.old`` back). A
run whose budget is spent but whose ``final`` is missing or damaged gets it written from the
newest intact checkpoint (:func:`~ponderkit.engine.train.resume_or_start`).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .runs import CheckpointDamaged, check_run_layout

Warn = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """``final`` (always written last) then ``step_*`` by descending step; no temp folders."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name == "final":
            found.append((float("inf"), path))
        elif path.name.startswith("step_") and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return [p for _, p in sorted(found, key=lambda t: t[0], reverse=True)]


def resume(trainer: Any, run_dir: Path, warn: Warn = _stderr) -> Path | None:
    """Restore ``trainer`` from the newest intact checkpoint of ``run_dir``; returns it, or
    None when there is none (then the metrics log restarts empty)."""
    check_run_layout(run_dir)
    clean_temporaries(run_dir, warn)
    candidates = checkpoints_newest_first(run_dir)
    for i, path in enumerate(candidates):
        try:
            trainer.restore(path)
        except CheckpointDamaged as exc:
            older = candidates[i + 1].name if i + 1 < len(candidates) else None
            then = f"falling back to {older}" if older else "no older checkpoint; starting over"
            warn(f"warning: {exc}; {then}")
            continue
        _set_aside(candidates[:i], warn)
        return path
    _set_aside(candidates, warn)
    if trainer.metrics_log is not None:  # nothing to continue from: start the log afresh
        trainer.metrics_log.truncate_after(0, warn)
    return None


def clean_temporaries(run_dir: Path, warn: Warn = _stderr) -> list[str]:
    """Remove the temporary folders that killed checkpoint writes left in ``checkpoints/``
    (a whole checkpoint each); a ``.<name>.old`` whose ``<name>`` is missing is the last
    intact copy of it (killed between the two renames) and is put back. Returns what it did."""
    from .runlock import is_temporary

    done = []
    for path in Path(run_dir).iterdir():  # config.yaml, meta.json ... written atomically
        if is_temporary(path):
            path.unlink(missing_ok=True)
            done.append(f"removed {path.name}")
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return done
    for path in sorted(folder.iterdir()):
        name = path.name
        if not name.startswith(".") or name.startswith(".damaged-"):
            continue
        if name.endswith(".old") and not (folder / name[1:-4]).exists():
            path.rename(folder / name[1:-4])
            done.append(f"restored {name[1:-4]} from {name}")
        else:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            done.append(f"removed {name}")
    if done:
        warn(f"warning: {run_dir}: a write was cut short; " + ", ".join(done))
    return done


def _set_aside(damaged: list[Path], warn: Warn) -> None:
    """Rename damaged checkpoints to ``.damaged-<name>``: kept for a post-mortem, but no longer
    tried on every resume nor counted among the checkpoints that pruning keeps."""
    for path in damaged:
        target = path.with_name(f".damaged-{path.name}")
        shutil.rmtree(target, ignore_errors=True)
        path.rename(target)
        warn(f"warning: {path} set aside as {target.name}")


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``step_*`` checkpoints (0 keeps all)."""
    if keep <= 0:
        return []
    steps = [p for p in checkpoints_newest_first(run_dir) if p.name != "final"]
    doomed = steps[keep:]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after checkpointing; exit status 128 + ``signum``."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the training loop to stop at the next step boundary
    (it checkpoints, then raises :class:`Interrupted`) instead of killing it mid-step.

    A second Ctrl-C stops at once. SIGTERM never escalates: an ``ablate --jobs`` parent sends
    it to workers that may already have Ctrl-C from the terminal, and a worker whose parent
    died gets it from the kernel (``PR_SET_PDEATHSIG``). Signals can only be caught in the main
    thread; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __enter__(self) -> StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()
