"""``sudoku``: generated puzzles with exactly one solution, at a chosen difficulty."""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
from ponderkit import BuildContext, datacache, hookimpl

from . import grid_text, sudoku_canon, sudoku_gen, sudoku_solver
from .arrays import ArrayTask
from .file_formats import DataError


def _valid_size(instance, attribute, value) -> None:
    sudoku_gen.box_shape(value)  # raises ValueError naming the problem


@attrs.frozen
class SudokuConfig:
    """Sudoku of any box shape (4x4, 6x6 with 2x3 boxes, 9x9 ...) with a unique solution.

    Tokens: 1 = blank, 2..S+1 = digits 1..S (TRM's encoding).  Tiers (see ``sudoku_gen``):
    ``easy`` (singles solve it), ``medium`` and ``hard`` (minimal puzzles below / at least
    ``HARD_MIN_GUESSES`` search guesses), ``extreme`` (9x9 only: hard puzzles hardened by
    search to >= 60 guesses and <= 23 clues; more search than the median magictour_top1465
    puzzle by the same counter).
    Train and eval puzzles come from one seeded set in which no puzzle is an augmentation of
    another (checked with canonical fingerprints, ``sudoku_canon``); training augments with
    digit permutations, band/stack and row/column-within-band shuffles and (square boxes)
    transposes.  ``leak_check: false`` only keeps puzzles pairwise different: 4x4 has about
    40 minimal puzzles up to augmentation, so a larger 4x4 set is memorisation, not a
    held-out test.  Sets are cached on disk (PONDERKIT_CACHE)."""

    #: grid side (4, 6 with 2x3 boxes, 9 ...)
    size: int = attrs.field(default=9, validator=_valid_size)
    #: by the solver's search effort: easy needs no guessing, hard/extreme few clues and heavy backtracking
    difficulty: Literal["easy", "medium", "hard", "extreme"] = "hard"
    #: training puzzles generated
    train_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    #: held-out puzzles generated
    eval_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    #: train on random digit permutations, transposes and band/stack shuffles
    augment: bool = True
    leak_check: bool = True
    #: seed of the generated data set (the data, not the model)
    data_seed: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: processes generating the data set (null: the CPU count)
    workers: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


def check_sudoku(cfg: SudokuConfig, env) -> list:
    if cfg.difficulty == "extreme" and cfg.size != 9:
        return [("difficulty", f"the extreme tier exists for 9x9 only (size is {cfg.size})")]
    return []


def load_sudoku(cfg: SudokuConfig) -> dict[str, np.ndarray]:
    n = cfg.train_size + cfg.eval_size
    params = {
        "size": cfg.size,
        "difficulty": cfg.difficulty,
        "n": n,
        "seed": cfg.data_seed,
        "leak_check": cfg.leak_check,
        "version": 3,
    }

    def build() -> dict[str, np.ndarray]:
        print(
            f"generating {n} {cfg.difficulty} {cfg.size}x{cfg.size} sudokus "
            "(cached for next time) ...",
            flush=True,
        )
        puzzles, solutions, guesses = sudoku_gen.generate(
            n,
            cfg.size,
            cfg.difficulty,
            cfg.data_seed,
            cfg.workers,
            distinct="canonical" if cfg.leak_check else "exact",
        )
        return {"puzzles": puzzles, "solutions": solutions, "guesses": guesses}

    arrays = datacache.cached_arrays("sudoku", params, build)
    t = cfg.train_size
    leaked = []
    if cfg.leak_check:
        leaked = sudoku_canon.leaks(arrays["puzzles"][:t], arrays["puzzles"][t:], cfg.size)
    if leaked:
        raise DataError(
            f"sudoku set {params}: eval puzzle {leaked[0]} (and {len(leaked) - 1} more) is an "
            "augmentation of a training puzzle; delete its cache entry to regenerate"
        )
    tokens_x = arrays["puzzles"].astype(np.int8) + 1  # 0 blank -> 1, digit d -> d + 1
    tokens_y = arrays["solutions"].astype(np.int8) + 1
    return {
        "train_inputs": tokens_x[:t],
        "train_labels": tokens_y[:t],
        "eval_inputs": tokens_x[t:],
        "eval_labels": tokens_y[t:],
    }


class SudokuTask(ArrayTask):
    """Sudoku arrays, typed and read as text (:class:`ponderkit.GridPuzzle`)."""

    def __init__(self, cfg: SudokuConfig):
        def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
            px, py = sudoku_gen.augment(x - 1, y - 1, cfg.size, rng)
            return px + 1, py + 1

        super().__init__(
            cfg.size + 2,
            cfg.size * cfg.size,
            lambda: load_sudoku(cfg),
            augment if cfg.augment else None,
        )
        self.size = cfg.size
        self.grid_shape = (cfg.size, cfg.size)
        self.grid_boxes = sudoku_gen.box_shape(cfg.size)

    def parse_grid(self, text: str) -> np.ndarray:
        return grid_text.parse_sudoku(text, self.size)

    def grid_cells(self, tokens: np.ndarray) -> list[str]:
        return grid_text.sudoku_cells(tokens)

    def check_answer(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        return grid_text.is_sudoku_solution(inputs, prediction, self.size)

    def count_solutions(self, inputs: np.ndarray, limit: int = 2) -> int:
        """Solutions of the puzzle ``inputs`` (tokens), counted up to ``limit`` (``predict``)."""
        return sudoku_solver.count_solutions(np.asarray(inputs) - 1, self.size, limit)


def build_sudoku(cfg: SudokuConfig, ctx: BuildContext) -> SudokuTask:
    return SudokuTask(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "sudoku", SudokuConfig, build_sudoku, check=check_sudoku)
