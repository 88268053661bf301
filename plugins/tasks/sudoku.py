"""``sudoku``: generated puzzles with exactly one solution, at a chosen difficulty."""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
from ponderkit import BuildContext, datacache, hookimpl

from . import sudoku_gen
from .arrays import ArrayTask


@attrs.frozen
class SudokuConfig:
    """Sudoku (4x4 or 9x9) with a unique solution; tokens 1 = blank, 2..S+1 = digits 1..S.

    ``hard`` 9x9 puzzles are minimal (typically 21-26 clues) and need substantial
    backtracking (see ``sudoku_gen``). Train and eval puzzles come from one seeded set and are
    all distinct; training augments with digit permutations, transposes and band/stack and
    row/column-within-band shuffles. Sets are cached on disk (PONDERKIT_CACHE)."""

    size: Literal[4, 9] = 9
    difficulty: Literal["easy", "medium", "hard"] = "hard"
    train_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    eval_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    augment: bool = True
    data_seed: int = 0
    workers: int | None = None


def load_sudoku(cfg: SudokuConfig) -> dict[str, np.ndarray]:
    n = cfg.train_size + cfg.eval_size
    params = {
        "size": cfg.size,
        "difficulty": cfg.difficulty,
        "n": n,
        "seed": cfg.data_seed,
        "version": 2,
    }

    def build() -> dict[str, np.ndarray]:
        print(
            f"generating {n} {cfg.difficulty} {cfg.size}x{cfg.size} sudokus "
            "(cached for next time) ...",
            flush=True,
        )
        puzzles, solutions, guesses = sudoku_gen.generate(
            n, cfg.size, cfg.difficulty, cfg.data_seed, cfg.workers
        )
        return {"puzzles": puzzles, "solutions": solutions, "guesses": guesses}

    arrays = datacache.cached_arrays("sudoku", params, build)
    tokens_x = arrays["puzzles"].astype(np.int8) + 1  # 0 blank -> 1, digit d -> d + 1
    tokens_y = arrays["solutions"].astype(np.int8) + 1
    t = cfg.train_size
    return {
        "train_inputs": tokens_x[:t],
        "train_labels": tokens_y[:t],
        "eval_inputs": tokens_x[t:],
        "eval_labels": tokens_y[t:],
    }


def build_sudoku(cfg: SudokuConfig, ctx: BuildContext) -> ArrayTask:
    def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
        px, py = sudoku_gen.augment(x - 1, y - 1, cfg.size, rng)
        return px + 1, py + 1

    return ArrayTask(
        cfg.size + 2,
        cfg.size * cfg.size,
        lambda: load_sudoku(cfg),
        augment if cfg.augment else None,
    )


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "sudoku", SudokuConfig, build_sudoku)
