"""Puzzles as text a person types, and back: Sudoku digits and ASCII mazes (``GridPuzzle``).

Each parser reports malformed text with the 1-based line and column of the first problem
(:class:`ponderkit.TextError`); ``ponderkit predict`` prefixes the file name.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from ponderkit import TextError

from .maze_gen import GOAL, PATH, SPACE, START, WALL
from .sudoku_solver import box_shape

# -- Sudoku ------------------------------------------------------------------------------------


def _cells(text: str, wide: bool) -> Iterator[tuple[str, int, int]]:
    """Non-blank cells of ``text`` with line and column: characters, or (``wide``, for digits
    above 9) whitespace-separated words."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not wide:
            for c, ch in enumerate(line, start=1):
                if not ch.isspace():
                    yield ch, n, c
            continue
        c = 0
        for word in line.split():
            c = line.index(word, c) + 1
            yield word, n, c
            c += len(word) - 1


def _end(text: str) -> tuple[int, int]:
    lines = text.splitlines() or [""]
    return len(lines), len(lines[-1]) + 1


def parse_sudoku(text: str, size: int) -> np.ndarray:
    """``size*size`` cells (row-major; whitespace and line breaks are free) of digits 1..size,
    ``.`` or ``0`` for a blank -> tokens (1 blank, d + 1 digit d)."""
    cells = []
    for word, line, col in _cells(text, wide=size > 9):
        if word in (".", "0"):
            cells.append(1)
        elif word.isdigit() and 1 <= int(word) <= size:
            cells.append(int(word) + 1)
        else:
            raise TextError(
                line, col, f"{word!r} is not a cell: digits 1-{size}, '.' or '0' for a blank"
            )
        if len(cells) > size * size:
            raise TextError(line, col, f"more than {size * size} cells for a {size}x{size} Sudoku")
    if len(cells) < size * size:
        line, col = _end(text)
        raise TextError(
            line,
            col,
            f"the text ends after {len(cells)} cells; a {size}x{size} Sudoku has {size * size}",
        )
    return np.asarray(cells, dtype=np.int64)


def sudoku_cells(tokens: np.ndarray) -> list[str]:
    return ["" if t <= 1 else str(int(t) - 1) for t in np.asarray(tokens).tolist()]


def is_sudoku_solution(inputs: np.ndarray, prediction: np.ndarray, size: int) -> bool:
    """Every row, column and box holds 1..size once, and every given digit is kept."""
    x = np.asarray(inputs).reshape(size, size) - 1
    y = np.asarray(prediction).reshape(size, size) - 1
    given = x > 0
    if not np.array_equal(x[given], y[given]):
        return False
    want = list(range(1, size + 1))
    br, bc = box_shape(size)
    boxes = [
        y[r : r + br, c : c + bc].ravel() for r in range(0, size, br) for c in range(0, size, bc)
    ]
    units = [*y, *y.T, *boxes]
    return all(sorted(u.tolist()) == want for u in units)


# -- mazes -------------------------------------------------------------------------------------

MAZE_CHARS = {"#": WALL, ".": SPACE, " ": SPACE, "S": START, "G": GOAL, "*": PATH}
MAZE_SHOWN = {WALL: "#", SPACE: ".", START: "S", GOAL: "G", PATH: "*"}


def parse_maze(text: str, size: int) -> np.ndarray:
    """``size`` lines of ``size`` characters: ``#`` wall, ``.`` (or space) open, ``S`` start,
    ``G`` goal, one each -> tokens."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    cells, seen = [], {"S": None, "G": None}
    for n, line in enumerate(lines, start=1):
        if n > size:
            raise TextError(n, 1, f"more than {size} rows for a {size}x{size} maze")
        if len(line) != size:
            col = min(len(line), size) + 1
            raise TextError(n, col, f"row has {len(line)} characters; the maze is {size} wide")
        for c, ch in enumerate(line, start=1):
            if ch not in MAZE_CHARS or ch == "*":
                raise TextError(n, c, f"{ch!r}: use '#' wall, '.' open, 'S' start, 'G' goal")
            if ch in seen:
                if seen[ch] is not None:
                    raise TextError(n, c, f"a second {ch!r} (the first is at {seen[ch]})")
                seen[ch] = f"line {n}, column {c}"
            cells.append(MAZE_CHARS[ch])
    if len(lines) < size:
        line, col = _end(text)
        raise TextError(line, col, f"{len(lines)} rows; the maze has {size}")
    missing = [ch for ch, at in seen.items() if at is None]
    if missing:
        line, col = _end(text)
        raise TextError(line, col, f"no {' and no '.join(map(repr, missing))} in the maze")
    return np.asarray(cells, dtype=np.int64)


def maze_cells(tokens: np.ndarray) -> list[str]:
    return [MAZE_SHOWN.get(int(t), "?") for t in np.asarray(tokens).tolist()]
