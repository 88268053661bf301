"""Puzzles as text (GridPuzzle of sudoku and maze): parsing with line and column, the
rendering back, and the independent answer checkers against generated solutions."""

from __future__ import annotations

import numpy as np
import pytest
from ponderkit import TextError
from ponderkit.plugins.tasks import grid_text, maze_gen, sudoku_gen
from ponderkit.plugins.tasks.maze import MazeConfig, MazeTask
from ponderkit.plugins.tasks.sudoku import SudokuConfig, SudokuTask

MAZE = "#####\n#S..#\n#.#.#\n#..G#\n#####\n"


def test_sudoku_text_round_trips_and_reads_both_blank_marks():
    task = SudokuTask(SudokuConfig(size=4))
    tokens = task.parse_grid("1.34\n 0 0 0 0\n2143\n....")
    assert tokens.tolist() == [2, 1, 4, 5, 1, 1, 1, 1, 3, 2, 5, 4, 1, 1, 1, 1]
    cells = task.grid_cells(tokens)
    assert task.parse_grid("".join(c or "." for c in cells)).tolist() == tokens.tolist()


def test_sudoku_checker_accepts_generated_solutions_and_rejects_any_broken_cell():
    puzzles, solutions, _ = sudoku_gen.generate(4, 6, "easy", 3, 1, distinct="exact")
    task = SudokuTask(SudokuConfig(size=6))
    for x, y in zip(puzzles + 1, solutions + 1, strict=True):
        assert task.check_answer(x, y)
        for cell in range(0, 36, 7):  # any changed digit breaks its row (brute force)
            broken = y.copy()
            broken[cell] = 2 + (broken[cell] - 1) % 6
            assert not task.check_answer(x, broken)
    # a grid that keeps the rules but not the givens is no answer to this puzzle
    x, y = puzzles[0] + 1, solutions[0] + 1
    other = np.where(y == 2, 3, np.where(y == 3, 2, y))  # digits 1 and 2 swapped
    assert task.check_answer(np.ones_like(x), other)  # valid for the empty grid
    assert np.isin(x, (2, 3)).any() and not task.check_answer(x, other)


def test_maze_text_parses_renders_and_checks_the_shortest_path():
    task = MazeTask(MazeConfig(size=5))
    x = task.parse_grid(MAZE)
    assert "".join(task.grid_cells(x)) == MAZE.replace("\n", "")
    two = x.copy()
    two[[7, 8, 13]] = maze_gen.PATH  # S . . / . / G: 4 moves, the shortest
    assert task.check_answer(x, two)
    detour = x.copy()
    detour[[11, 16, 17]] = maze_gen.PATH  # also 4 moves, the other way round
    assert task.check_answer(x, detour)
    assert not task.check_answer(x, x)  # no path at all
    broken = x.copy()
    broken[[7, 13]] = maze_gen.PATH  # a gap
    assert not task.check_answer(x, broken)


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("#####\n#S..#\n#.#x#\n#..G#\n#####\n", 3, 4, "'x'"),
        ("#####\n#S..#\n#.#.\n#..G#\n#####\n", 3, 5, "4 characters"),
        ("#####\n#S..#\n#.#S#\n#..G#\n#####\n", 3, 4, "a second 'S' (the first is at line 2"),
        ("#####\n#S..#\n#.#.#\n", 3, 6, "3 rows"),
        ("#####\n#S..#\n#.#.#\n#...#\n#####\n", 5, 6, "no 'G'"),
    ],
)
def test_maze_text_errors_name_line_and_column(text, line, column, message):
    with pytest.raises(TextError) as info:
        grid_text.parse_maze(text, 5)
    assert (info.value.line, info.value.column) == (line, column)
    assert message in info.value.message
