"""Sudoku solver for any box shape, in pure Python (no numpy in the inner loop, no torch).

Encoding: a grid is a flat array of ``S*S`` cells in row-major order; 0 is a blank, 1..S are
digits.  Boxes are ``br x bc`` with ``br * bc == S`` (:func:`box_shape`: 2x2 for 4x4, 2x3 for
6x6, 3x3 for 9x9, 2x4 for 8x8, 3x4 for 12x12 ...).

Candidates are ``S`` bitboards (one Python int of ``S*S`` bits per digit).

Propagation (:func:`propagate`) repeats, until a full pass changes nothing:
    * naked singles: every unsolved cell with exactly one candidate gets that digit;
    * hidden singles: in every row, column and box, a digit with exactly one possible cell is
      placed there;
    and each placement removes the digit from the cell's peers.  It stops early on a
    contradiction: a cell without candidates, or a digit without a place in some unit.  At
    the fixed point no single of either kind is left (the tests check this against a
    brute-force singles finder).

Search and guess counting (:func:`solve`)
    When propagation stalls, the search branches on the unsolved cell with the fewest
    candidates (the first such cell in row-major order) and tries its digits in ascending
    order, propagating after each.  ``guesses`` is the number of trial assignments made at
    branch points (a branch on a cell with k candidates that tries all k counts k).  With
    ``max_solutions=2`` a puzzle with a unique solution is searched exhaustively (the search
    must prove there is no second solution), so the count does not depend on lucky digit
    order.  ``guesses == 0`` means naked and hidden singles alone solve the puzzle.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

import numpy as np

__all__ = [
    "SolveResult",
    "box_shape",
    "consistent",
    "geometry",
    "is_valid_solution",
    "propagation_solves",
    "random_solution",
    "solve",
]


class SolveResult(NamedTuple):
    """Outcome of :func:`solve`: solutions found (capped), the first one, search effort."""

    n_solutions: int
    solution: np.ndarray | None
    guesses: int


def box_shape(size: int) -> tuple[int, int]:
    """``(box_rows, box_cols)`` for a ``size x size`` grid: the most square factorisation
    with ``box_rows <= box_cols`` (2x3 for 6x6, like printed 6x6 puzzles)."""
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"sudoku size must be an integer >= 4, got {size!r}")
    br = max(d for d in range(1, int(size**0.5) + 1) if size % d == 0)
    if br == 1:
        raise ValueError(f"sudoku size {size} is prime: no box shape (use 4, 6, 8, 9, ...)")
    return br, size // br


class Geometry:
    """Precomputed bit masks for one grid size: units (rows, columns, boxes) and peers."""

    def __init__(self, size: int) -> None:
        br, bc = box_shape(size)
        self.size, self.box = size, (br, bc)
        self.ncells = size * size
        self.all = (1 << self.ncells) - 1
        rows = [[r * size + c for c in range(size)] for r in range(size)]
        cols = [[r * size + c for r in range(size)] for c in range(size)]
        boxes = [
            [(r0 + i) * size + c0 + j for i in range(br) for j in range(bc)]
            for r0 in range(0, size, br)
            for c0 in range(0, size, bc)
        ]
        self.unit_cells = rows + cols + boxes
        self.units = [sum(1 << c for c in u) for u in self.unit_cells]
        peers = [
            functools.reduce(int.__or__, (u for u in self.units if u >> c & 1)) & ~(1 << c)
            for c in range(self.ncells)
        ]
        self.peers = peers
        self.keep = [self.all & ~m for m in peers]  # cells outside each peer set


@functools.cache
def geometry(size: int) -> Geometry:
    return Geometry(size)


def candidates(g: Geometry, grid: list[int]) -> list[int]:
    """Digit bitboards for a puzzle: clue cells hold only their digit, others all digits.
    Clues are not yet propagated to their peers (:func:`propagate` does that)."""
    free = g.all
    given = [0] * g.size
    for cell, v in enumerate(grid):
        if v:
            bit = 1 << cell
            free &= ~bit
            given[v - 1] |= bit
    return [free | m for m in given]


def _place(cand: list[int], keep: list[int], d: int, cells: int) -> None:
    """Remove digit ``d`` from the peers of every cell in ``cells`` (already fixed to d)."""
    b = cand[d]
    while cells:
        low = cells & -cells
        b &= keep[low.bit_length() - 1]
        cells ^= low
    cand[d] = b


def propagate(g: Geometry, cand: list[int], solved: int) -> int:
    """Naked and hidden singles to a fixed point, in place; the solved-cell mask or -1.

    ``solved`` marks cells whose digit is fixed AND already removed from their peers."""
    full, keep, units = g.all, g.keep, g.units
    digits = range(g.size)
    # cand[d] at a scan that found no hidden single of d: while cand[d] is unchanged none can
    # appear (solved cells only grow), so the scan is skipped
    quiet = [-1] * g.size
    while True:
        one = two = 0
        for b in cand:
            two |= one & b
            one |= b
        if one != full:
            return -1  # a cell without candidates
        singles = one & ~two & ~solved
        if singles:  # naked singles (and clues not yet propagated)
            solved |= singles
            for d in digits:
                s = cand[d] & singles
                if s:
                    _place(cand, keep, d, s)
            continue
        if solved == full:
            return solved
        placed = 0
        for d in digits:
            b = cand[d]
            if b == quiet[d]:
                continue
            hidden = 0
            for u in units:
                x = b & u
                if not x & (x - 1):
                    if not x:
                        return -1  # digit d has no place in unit u
                    if not x & solved:
                        hidden |= x
            if hidden:
                # two hidden singles of d in one unit are caught as a contradiction on the
                # next pass (placing one empties the other's only candidate)
                for e in digits:
                    if e != d:
                        cand[e] &= ~hidden
                placed |= hidden
            else:
                quiet[d] = b
        if not placed:
            return solved  # a full pass found no single of either kind: the fixed point
        # newly placed cells are naked singles now; the next pass propagates them


def _branch_cell(g: Geometry, cand: list[int], solved: int) -> int:
    """Bit of the first unsolved cell with the fewest candidates."""
    free = g.all & ~solved
    one = two = three = 0
    for b in cand:
        three |= two & b
        two |= one & b
        one |= b
    pairs = two & ~three & free
    if pairs:
        return pairs & -pairs
    best_bit, best_n = 0, g.size + 1
    while free:
        low = free & -free
        free ^= low
        n = sum(1 for b in cand if b & low)
        if n < best_n:
            best_bit, best_n = low, n
    return best_bit


def search(
    g: Geometry,
    cand: list[int],
    solved: int,
    sols: list[list[int]],
    limit: int,
    counter: list[int],
    rnd: random.Random | None = None,
) -> None:
    """Depth-first search; appends solved bitboards to ``sols`` (up to ``limit``) and adds
    the number of trial assignments to ``counter[0]``."""
    solved = propagate(g, cand, solved)
    if solved < 0:
        return
    if solved == g.all:
        sols.append(cand)
        return
    bit = _branch_cell(g, cand, solved)
    digits = [d for d in range(g.size) if cand[d] & bit]
    if rnd is not None:
        rnd.shuffle(digits)
    for d in digits:
        if len(sols) >= limit:
            return
        counter[0] += 1
        child = [b & ~bit for b in cand]
        child[d] = cand[d]
        search(g, child, solved, sols, limit, counter, rnd)


def to_grid(g: Geometry, cand: list[int]) -> list[int]:
    grid = [0] * g.ncells
    for d, b in enumerate(cand):
        while b:
            low = b & -b
            grid[low.bit_length() - 1] = d + 1
            b ^= low
    return grid


def as_list(puzzle: np.ndarray, size: int) -> list[int]:
    arr = np.asarray(puzzle).reshape(-1)
    if arr.size != size * size:
        raise ValueError(f"expected {size * size} cells for size {size}, got {arr.size}")
    if arr.size and (arr.min() < 0 or arr.max() > size):
        raise ValueError(f"cells must be 0 (blank) or 1..{size}; got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64).tolist()


def solve(puzzle: np.ndarray, size: int, max_solutions: int = 2) -> SolveResult:
    """Solve ``puzzle``; count solutions up to ``max_solutions``.

    Returns the number of solutions found (at most ``max_solutions``), the first solution as
    an int8 array (None if there is none) and the number of guesses (module docstring)."""
    g = geometry(size)
    sols: list[list[int]] = []
    counter = [0]
    search(g, candidates(g, as_list(puzzle, size)), 0, sols, max_solutions, counter)
    first = np.array(to_grid(g, sols[0]), dtype=np.int8) if sols else None
    return SolveResult(len(sols), first, counter[0])


def count_solutions(puzzle: np.ndarray, size: int, limit: int = 2) -> int:
    """Solutions of ``puzzle`` (0 blank, 1..size given), counted up to ``limit``; 0 also for
    givens that break the rules (two equal digits in a unit), which the search cannot place."""
    arr = np.asarray(puzzle).reshape(-1)
    if not _givens_consistent(arr, size):
        return 0
    return solve(arr, size, max_solutions=limit).n_solutions


def _givens_consistent(arr: np.ndarray, size: int) -> bool:
    g = np.asarray(arr).reshape(size, size)
    br, bc = box_shape(size)
    boxes = [
        g[r : r + br, c : c + bc].ravel() for r in range(0, size, br) for c in range(0, size, bc)
    ]
    for unit in [*g, *g.T, *boxes]:
        given = unit[unit > 0]
        if len(set(given.tolist())) < len(given):
            return False
    return True


def propagation_solves(puzzle: np.ndarray, size: int) -> bool:
    """True if naked and hidden singles alone solve ``puzzle`` (no guessing)."""
    g = geometry(size)
    return propagate(g, candidates(g, as_list(puzzle, size)), 0) == g.all


def random_solution(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random full grid: a random first box, then a search with shuffled digit order."""
    g = geometry(size)
    br, bc = g.box
    grid = [0] * g.ncells
    for i, d in enumerate((rng.permutation(size) + 1).tolist()):
        grid[(i // bc) * size + i % bc] = d
    rnd = random.Random(int(rng.integers(2**63)))
    sols: list[list[int]] = []
    search(g, candidates(g, grid), 0, sols, 1, [0], rnd)
    return np.array(to_grid(g, sols[0]), dtype=np.int8)


def is_valid_solution(grid: np.ndarray, size: int) -> bool:
    """True if ``grid`` is complete and its rows, columns and boxes hold 1..size once."""
    a = np.asarray(grid).reshape(-1)
    try:
        br, bc = box_shape(size)
    except ValueError:
        return False
    if a.size != size * size:
        return False
    m = a.reshape(size, size).astype(np.int64)
    boxes = m.reshape(size // br, br, size // bc, bc).transpose(0, 2, 1, 3).reshape(size, size)
    want = np.arange(1, size + 1)
    return all(
        np.array_equal(np.sort(x, axis=1), np.broadcast_to(want, x.shape)) for x in (m, m.T, boxes)
    )


def consistent(puzzle: np.ndarray, solution: np.ndarray) -> bool:
    """True if every clue of ``puzzle`` equals the corresponding cell of ``solution``."""
    p, s = np.asarray(puzzle), np.asarray(solution)
    if p.shape != s.shape:
        return False
    mask = p != 0
    return bool(np.array_equal(p[mask], s[mask]))
