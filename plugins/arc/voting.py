"""Voting across augmented views, pass@k under the official rule, and Kaggle submissions.

Each view of a puzzle yields, for each test input, one predicted grid (already mapped back to
the original orientation and colours) and a confidence: the halting head's sigmoid(q_halt) at
the last step (1.0 when the halting policy has no q_halt). Identical grids pool their votes:

- ``count``: candidates ranked by how many views predicted them; ties broken by their mean
  confidence, then by which was predicted first (view order). This is TRM's/HRM's rule.
- ``confidence``: ranked by the sum of their views' confidences (a vote weighted by how sure
  the halting head was); ties broken by count, then by order.

A task counts for pass@k only when every one of its test outputs is among the top k
candidates for its test input (the ARC Prize rule for a task; Kaggle gives partial credit per
test output, reported separately as ``outputs_pass@k``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

Vote = Literal["count", "confidence"]
Grid = np.ndarray


def rank(predictions: Iterable[tuple[Grid, float]], vote: Vote = "count") -> list[Grid]:
    """Distinct predicted grids, best first. Empty (0-cell) grids are not candidates."""
    pooled: dict[bytes, list] = {}  # key -> [grid, count, confidence sum, first index]
    for i, (grid, conf) in enumerate(predictions):
        if grid.size == 0:
            continue
        key = grid.tobytes() + np.asarray(grid.shape, dtype=np.int32).tobytes()
        entry = pooled.get(key)
        if entry is None:
            pooled[key] = [grid, 1, float(conf), i]
        else:
            entry[1] += 1
            entry[2] += float(conf)
    if vote == "count":
        order = sorted(pooled.values(), key=lambda e: (-e[1], -e[2] / e[1], e[3]))
    elif vote == "confidence":
        order = sorted(pooled.values(), key=lambda e: (-e[2], -e[1], e[3]))
    else:
        raise ValueError(f"unknown vote {vote!r} (count or confidence)")
    return [e[0] for e in order]


def same_grid(a: Grid, b: Grid) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def pass_at_k(
    ranked: Mapping[str, Sequence[Sequence[Grid]]],
    truth: Mapping[str, Sequence[Grid]],
    k: int,
) -> dict[str, bool]:
    """Per task: is every test output among the first ``k`` candidates of its test input?
    ``ranked[task][j]`` lists the candidates for test input ``j``, best first."""
    return {
        task: all(
            any(same_grid(c, out) for c in cands[:k])
            for cands, out in zip(ranked[task], outs, strict=True)
        )
        for task, outs in truth.items()
    }


def scores(
    ranked: Mapping[str, Sequence[Sequence[Grid]]], truth: Mapping[str, Sequence[Grid]]
) -> dict[str, float]:
    """pass@1 and pass@2 per task (official rule) and per test output, as fractions."""
    out: dict[str, float] = {"tasks": float(len(truth))}
    for k in (1, 2):
        per_task = pass_at_k(ranked, truth, k)
        out[f"pass@{k}"] = sum(per_task.values()) / max(len(per_task), 1)
        hits = [
            any(same_grid(c, o) for c in cands[:k])
            for task, outs in truth.items()
            for cands, o in zip(ranked[task], outs, strict=True)
        ]
        out[f"outputs_pass@{k}"] = sum(hits) / max(len(hits), 1)
    return out


# -- Kaggle submission ---------------------------------------------------------------------
SUBMISSION_SCHEMA = """\
{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}: one entry per task of the set; per
task one object per test input, in the task's order, with exactly the keys attempt_1 and
attempt_2; a grid is a non-empty list of equal-length non-empty lists of ints 0..9, at most
30 x 30. attempt_2 repeats attempt_1 when only one grid was predicted; [[0]] stands in when
no view gave a readable grid."""


def submission(ranked: Mapping[str, Sequence[Sequence[Grid]]]) -> dict:
    """The Kaggle ``submission.json`` object for ranked candidates (see SUBMISSION_SCHEMA)."""
    out = {}
    for task, per_test in ranked.items():
        entries = []
        for cands in per_test:
            first = cands[0].tolist() if len(cands) > 0 else [[0]]
            second = cands[1].tolist() if len(cands) > 1 else first
            entries.append({"attempt_1": first, "attempt_2": second})
        out[task] = entries
    return out


def validate_submission(obj: object, tests_per_task: Mapping[str, int]) -> list[str]:
    """Every way ``obj`` departs from SUBMISSION_SCHEMA for the given tasks (empty if valid)."""
    if not isinstance(obj, dict):
        return [f"top level: expected an object of task ids, got {type(obj).__name__}"]
    errors = []
    missing = sorted(set(tests_per_task) - set(obj))
    extra = sorted(set(obj) - set(tests_per_task))
    if missing:
        errors.append(f"missing tasks: {', '.join(missing[:5])} ({len(missing)} in all)")
    if extra:
        errors.append(f"unknown tasks: {', '.join(map(str, extra[:5]))} ({len(extra)} in all)")
    for task, n in tests_per_task.items():
        entries = obj.get(task)
        if entries is None:
            continue
        if not isinstance(entries, list) or len(entries) != n:
            errors.append(f"{task}: expected a list of {n} test entries")
            continue
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) != {"attempt_1", "attempt_2"}:
                errors.append(f"{task}[{j}]: expected exactly the keys attempt_1, attempt_2")
                continue
            for name in ("attempt_1", "attempt_2"):
                problem = _grid_problem(entry[name])
                if problem:
                    errors.append(f"{task}[{j}].{name}: {problem}")
    return errors


def _grid_problem(grid: object) -> str | None:
    if not isinstance(grid, list) or not grid or len(grid) > 30:
        return "expected 1..30 rows"
    width = len(grid[0]) if isinstance(grid[0], list) else -1
    if not 1 <= width <= 30:
        return "expected 1..30 columns"
    for row in grid:
        if not isinstance(row, list) or len(row) != width:
            return "rows of unequal length"
        if not all(type(v) is int and 0 <= v <= 9 for v in row):
            return "cells must be ints 0..9"
    return None
