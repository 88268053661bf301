"""Sudoku generator: uniqueness against an independent solver, tiers, augmentation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ponderkit.plugins.tasks import sudoku_gen

# --- an independent reference solver (shares no code with the module under test) ---

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # box rows x box columns, as printed puzzles


def _brute(puzzle, size: int, limit: int = 2) -> list[list[int]]:
    """Plain recursive backtracking on the emptiest-choice cell; up to ``limit`` solutions."""
    bh, bw = BOXES[size]
    g = [int(v) for v in np.asarray(puzzle).reshape(-1)]
    found: list[list[int]] = []

    def options(i: int) -> set[int]:
        r, c = divmod(i, size)
        br, bc = r - r % bh, c - c % bw
        used = {g[r * size + k] for k in range(size)} | {g[k * size + c] for k in range(size)}
        used |= {g[(br + a) * size + bc + b] for a in range(bh) for b in range(bw)}
        return set(range(1, size + 1)) - used

    def rec() -> None:
        best, best_opts = -1, None
        for i, v in enumerate(g):
            if v == 0:
                opts = options(i)
                if best_opts is None or len(opts) < len(best_opts):
                    best, best_opts = i, opts
                    if len(opts) <= 1:
                        break
        if best < 0:
            found.append(list(g))
            return
        for v in sorted(best_opts):
            g[best] = v
            rec()
            g[best] = 0
            if len(found) >= limit:
                return

    for i, v in enumerate(g):  # clues must not clash
        if v:
            g[i] = 0
            if v not in options(i):
                return []
            g[i] = v
    rec()
    return found


def _grid_ok(grid, size: int) -> bool:
    bh, bw = BOXES[size]
    m = np.asarray(grid).reshape(size, size)
    want = set(range(1, size + 1))
    rows = all(set(m[r].tolist()) == want for r in range(size))
    cols = all(set(m[:, c].tolist()) == want for c in range(size))
    boxes = all(
        set(m[r : r + bh, c : c + bw].reshape(-1).tolist()) == want
        for r in range(0, size, bh)
        for c in range(0, size, bw)
    )
    return rows and cols and boxes


def _check_unique(puzzles, solutions, size: int) -> None:
    for p, s in zip(puzzles, solutions, strict=True):
        ref = _brute(p, size)
        assert len(ref) == 1, "puzzle must have exactly one solution"
        assert ref[0] == s.tolist()
        assert _grid_ok(s, size)
        assert sudoku_gen.is_valid_solution(s, size)
        assert sudoku_gen.consistent(p, s)


# --- fixtures ---


@pytest.fixture(scope="module")
def hard9():
    return sudoku_gen.generate(3, 9, "hard", seed=11, workers=1)


@pytest.fixture(scope="module")
def medium9():
    return sudoku_gen.generate(6, 9, "medium", seed=5, workers=1)


# --- solver ---


def test_solver_basic_cases():
    empty4 = np.zeros(16, dtype=np.int8)
    assert sudoku_gen.solve(empty4, 4).n_solutions == 2
    clash = np.zeros(81, dtype=np.int8)
    clash[0] = clash[1] = 5
    assert sudoku_gen.solve(clash, 9).n_solutions == 0
    assert sudoku_gen.solve(clash, 9).solution is None
    # Arto Inkala's "world's hardest" puzzle: unique, and the search must guess a lot.
    text = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
    p = np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int8)
    res = sudoku_gen.solve(p, 9)
    assert res.n_solutions == 1 and res.solution.tolist() == _brute(p, 9)[0]
    assert res.guesses >= sudoku_gen.HARD_MIN_GUESSES[9]
    assert not sudoku_gen.propagation_solves(p, 9)


def test_random_solution_valid():
    rng = np.random.default_rng(0)
    for size in (4, 6, 9):
        grids = {sudoku_gen.random_solution(size, rng).tobytes() for _ in range(10)}
        assert len(grids) > 5
        assert all(_grid_ok(np.frombuffer(g, dtype=np.int8), size) for g in grids)


def test_is_valid_solution_rejects_broken_grid():
    grid = sudoku_gen.random_solution(9, np.random.default_rng(1))
    assert sudoku_gen.is_valid_solution(grid, 9)
    bad = grid.copy()
    bad[[0, 1]] = bad[[1, 0]]
    assert not sudoku_gen.is_valid_solution(bad, 9)
    assert not sudoku_gen.is_valid_solution(np.where(grid == 9, 0, grid), 9)
    assert not sudoku_gen.consistent(np.where(np.arange(81) == 0, grid % 9 + 1, 0), grid)


# --- tiers ---


@pytest.mark.parametrize(
    ("size", "difficulty", "n"),
    [(4, "easy", 20), (4, "hard", 20), (6, "medium", 10), (6, "hard", 4), (9, "easy", 5)],
)
def test_generated_puzzles_unique(size, difficulty, n):
    p, s, g = sudoku_gen.generate(n, size, difficulty, seed=2, workers=1)
    assert p.shape == s.shape == (n, size * size) and p.dtype == s.dtype == np.int8
    assert g.shape == (n,)
    _check_unique(p, s, size)
    assert len({row.tobytes() for row in p}) == n


def test_easy_is_propagation_only():
    p, _, g = sudoku_gen.generate(5, 9, "easy", seed=4, workers=1)
    assert np.all(g == 0)
    assert np.all((p != 0).sum(axis=1) == sudoku_gen.EASY_CLUES[9])
    assert all(sudoku_gen.propagation_solves(x, 9) for x in p)


def test_medium_minimal_and_below_threshold(medium9):
    p, s, g = medium9
    _check_unique(p, s, 9)
    assert np.all(g < sudoku_gen.HARD_MIN_GUESSES[9])
    x = p[0].copy()  # minimal: every clue is needed
    for i in np.flatnonzero(x):
        v, x[i] = x[i], 0
        assert len(_brute(x, 9)) == 2
        x[i] = v


def test_hard_tier(hard9):
    p, s, g = hard9
    _check_unique(p, s, 9)
    assert np.all((p != 0).sum(axis=1) <= 30)
    assert np.all(g >= sudoku_gen.HARD_MIN_GUESSES[9])
    for x, gi in zip(p, g, strict=True):
        assert not sudoku_gen.propagation_solves(x, 9)
        assert sudoku_gen.solve(x, 9).guesses == gi


# --- augmentation ---


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 5))
def test_augment_preserves_validity(medium9, seed, which):
    p, s = medium9[0][which], medium9[1][which]
    rng = np.random.default_rng(seed)
    ap, a_s = sudoku_gen.augment(p, s, 9, np.random.default_rng(seed))
    assert ap.shape == p.shape and ap.dtype == p.dtype
    assert sudoku_gen.is_valid_solution(a_s, 9) and sudoku_gen.consistent(ap, a_s)
    assert (ap == 0).sum() == (p == 0).sum()
    assert _brute(ap, 9) == [a_s.tolist()]
    # the same transform on both arguments: feeding the same grid twice gives equal outputs
    q1, q2 = sudoku_gen.augment(p, p, 9, rng)
    assert np.array_equal(q1, q2)


def test_augment_blanks_and_batch(medium9):
    p, s, _ = medium9
    rng = np.random.default_rng(0)
    reps_p, reps_s = np.repeat(p[:1], 32, axis=0), np.repeat(s[:1], 32, axis=0)
    ap, a_s = sudoku_gen.augment(reps_p, reps_s, 9, rng)
    assert ap.shape == (32, 81)
    assert len({row.tobytes() for row in ap}) > 20  # independent transforms per row
    for x, y in zip(ap, a_s, strict=True):
        assert sudoku_gen.is_valid_solution(y, 9) and sudoku_gen.consistent(x, y)
    # blanks map to blanks: a 0/1 blank indicator transformed alongside keeps its zeros aligned
    marks = np.where(p == 0, 0, 1).astype(np.int8)
    tp, tm = sudoku_gen.augment(p, marks, 9, rng)
    assert np.array_equal(tp == 0, tm == 0)


# --- determinism ---


def test_determinism_and_workers():
    a = sudoku_gen.generate(8, 4, "medium", seed=9, workers=1)
    b = sudoku_gen.generate(8, 4, "medium", seed=9, workers=1)
    c = sudoku_gen.generate(8, 4, "medium", seed=9, workers=2)
    d = sudoku_gen.generate(8, 4, "medium", seed=10, workers=1)
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    assert not np.array_equal(a[0], d[0])


def test_hard_determinism_across_workers(hard9):
    again = sudoku_gen.generate(3, 9, "hard", seed=11, workers=2)
    for x, y in zip(hard9, again, strict=True):
        assert np.array_equal(x, y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="prime"):
        sudoku_gen.generate(1, 7, "easy", seed=0)
    with pytest.raises(ValueError, match="difficulty"):
        sudoku_gen.generate(1, 9, "ultra", seed=0)
    with pytest.raises(ValueError, match="9x9 only"):
        sudoku_gen.generate(1, 4, "extreme", seed=0)
    p, s, g = sudoku_gen.generate(0, 9, "easy", seed=0)
    assert p.shape == (0, 81) and g.shape == (0,)


def test_augment_6x6_keeps_2x3_boxes():
    p, s, _ = sudoku_gen.generate(4, 6, "medium", seed=3, workers=1)
    ap, a_s = sudoku_gen.augment(p, s, 6, np.random.default_rng(0))
    for x, y in zip(ap, a_s, strict=True):
        assert _grid_ok(y, 6) and _brute(x, 6) == [y.tolist()]
