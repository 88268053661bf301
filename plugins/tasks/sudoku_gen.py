"""Sudoku generator: difficulty tiers over :mod:`sudoku_solver`, augmentation (no torch).

Grids are flat ``np.int8`` arrays of ``S*S`` cells (0 blank, 1..S digits), batches
``(N, S*S)``; any size with a box shape (:func:`sudoku_solver.box_shape`: 4, 6, 8, 9, ...).
Effort is the solver's ``guesses`` (trial assignments at branch points over the whole search
tree with ``max_solutions=2``, after naked + hidden singles to a true fixed point; see
:mod:`sudoku_solver`).

Tiers (``make_puzzle`` / ``generate``); figures from ``benchmarks/datagen.py`` (2 CPUs):
    ``easy``     clues removed in random order while singles alone still solve the puzzle,
                 stopping at ``EASY_CLUES`` (36 for 9x9): unique and ``guesses == 0``.
    ``medium``   a minimal puzzle (no clue can be removed without losing uniqueness) with
                 ``guesses < HARD_MIN_GUESSES`` (9x9: clues median 24, guesses median 2).
    ``hard``     a minimal puzzle with ``guesses >= HARD_MIN_GUESSES`` (12 for 9x9; clues
                 median 25, guesses median 16, p90 30).  Over 200 random minimal 9x9
                 puzzles ``guesses`` has p25=0, p50=2, p75=4, p90=10, p95=14, p99=20 (45%
                 need no guess): 12 keeps the hardest ~7%.
    ``extreme``  (9x9 only) a hard puzzle improved by search: mutate (move one or two clues
                 to other cells of the same solution, re-add clues until unique, minimise)
                 and keep the mutant when it scores at least as well (guesses, less a
                 penalty per clue over the bar); stop at ``EXTREME_MIN_GUESSES`` (60) guesses
                 and at most ``EXTREME_MAX_CLUES`` (23) clues.  Measured: clues median 23,
                 guesses median 72, p90 100, mean 78; about 12 s per puzzle on one core.
                 For scale, the same counter on magictour_top1465 gives clues median 23,
                 guesses median 48, p90 213, mean 92 (Norvig's solver, which stops at the
                 first solution, averages ~43 there; this counter also proves uniqueness):
                 every extreme puzzle needs more search than the median top1465 puzzle, the
                 tier lacks top1465's long tail.
For 4x4 and 6x6 few puzzles need guessing at all: ``hard`` means minimal and
``guesses >= HARD_MIN_GUESSES[size]`` (0 for 4x4; 1 for 6x6, where the hard tier's median
is 2 guesses; over 90% of minimal 6x6 puzzles need none).
"""

from __future__ import annotations

import functools

import numpy as np

from . import sudoku_canon
from .sudoku_solver import (
    Geometry,
    as_list,
    box_shape,
    candidates,
    consistent,
    geometry,
    is_valid_solution,
    propagate,
    propagation_solves,
    random_solution,
    search,
    solve,
)

__all__ = [
    "DIFFICULTIES",
    "EASY_CLUES",
    "EXTREME_MAX_CLUES",
    "EXTREME_MIN_GUESSES",
    "HARD_MIN_GUESSES",
    "augment",
    "consistent",
    "generate",
    "is_valid_solution",
    "make_puzzle",
    "propagation_solves",
    "random_solution",
    "solve",
]

EASY_CLUES = {4: 8, 6: 16, 9: 36}
HARD_MIN_GUESSES = {4: 0, 6: 1, 9: 12}
EXTREME_MIN_GUESSES = 60
EXTREME_MAX_CLUES = 23
EXTREME_MAX_STEPS = 400  # mutations per seed puzzle before a fresh hard seed is drawn
DIFFICULTIES = ("easy", "medium", "hard", "extreme")


def easy_clues(size: int) -> int:
    return EASY_CLUES.get(size, round(0.45 * size * size))


def hard_min_guesses(size: int) -> int:
    return HARD_MIN_GUESSES.get(size, 1)


def _has_other_solution(g: Geometry, grid: list[int], cell: int, value: int) -> bool:
    """Does ``grid`` (with ``cell`` blank) have a solution where ``cell != value``?"""
    cand = candidates(g, grid)
    cand[value - 1] &= ~(1 << cell)
    sols: list[list[int]] = []
    search(g, cand, 0, sols, 1, [0])
    return bool(sols)


