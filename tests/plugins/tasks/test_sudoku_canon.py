"""Leak check: every augmentation of a training puzzle planted in an eval set is caught."""

from __future__ import annotations

import numpy as np
import pytest
from ponderkit.plugins.tasks import sudoku_canon, sudoku_gen


def _transforms(grid: np.ndarray, size: int, bh: int, bw: int, rng) -> dict[str, np.ndarray]:
    """Each augmentation on its own, written with plain numpy (not the module's augment)."""
    m = grid.reshape(size, size)
    digits = np.concatenate([[0], rng.permutation(size) + 1])
    bands = rng.permutation(size // bh)
    band_rows = np.concatenate([np.arange(b * bh, b * bh + bh) for b in bands])
    within = np.concatenate([b * bh + rng.permutation(bh) for b in range(size // bh)])
    stacks = rng.permutation(size // bw)
    stack_cols = np.concatenate([np.arange(s * bw, s * bw + bw) for s in stacks])
    out = {
        "digits": digits[m],
        "bands": m[band_rows],
        "rows in band": m[within],
        "stacks": m[:, stack_cols],
    }
    if bh == bw:
        out["transpose"] = m.T
    return {k: v.reshape(-1) for k, v in out.items()}


@pytest.mark.parametrize(("size", "bh", "bw"), [(9, 3, 3), (6, 2, 3)])
def test_planted_augmentations_are_caught(size, bh, bw):
    train, _, _ = sudoku_gen.generate(12, size, "medium", seed=1, workers=1)
    evaluation, _, _ = sudoku_gen.generate(12, size, "medium", seed=2, workers=1)
    assert sudoku_canon.leaks(train, evaluation, size) == []
    rng = np.random.default_rng(0)
    planted = evaluation.copy()
    where = {}
    names = list(_transforms(train[0], size, bh, bw, rng))
    for k, name in enumerate(names):  # a different training puzzle for each transform
        planted[2 * k + 1] = _transforms(train[k], size, bh, bw, rng)[name]
        where[2 * k + 1] = name
    both = sudoku_gen.augment(train[7], train[7], size, rng)[0]  # all at once
    planted[11] = both
    where[11] = "augment"
    assert sudoku_canon.leaks(train, planted, size) == sorted(where)


def test_different_puzzles_differ():
    p, _, _ = sudoku_gen.generate(30, 9, "medium", seed=3, workers=1)
    prints = sudoku_canon.fingerprints(p, 9)
    assert len(set(prints)) == 30
    fewer = p[0].copy()
    fewer[np.flatnonzero(fewer)[0]] = 0  # one clue less: not an augmentation
    assert sudoku_canon.fingerprint(fewer, 9) != prints[0]
    swapped = p[0].reshape(9, 9)[[1, 0, 2, 3, 4, 5, 6, 7, 8]]  # rows swapped within a band
    assert sudoku_canon.fingerprint(swapped, 9) == prints[0]


def test_generated_sets_are_canonically_distinct():
    p, _, _ = sudoku_gen.generate(20, 6, "medium", seed=0, workers=1)
    assert len(set(sudoku_canon.fingerprints(p, 6))) == 20
