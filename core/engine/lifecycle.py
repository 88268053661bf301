"""A run's life after it started: resume it by its folder, extend a finished run's budget.

``ponderkit run --resume RUN_DIR`` reads the run's resolved ``config.yaml`` (the command-line
overrides it was started with are already in it), so the folder is all a resume needs.
``--extend train.steps=2000`` (or ``train.epochs``, ``train.flops``, ``train.max_time_s``)
raises the budget the run was trained under; the run continues from its newest checkpoint
(``final`` for a finished run) with the same optimizer state, and its ``config.yaml`` records
the new budget. Each extension is appended to ``extensions.json`` (before, after, the step).

The learning-rate schedule is a function of the step and the budget (``lr_factor`` in
:mod:`~ponderkit.engine.train`), not a stored state: once extended, the run follows the
schedule of the new budget from the step it is at. Warmup and ``constant`` decay are
unchanged; under ``cosine`` decay the rate at step k becomes the new cosine's, so a run that
had decayed to ``min_lr_ratio`` at its old end jumps back up to the new curve's value at
``old end / new end`` of the way and decays again to ``min_lr_ratio`` at the new end (from
1000 to 2000 steps without warmup: from 0.1 x lr to 0.55 x lr at step 1000). It is not the
run that a 2000-step budget would have trained from the start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract.errors import InputError

#: the budget fields ``--extend`` raises
EXTENDABLE = ("train.steps", "train.epochs", "train.flops", "train.max_time_s")
EXTENSIONS = "extensions.json"


def resume_dir(run_dir: Path) -> Path:
    """``run_dir``'s ``config.yaml``, the file a resume by folder loads; refused (one line)
    when ``run_dir`` is no run directory."""
    if not run_dir.is_dir():
        raise InputError(f"--resume {run_dir}: no such run directory")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise InputError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    return config


def check_extension(saved: Any, extends: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for ``--extend KEY=VALUE`` options against the run's ``saved``
    config (an ExperimentConfig); each must raise a budget limit the run already has."""
    from ..contract.yamlio import parse_value

    changes: dict[str, tuple[Any, Any]] = {}
    for text in extends:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or key not in EXTENDABLE:
            raise InputError(
                f"--extend {text!r}: expected KEY=VALUE with KEY one of {', '.join(EXTENDABLE)}"
            )
        try:
            new = parse_value(raw)
        except InputError:
            new = raw
        if isinstance(new, str):  # 1e6 is text to PyYAML; a number here
            try:
                new = float(new)
            except ValueError:
                pass
        old = getattr(saved.train, key.split(".")[1])
        if isinstance(new, bool) or not isinstance(new, int | float):
            raise InputError(f"--extend {text!r}: expected a number, got {raw!r}")
        if old is None:
            kind = [k for k in ("steps", "epochs", "flops") if getattr(saved.train, k)]
            what = f"it is measured in {kind[0]}" if kind else "it has no such limit"
            raise InputError(f"--extend {key}: the run has no {key} to raise ({what})")
        if not new > old:
            raise InputError(f"--extend {key}={raw}: must be more than the run's {old}")
        if key in ("train.steps", "train.epochs") and new != int(new):
            raise InputError(f"--extend {key}={raw}: expected a whole number")
        changes[key] = (old, int(new) if isinstance(old, int) else float(new))
    return changes


def override_texts(changes: dict[str, tuple[Any, Any]]) -> list[str]:
    """The changes as ``key=value`` overrides of the run's ``config.yaml``."""
    return [f"{k}={json.dumps(new)}" for k, (_, new) in changes.items()]


def record_extension(run_dir: Path, config: Any, changes: dict[str, tuple[Any, Any]]) -> None:
    """Write the extended ``config`` as the run's ``config.yaml`` and append the change to
    ``extensions.json``; the caller holds the run's lock."""
    from ..contract.config import unstructure
    from ..contract.yamlio import dump
    from .runs import write_json_atomic, write_text_atomic

    path = run_dir / EXTENSIONS
    history = json.loads(path.read_text("utf-8")) if path.is_file() else []
    history.append(
        {
            "at_step": last_step(run_dir),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **{k: {"from": old, "to": new} for k, (old, new) in changes.items()},
        }
    )
    write_text_atomic(run_dir / "config.yaml", dump(unstructure(config)))
    write_json_atomic(path, history)


def last_step(run_dir: Path) -> int | None:
    """The step of the newest record in the run's ``metrics.jsonl`` (None: none yet)."""
    step = None
    try:
        lines = (run_dir / "metrics.jsonl").read_text("utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def resolve_run(
    file: Path | None,
    overrides: Sequence[str],
    resume: bool | str,
    out: Path | None,
    extends: Sequence[str],
    registry: Any,
) -> tuple[Path, list[str], Path | None, dict[str, tuple[Any, Any]]]:
    """What ``ponderkit run`` trains: ``(experiment file, overrides, run directory, budget
    changes)``. ``resume`` is a run directory (``--resume RUN_DIR``: its ``config.yaml``, no
    file or overrides of its own), True (``--resume`` with ``FILE --out DIR``) or False."""
    from ..contract.experiment import load_experiment

    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        # `run FILE --out DIR --resume key=value`: an override argparse gave --resume
        overrides, resume = [resume, *overrides], True
    if isinstance(resume, str) and Path(resume).is_file():  # `run --resume FILE --out DIR`
        given = ([str(file)] if file is not None else []) + list(overrides)
        return Path(resume), given, out, _no_extension(extends)
    if isinstance(resume, str):
        run_dir = Path(resume)
        given = ([str(file)] if file is not None else []) + list(overrides)
        if given:
            raise InputError(
                f"--resume {run_dir} reads the run's own config.yaml; drop {' '.join(given)!r} "
                "(--extend KEY=VALUE raises its budget)"
            )
        if out is not None and Path(out) != run_dir:
            raise InputError(f"--resume {run_dir} continues that folder; drop --out {out}")
        config = resume_dir(run_dir)
        changes = check_extension(load_experiment(config, registry=registry).config, extends)
        return config, override_texts(changes), run_dir, changes
    if file is None:
        raise InputError("run needs an experiment FILE (or --resume RUN_DIR)")
    if extends:
        raise InputError("--extend raises a run's budget: use it with --resume RUN_DIR")
    return file, list(overrides), out, {}


def _no_extension(extends: Sequence[str]) -> dict:
    if extends:
        raise InputError("--extend raises a run's budget: use it with --resume RUN_DIR")
    return {}