def _minimise(g: Geometry, sol: list[int], start: list[int], order: list[int], easy: bool):
    """Blank the clues of ``start`` in ``order`` while the puzzle stays unique (``easy``:
    while singles still solve it, down to the easy floor)."""
    cur = list(start)
    clues = sum(1 for v in cur if v)
    floor = easy_clues(g.size)
    for cell in order:
        v = cur[cell]
        if not v:
            continue
        if easy and clues <= floor:
            break
        cur[cell] = 0
        if easy:
            ok = propagate(g, candidates(g, cur), 0) == g.all
        else:
            ok = not _has_other_solution(g, cur, cell, sol[cell])
        if ok:
            clues -= 1
        else:
            cur[cell] = v
    return cur


def _guesses(g: Geometry, grid: list[int]) -> int:
    counter = [0]
    search(g, candidates(g, grid), 0, [], 2, counter)
    return counter[0]


def _fits(size: int, target: str, guesses: int, min_guesses: int | None) -> bool:
    threshold = hard_min_guesses(size) if min_guesses is None else min_guesses
    if target == "easy":
        return True
    if target in ("hard", "extreme") or threshold == 0:
        return guesses >= threshold  # threshold 0 (4x4): medium and hard both mean minimal
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

    ``easy`` stops at the easy floor, keeping the puzzle solvable by singles; ``medium`` and
    ``hard`` remove clues until the puzzle is minimal and keep it only if its ``guesses`` is
    below / at least ``min_guesses`` (default ``HARD_MIN_GUESSES``).  Up to ``tries`` random
    removal orders; None if none fits.  (``extreme`` needs :func:`harden` on top.)"""
    if target not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {target!r}")
    g = geometry(size)
    sol = as_list(solution, size)
    for _ in range(1 if target == "easy" else tries):
        order = rng.permutation(g.ncells).tolist()
        cur = _minimise(g, sol, sol, order, easy=target == "easy")
        guesses = _guesses(g, cur)
        if _fits(size, target, guesses, min_guesses):
            return np.array(cur, dtype=np.int8), guesses
    return None


def harden(
    puzzle: np.ndarray,
    solution: np.ndarray,
    rng: np.random.Generator,
    min_guesses: int = EXTREME_MIN_GUESSES,
    max_clues: int = EXTREME_MAX_CLUES,
    steps: int = EXTREME_MAX_STEPS,
) -> tuple[np.ndarray, int] | None:
    """Hill-climb from a minimal ``puzzle`` of ``solution`` towards more guesses.

    A mutant blanks one or two clues and reveals as many other cells of ``solution``, adds
    random solution cells back while it has several solutions, and is minimised.  It replaces
    the current puzzle when it scores at least as well: guesses up to ``min_guesses``, less a
    quarter of that per clue over ``max_clues`` (plateau moves keep the walk going).  Returns ``(puzzle, guesses)`` once both bars are met, None
    after ``steps`` mutations."""
    size = int(round(np.sqrt(np.asarray(puzzle).size)))
    g = geometry(size)
    sol = as_list(solution, size)
    cur = as_list(puzzle, size)
    cur_g, cur_c = _guesses(g, cur), sum(1 for v in cur if v)

    def score(guesses: int, clues: int) -> float:
        # guesses count up to the bar; each clue over the bar costs a quarter of it
        return min(guesses, min_guesses) / min_guesses - 0.25 * max(0, clues - max_clues)

    for _ in range(steps):
        if cur_g >= min_guesses and cur_c <= max_clues:
            return np.array(cur, dtype=np.int8), cur_g
        clues = [i for i, v in enumerate(cur) if v]
        blanks = [i for i, v in enumerate(cur) if not v]
        k = 1 + int(rng.random() < 0.5)
        mut = list(cur)
        for i in rng.choice(clues, k, replace=False).tolist():
            mut[i] = 0
        for i in rng.choice(blanks, k, replace=False).tolist():
            mut[i] = sol[i]
        counter = [0]
        sols: list[list[int]] = []
        while True:  # reveal cells until the solution is unique again
            sols.clear()
            search(g, candidates(g, mut), 0, sols, 2, counter)
            if len(sols) == 1:
                break
            free = [i for i, v in enumerate(mut) if not v]
            i = free[int(rng.integers(len(free)))]
            mut[i] = sol[i]
        mut = _minimise(g, sol, mut, rng.permutation(g.ncells).tolist(), easy=False)
        mg, mc = _guesses(g, mut), sum(1 for v in mut if v)
        if score(mg, mc) >= score(cur_g, cur_c):
            cur, cur_g, cur_c = mut, mg, mc
    return None


def _one(
    size: int,
    difficulty: str,
    min_guesses: int | None,
    ss: np.random.SeedSequence,
) -> tuple[np.ndarray, np.ndarray, np.int32, bytes]:
    """One sample (puzzle, solution, guesses, canonical key): fresh solution grids until the
    tier is met."""
    rng = np.random.default_rng(ss)
    while True:
        solution = random_solution(size, rng)
        if difficulty == "extreme":
            seed = make_puzzle(solution, size, rng, "hard", tries=1)
            made = None if seed is None else harden(seed[0], solution, rng, **_bars(min_guesses))
        else:
            made = make_puzzle(solution, size, rng, difficulty, tries=1, min_guesses=min_guesses)
        if made is not None:
            key = sudoku_canon.fingerprint(made[0], size)
            return made[0], solution, np.int32(made[1]), key


def _bars(min_guesses: int | None) -> dict:
    return {} if min_guesses is None else {"min_guesses": min_guesses}


def generate(
    n: int,
    size: int,
    difficulty: str,
    seed: int,
    workers: int | None = None,
    min_guesses: int | None = None,
    distinct: str = "canonical",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` puzzles, no two equal up to augmentation: ``(puzzles, solutions,
    guesses)`` (``distinct="exact"``: only no two identical; 4x4 has only about 40 minimal
    puzzles up to augmentation, so larger 4x4 sets need it).

    Puzzles and solutions are int8 ``(n, size*size)``, guesses int32 ``(n,)``.  Sample ``i``
    is drawn from ``SeedSequence(seed, spawn_key=(i, attempt))`` (``attempt`` > 0 only to
    replace a puzzle whose canonical fingerprint (:mod:`sudoku_canon`) an earlier one has),
    so the result depends only on the arguments, not on ``workers`` (processes; default
    ``os.cpu_count()``).  ``min_guesses`` overrides the hard (or extreme) threshold."""
    from ponderkit import datacache

    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if difficulty == "extreme" and size != 9:
        raise ValueError(f"the extreme tier exists for 9x9 only, got size {size}")
    g = geometry(size)  # validates size
    if n == 0:
        empty = np.zeros((0, g.ncells), dtype=np.int8)
        return empty, empty.copy(), np.zeros(0, dtype=np.int32)
    make = functools.partial(_one, size, difficulty, min_guesses)
    puzzles, solutions, guesses, _ = datacache.generate_distinct(
        make, n, seed, workers, key_field=3 if distinct == "canonical" else 0
    )
    return puzzles, solutions, guesses


