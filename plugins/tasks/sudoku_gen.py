"""Sudoku generator and solver in pure Python + numpy (no torch).

Encoding: a grid is a flat ``np.int8`` array of ``S*S`` cells in row-major order, ``S`` in
{4, 9}; 0 is a blank and 1..S are digits.  Boxes are 2x2 for ``S=4`` and 3x3 for ``S=9``.
Batches have shape ``(N, S*S)``.

Solver
    Candidates are kept as ``S`` bitboards (one Python int of ``S*S`` bits per digit).
    Propagation applies naked singles (a cell with one candidate) and hidden singles (a digit
    with one place in a row, column or box) to a fixed point and detects contradictions (a
    cell with no candidate, a digit with no place in a unit).  When propagation stalls the
    search branches on the first cell with the fewest candidates (digits in ascending order).

Difficulty
    ``guesses`` is the number of trial assignments the search makes at branch points while
    solving with ``max_solutions=2``.  For a puzzle with a unique solution this explores the
    whole search tree (it must prove there is no second solution), so the count does not
    depend on luck in digit order.  ``guesses == 0`` means naked + hidden singles alone solve
    the puzzle.

Tiers (``make_puzzle`` / ``generate``)
    ``easy``    clues are removed in random order while singles alone still solve the puzzle,
                stopping at 36 clues for 9x9 (8 for 4x4): unique and ``guesses == 0``.
    ``medium``  a minimal puzzle (no clue can be removed without losing uniqueness) with
                ``guesses < HARD_MIN_GUESSES[9]``.
    ``hard``    a minimal puzzle (typically 22-26 clues) with ``guesses >= HARD_MIN_GUESSES[9]``
                (20, i.e. at least ten two-way branch points): singles alone cannot solve it
                and the search backtracks a lot, in the spirit of Sudoku-Extreme (rated by the
                backtrack count of the tdoku solver).  Measured over 2000 random minimal 9x9
                puzzles, ``guesses`` has p25=0, p50=2, p75=6, p90=10, p95=16, p99=28 (39% need
                no guess); 20 keeps the hardest ~3-4%.  For scale, famous "hardest" puzzles
                score 142 (AI Escargot) and 348 (Inkala 2012).
                Pass ``min_guesses`` to pick another bar (6 keeps the hardest ~30%).
    For 4x4 every puzzle is easy for the solver: ``medium`` and ``hard`` both mean minimal.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

import numpy as np

BOX = {4: 2, 9: 3}
EASY_CLUES = {4: 8, 9: 36}
HARD_MIN_GUESSES = {4: 0, 9: 20}
DIFFICULTIES = ("easy", "medium", "hard")


class SolveResult(NamedTuple):
    """Outcome of :func:`solve`: solutions found (capped), the first one, search effort."""

    n_solutions: int
    solution: np.ndarray | None
    guesses: int


class _Geometry:
    """Precomputed bit masks for one grid size."""

    def __init__(self, size: int) -> None:
        if size not in BOX:
            raise ValueError(f"sudoku size must be 4 or 9, got {size!r}")
        b = BOX[size]
        self.size = size
        self.ncells = size * size
        self.all = (1 << self.ncells) - 1
        rows = [[r * size + c for c in range(size)] for r in range(size)]
        cols = [[r * size + c for r in range(size)] for c in range(size)]
        boxes = [
            [(br + i) * size + bc + j for i in range(b) for j in range(b)]
            for br in range(0, size, b)
            for bc in range(0, size, b)
        ]
        units = rows + cols + boxes
        self.units = [sum(1 << c for c in u) for u in units]
        peers = [
            functools.reduce(int.__or__, (u for u in self.units if u >> c & 1)) & ~(1 << c)
            for c in range(self.ncells)
        ]
        self.keep = [self.all & ~m for m in peers]  # cells outside each peer set


@functools.cache
def _geometry(size: int) -> _Geometry:
    return _Geometry(size)


def _candidates(g: _Geometry, grid: list[int]) -> list[int]:
    """Digit bitboards for a puzzle: clue cells hold only their digit, others all digits."""
    free = g.all
    given = [0] * g.size
    for cell, v in enumerate(grid):
        if v:
            bit = 1 << cell
            free &= ~bit
            given[v - 1] |= bit
    return [free | m for m in given]


def _propagate(g: _Geometry, cand: list[int], solved: int) -> int:
    """Apply naked and hidden singles in place; return the solved-cell mask or -1."""
    full, keep, units = g.all, g.keep, g.units
    digits = range(g.size)
    n_units_each = g.size
    scanned = [-1] * g.size  # cand[d] at its last hidden-single scan
    while True:
        one = two = 0
        for b in cand:
            two |= one & b
            one |= b
        if one != full:
            return -1  # a cell without candidates
        singles = one & ~two & ~solved
        if singles:
            solved |= singles
            for d in digits:
                s = cand[d] & singles
                if s:
                    b = cand[d]
                    while s:
                        low = s & -s
                        b &= keep[low.bit_length() - 1]
                        s ^= low
                    cand[d] = b
            continue
        if solved == full:
            return solved
        found = False
        for d in digits:
            b = cand[d]
            if b == scanned[d]:
                continue
            if not b & ~solved and b.bit_count() == n_units_each:  # placed in every unit
                scanned[d] = b
                continue
            for u in units:
                x = b & u
                if not x & (x - 1):
                    if not x:
                        return -1  # digit d has no place in unit u
                    if not x & solved:
                        b &= keep[x.bit_length() - 1]
                        solved |= x
                        for e in digits:
                            if e != d:
                                cand[e] &= ~x
                        found = True
            cand[d] = scanned[d] = b
            if found:
                break
        if not found:
            return solved


def _branch_cell(g: _Geometry, cand: list[int], solved: int) -> int:
    """Bit of the first unsolved cell with the fewest candidates."""
    one = two = three = 0
    for b in cand:
        three |= two & b
        two |= one & b
        one |= b
    free = g.all & ~solved
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


def _search(
    g: _Geometry,
    cand: list[int],
    solved: int,
    sols: list[list[int]],
    limit: int,
    counter: list[int],
    rnd: random.Random | None = None,
) -> None:
    solved = _propagate(g, cand, solved)
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
        _search(g, child, solved, sols, limit, counter, rnd)


def _to_grid(g: _Geometry, cand: list[int]) -> list[int]:
    grid = [0] * g.ncells
    for d, b in enumerate(cand):
        while b:
            low = b & -b
            grid[low.bit_length() - 1] = d + 1
            b ^= low
    return grid


def _as_list(puzzle: np.ndarray, size: int) -> list[int]:
    arr = np.asarray(puzzle).reshape(-1)
    if arr.size != size * size:
        raise ValueError(f"expected {size * size} cells for size {size}, got {arr.size}")
    if arr.size and (arr.min() < 0 or arr.max() > size):
        raise ValueError(f"cells must be 0 (blank) or 1..{size}; got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64).tolist()


def solve(puzzle: np.ndarray, size: int, max_solutions: int = 2) -> SolveResult:
    """Solve ``puzzle``; count solutions up to ``max_solutions``.

    Returns the number of solutions found (at most ``max_solutions``), the first solution as
    an int8 array (None if there is none) and the number of guesses (see module docstring).
    """
    g = _geometry(size)
    sols: list[list[int]] = []
    counter = [0]
    _search(g, _candidates(g, _as_list(puzzle, size)), 0, sols, max_solutions, counter)
    first = np.array(_to_grid(g, sols[0]), dtype=np.int8) if sols else None
    return SolveResult(len(sols), first, counter[0])


def propagation_solves(puzzle: np.ndarray, size: int) -> bool:
    """True if naked and hidden singles alone solve ``puzzle`` (no guessing)."""
    g = _geometry(size)
    return _propagate(g, _candidates(g, _as_list(puzzle, size)), 0) == g.all


def random_solution(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random full grid: random diagonal boxes, then a search with shuffled digit order.

    The diagonal boxes are independent of each other for 9x9 (any choice completes); for
    4x4 only the first box is drawn, because two diagonal 2x2 boxes need not complete.
    """
    g = _geometry(size)
    b = BOX[size]
    grid = [0] * g.ncells
    for k in range(b if size == 9 else 1):
        for i, d in enumerate((rng.permutation(size) + 1).tolist()):
            grid[(k * b + i // b) * size + k * b + i % b] = d
    rnd = random.Random(int(rng.integers(2**63)))
    sols: list[list[int]] = []
    _search(g, _candidates(g, grid), 0, sols, 1, [0], rnd)
    return np.array(_to_grid(g, sols[0]), dtype=np.int8)


def _has_other_solution(g: _Geometry, grid: list[int], cell: int, value: int) -> bool:
    """Does ``grid`` (with ``cell`` blank) have a solution where ``cell != value``?"""
    cand = _candidates(g, grid)
    cand[value - 1] &= ~(1 << cell)
    sols: list[list[int]] = []
    _search(g, cand, 0, sols, 1, [0])
    return bool(sols)


def _minimise(g: _Geometry, sol: list[int], order: np.ndarray, easy: bool) -> list[int]:
    cur = list(sol)
    clues = g.ncells
    floor = EASY_CLUES[g.size]
    for cell in order.tolist():
        if easy and clues <= floor:
            break
        v = cur[cell]
        cur[cell] = 0
        if easy:
            ok = _propagate(g, _candidates(g, cur), 0) == g.all
        else:
            ok = not _has_other_solution(g, cur, cell, v)
        if ok:
            clues -= 1
        else:
            cur[cell] = v
    return cur


def _fits(size: int, target: str, guesses: int, min_guesses: int | None) -> bool:
    threshold = HARD_MIN_GUESSES[size] if min_guesses is None else min_guesses
    if target == "easy":
        return True
    if target == "hard" or size == 4:
        return guesses >= threshold
    return guesses < threshold


def make_puzzle(
    solution: np.ndarray,
    size: int,
    rng: np.random.Generator,
    target: str = "medium",
    tries: int = 200,
    min_guesses: int | None = None,
) -> tuple[np.ndarray, int] | None:
    """Remove clues from ``solution`` in random order; return ``(puzzle, guesses)``.

    ``easy`` stops at ``EASY_CLUES[size]`` clues, keeping the puzzle solvable by singles;
    ``medium`` and ``hard`` remove clues until the puzzle is minimal and keep it only if its
    ``guesses`` is below / at least ``min_guesses`` (default ``HARD_MIN_GUESSES[size]``).
    Up to ``tries`` random removal orders are tried; None if none fits the tier.
    """
    if target not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {target!r}")
    g = _geometry(size)
    sol = _as_list(solution, size)
    for _ in range(1 if target == "easy" else tries):
        cur = _minimise(g, sol, rng.permutation(g.ncells), easy=target == "easy")
        puzzle = np.array(cur, dtype=np.int8)
        guesses = solve(puzzle, size).guesses
        if _fits(size, target, guesses, min_guesses):
            return puzzle, guesses
    return None


def _one(
    size: int, difficulty: str, min_guesses: int | None, ss: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray, np.int32]:
    """One sample: a fresh solution grid per removal order until the tier is met."""
    rng = np.random.default_rng(ss)
    while True:
        solution = random_solution(size, rng)
        made = make_puzzle(solution, size, rng, difficulty, tries=1, min_guesses=min_guesses)
        if made is not None:
            return made[0], solution, np.int32(made[1])


def generate(
    n: int,
    size: int,
    difficulty: str,
    seed: int,
    workers: int | None = None,
    min_guesses: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` distinct puzzles: ``(puzzles, solutions, guesses)``.

    Puzzles and solutions are int8 ``(n, size*size)``, guesses int32 ``(n,)``.  Sample ``i``
    is drawn from ``SeedSequence(seed, spawn_key=(i, attempt))`` (``attempt`` > 0 only to
    replace a duplicate), so the result depends only on the arguments, not on ``workers``
    (processes; default ``os.cpu_count()``).  ``min_guesses`` overrides the hard threshold.
    """
    from ponderkit import datacache

    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    g = _geometry(size)  # validates size
    if n == 0:
        empty = np.zeros((0, g.ncells), dtype=np.int8)
        return empty, empty.copy(), np.zeros(0, dtype=np.int32)
    make = functools.partial(_one, size, difficulty, min_guesses)
    puzzles, solutions, guesses = datacache.generate_distinct(make, n, seed, workers)
    return puzzles, solutions, guesses


def _random_perms(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    return np.argsort(rng.random((*shape, k)), axis=-1)


def augment(
    puzzle: np.ndarray, solution: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random validity-preserving transform to both grids (per row for batches).

    The transform is a digit permutation (blanks stay blank), a permutation of bands and of
    stacks, of rows within each band and of columns within each stack, and an optional
    transpose.  Accepts ``(size*size,)`` or ``(N, size*size)`` arrays.
    """
    b = BOX[size]
    p, s = np.asarray(puzzle), np.asarray(solution)
    single = p.ndim == 1
    p2, s2 = p.reshape(-1, size * size), s.reshape(-1, size * size)
    n = p2.shape[0]
    rows = (_random_perms(rng, (n,), b)[:, :, None] * b + _random_perms(rng, (n, b), b)).reshape(
        n, size
    )
    cols = (_random_perms(rng, (n,), b)[:, :, None] * b + _random_perms(rng, (n, b), b)).reshape(
        n, size
    )
    idx = rows[:, :, None] * size + cols[:, None, :]
    flip = rng.random(n) < 0.5
    idx = np.where(flip[:, None, None], idx.transpose(0, 2, 1), idx).reshape(n, -1)
    lut = np.zeros((n, size + 1), dtype=p2.dtype)
    lut[:, 1:] = _random_perms(rng, (n,), size) + 1
    ar = np.arange(n)[:, None]
    out_p = lut[ar, p2[ar, idx]]
    out_s = lut[ar, s2[ar, idx]]
    if single:
        return out_p[0], out_s[0]
    return out_p, out_s


def is_valid_solution(grid: np.ndarray, size: int) -> bool:
    """True if ``grid`` is a complete grid whose rows, columns and boxes hold 1..size once."""
    a = np.asarray(grid).reshape(-1)
    if a.size != size * size or size not in BOX:
        return False
    b = BOX[size]
    m = a.reshape(size, size).astype(np.int64)
    boxes = m.reshape(b, b, b, b).transpose(0, 2, 1, 3).reshape(size, size)
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
