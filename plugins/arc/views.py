"""Which (example, view) pairs train and which evaluate, and laying them out as token batches.

Training sees every pair (demonstrations and tests) of the training-set tasks and, when
``eval_demos_in_training`` (TRM), the demonstration pairs of the evaluation-set tasks, each
under every view. A test pair of an evaluation task is never a training pair: its output is
what evaluation scores.
"""

from __future__ import annotations

import numpy as np
from ponderkit import IGNORE_LABEL

from .data import Puzzles
from .grids import apply_view, encode, invert_view


class Views:
    """Puzzles plus their view plan; view ``v`` is ``ranks[v]``-th view of task
    ``task[v]`` with puzzle identifier ``ids[v] = 1 + task * per_task + rank`` (0 is the
    blank identifier no training pair uses)."""

    def __init__(self, puzzles: Puzzles, plan: dict[str, np.ndarray], per_task: int):
        self.puzzles = puzzles
        self.task = plan["view_task"].astype(np.int64)
        self.dihedral = plan["view_dihedral"].astype(np.int64)
        self.perm = plan["view_perm"].astype(np.int64)
        self.inverse_perm = np.argsort(self.perm, axis=1)
        first = np.searchsorted(self.task, np.arange(len(puzzles.ids)))
        self.ranks = np.arange(len(self.task)) - first[self.task]
        self.ids = 1 + self.task * per_task + self.ranks

    def pairs(self, examples: np.ndarray, max_rank: int | None = None) -> np.ndarray:
        """(N, 2) (example, view) pairs: each example under each view of its task (views of
        rank below ``max_rank`` only, when given), grouped by task."""
        keep = self.ranks < max_rank if max_rank is not None else np.ones_like(self.ranks, bool)
        by_task: dict[int, list[int]] = {}
        for e in examples:
            by_task.setdefault(int(self.puzzles.ex_task[e]), []).append(int(e))
        out = []
        for t, exs in by_task.items():
            vs = np.flatnonzero((self.task == t) & keep)
            out.append(np.stack(np.meshgrid(exs, vs, indexing="ij"), -1).reshape(-1, 2))
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)

    def examples(self, eval_tasks: bool, test: bool) -> np.ndarray:
        p = self.puzzles
        return np.flatnonzero((p.is_eval[p.ex_task] == eval_tasks) & (p.ex_test == test))

    def training_pairs(self, eval_demos: bool) -> np.ndarray:
        parts = [self.examples(False, False), self.examples(False, True)]
        if eval_demos:
            parts.append(self.examples(True, False))
        return self.pairs(np.sort(np.concatenate(parts)))

    def layout(
        self, pairs: np.ndarray, canvas: int, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """Token arrays for ``pairs``: ``inputs``, ``labels`` (B, C*C) with pad ignored,
        ``puzzle_ids`` (B,); with ``rng`` each pair is shifted by a random offset (the same
        for its input and output, within the canvas), else placed at (0, 0)."""
        p = self.puzzles
        b = len(pairs)
        inputs = np.zeros((b, canvas, canvas), dtype=np.int64)
        labels = np.zeros((b, canvas, canvas), dtype=np.int64)
        for i, (e, v) in enumerate(pairs):
            d, perm = self.dihedral[v], self.perm[v]
            x = apply_view(p.grid(p.ex_in[e]), d, perm)
            y = apply_view(p.grid(p.ex_out[e]), d, perm)
            offset = (0, 0)
            if rng is not None:
                offset = (
                    int(rng.integers(canvas - max(x.shape[0], y.shape[0]) + 1)),
                    int(rng.integers(canvas - max(x.shape[1], y.shape[1]) + 1)),
                )
            encode(x, canvas, offset, out=inputs[i])
            encode(y, canvas, offset, out=labels[i])
        labels[labels == 0] = IGNORE_LABEL
        return {
            "inputs": inputs.reshape(b, -1),
            "labels": labels.reshape(b, -1),
            "puzzle_ids": self.ids[pairs[:, 1]] if b else np.zeros(0, dtype=np.int64),
        }

    def back(self, grid: np.ndarray, view: int) -> np.ndarray:
        """A grid predicted in ``view`` mapped back to the original puzzle."""
        return invert_view(grid, int(self.dihedral[view]), self.perm[view])