def _random_perms(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    return np.argsort(rng.random((*shape, k)), axis=-1)


def augment(
    puzzle: np.ndarray, solution: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random validity-preserving transform to both grids (per row for batches).

    The transform is a digit permutation (blanks stay blank), a permutation of bands and of
    stacks, of rows within each band and of columns within each stack, and (square boxes
    only) an optional transpose.  Accepts ``(size*size,)`` or ``(N, size*size)`` arrays."""
    br, bc = box_shape(size)
    p, s = np.asarray(puzzle), np.asarray(solution)
    single = p.ndim == 1
    p2, s2 = p.reshape(-1, size * size), s.reshape(-1, size * size)
    n = p2.shape[0]
    # bands hold br rows (size // br bands); stacks hold bc columns (size // bc stacks)
    rows = _random_perms(rng, (n,), size // br)[:, :, None] * br + _random_perms(
        rng, (n, size // br), br
    )
    cols = _random_perms(rng, (n,), size // bc)[:, :, None] * bc + _random_perms(
        rng, (n, size // bc), bc
    )
    idx = rows.reshape(n, size)[:, :, None] * size + cols.reshape(n, size)[:, None, :]
    if br == bc:
        flip = rng.random(n) < 0.5
        idx = np.where(flip[:, None, None], idx.transpose(0, 2, 1), idx)
    idx = idx.reshape(n, -1)
    lut = np.zeros((n, size + 1), dtype=p2.dtype)
    lut[:, 1:] = _random_perms(rng, (n,), size) + 1
    ar = np.arange(n)[:, None]
    out_p = lut[ar, p2[ar, idx]]
    out_s = lut[ar, s2[ar, idx]]
    if single:
        return out_p[0], out_s[0]
    return out_p, out_s
