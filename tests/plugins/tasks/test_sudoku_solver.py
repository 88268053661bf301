"""Fixed-point propagation against a brute-force singles finder; the extreme tier's effort."""

from __future__ import annotations

import numpy as np
import pytest
from ponderkit.plugins.tasks import sudoku_gen, sudoku_solver

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}


def _units(size: int) -> list[list[int]]:
    bh, bw = BOXES[size]
    rows = [[r * size + c for c in range(size)] for r in range(size)]
    cols = [[r * size + c for r in range(size)] for c in range(size)]
    boxes = [
        [(r + a) * size + c + b for a in range(bh) for b in range(bw)]
        for r in range(0, size, bh)
        for c in range(0, size, bw)
    ]
    return rows + cols + boxes


def _options(grid: list[int], size: int) -> list[set[int]]:
    """Candidates from placed digits alone: digits absent from the cell's row, column, box."""
    units = _units(size)
    out = []
    for i, v in enumerate(grid):
        if v:
            out.append({v})
            continue
        seen = {grid[j] for u in units if i in u for j in u}
        out.append(set(range(1, size + 1)) - seen)
    return out


def _single_left(grid: list[int], size: int) -> str | None:
    """A single a brute-force scan would still place, or None."""
    opts = _options(grid, size)
    for i, v in enumerate(grid):
        if not v and len(opts[i]) == 1:
            return f"naked single at cell {i}"
    for u in _units(size):
        for d in range(1, size + 1):
            if any(grid[j] == d for j in u):
                continue
            places = [j for j in u if not grid[j] and d in opts[j]]
            if len(places) == 1:
                return f"hidden single {d} at cell {places[0]}"
    return None


def _propagated(puzzle: np.ndarray, size: int) -> list[int] | None:
    g = sudoku_solver.geometry(size)
    cand = sudoku_solver.candidates(g, puzzle.tolist())
    solved = sudoku_solver.propagate(g, cand, 0)
    if solved < 0:
        return None
    grid = [0] * size * size
    for i in range(size * size):
        if solved >> i & 1:
            grid[i] = 1 + next(d for d in range(size) if cand[d] >> i & 1)
    return grid


def _clash(grid: list[int], size: int) -> bool:
    return any(
        len([grid[j] for j in u if grid[j]]) != len({grid[j] for j in u if grid[j]})
        for u in _units(size)
    )


def _has_solution(grid: list[int], size: int) -> bool:
    if _clash(grid, size):
        return False
    opts = _options(grid, size)
    free = [i for i, v in enumerate(grid) if not v]
    if not free:
        return True
    i = min(free, key=lambda k: len(opts[k]))
    for d in opts[i]:
        grid[i] = d
        if _has_solution(grid, size):
            grid[i] = 0
            return True
    grid[i] = 0
    return False


@pytest.mark.parametrize("size", [4, 6, 9])
def test_propagation_reaches_a_fixed_point(size):
    rng = np.random.default_rng(size)
    for _ in range(40):
        solution = sudoku_solver.random_solution(size, rng)
        keep = rng.random(size * size) < rng.uniform(0.2, 0.45)
        puzzle = np.where(keep, solution, 0).astype(np.int8)
        grid = _propagated(puzzle, size)
        assert grid is not None, "a puzzle cut from a solution is never contradictory"
        assert _single_left(grid, size) is None, _single_left(grid, size)
        # every placement is forced: it agrees with the solution the clues came from when
        # that is the only one, and always with some solution
        assert _has_solution(list(grid), size)
        if sudoku_solver.solve(puzzle, size).n_solutions == 1:
            assert all(v == 0 or v == s for v, s in zip(grid, solution.tolist(), strict=True))


def test_propagation_detects_contradictions():
    rng = np.random.default_rng(7)
    flagged = 0
    for _ in range(60):
        solution = sudoku_solver.random_solution(9, rng)
        # many clues, so that the brute-force proof of "no solution" stays short
        puzzle = np.where(rng.random(81) < 0.6, solution, 0).astype(np.int8)
        i = int(rng.integers(81))
        puzzle[i] = 1 + (solution[i] % 9)  # one wrong clue (it may still clash with nothing)
        grid = _propagated(puzzle, 9)
        if grid is None:
            flagged += 1
            assert not _has_solution(puzzle.tolist(), 9)
        else:
            assert _single_left(grid, 9) is None
    assert flagged > 0


def test_hidden_single_after_elimination():
    """The old propagator stopped after a hidden single without rescanning earlier units."""
    rng = np.random.default_rng(11)
    for _ in range(150):  # the old one left a single in about 1 of 40 such grids
        solution = sudoku_solver.random_solution(9, rng)
        puzzle = np.where(rng.random(81) < rng.uniform(0.2, 0.45), solution, 0).astype(np.int8)
        grid = _propagated(puzzle, 9)
        assert grid is not None and _single_left(grid, 9) is None


def test_extreme_tier_effort():
    """One generated extreme puzzle: unique, minimal, <= 23 clues, and more search than the
    ~43 guesses a Norvig-class solver averages on magictour_top1465."""
    p, s, g = sudoku_gen.generate(1, 9, "extreme", seed=2, workers=1)
    x = p[0]
    assert (x != 0).sum() <= sudoku_gen.EXTREME_MAX_CLUES <= 23
    assert g[0] >= sudoku_gen.EXTREME_MIN_GUESSES >= 43
    res = sudoku_solver.solve(x, 9)
    assert res.n_solutions == 1 and res.guesses == g[0]
    assert res.solution.tolist() == s[0].tolist()
    assert _single_left(_propagated(x, 9), 9) is None
