"""ARC grids as tokens: the dihedral and colour transforms, their inverses, and the canvas.

Tokens (TRM's layout): 0 pad, 1 EOS, 2..11 the colours 0..9. A grid of h x w cells sits on a
C x C canvas at offset (r, c); an EOS row lies just below it (columns c..c+w-1) and an EOS
column just right of it (rows r..r+h-1), each only where it fits on the canvas, so the grid's
size can be read back from the predicted tokens.

A *view* of a puzzle is a dihedral transform ``d`` in 0..7 (``rot90(g, d % 4)``, of the
transpose when ``d >= 4``) followed by a colour permutation ``perm`` (a length-10 array with
``perm[0] == 0``: the background stays black, as in TRM).
"""

from __future__ import annotations

import numpy as np

PAD, EOS, COLOUR0 = 0, 1, 2
VOCAB_SIZE = 12
#: ARC's usual palette for the colours 0..9: black, blue, red, green, yellow, grey, magenta,
#: orange, light blue, maroon.
PALETTE = (
    "#000000",
    "#0074d9",
    "#ff4136",
    "#2ecc40",
    "#ffdc00",
    "#aaaaaa",
    "#f012be",
    "#ff851b",
    "#7fdbff",
    "#870c25",
)


def _rot90(grid: np.ndarray, k: int) -> np.ndarray:
    """``np.rot90(grid, k)`` as a view by slicing (np.rot90's checks cost more than the work)."""
    k %= 4
    if k == 1:
        return grid.T[::-1]
    if k == 2:
        return grid[::-1, ::-1]
    if k == 3:
        return grid.T[:, ::-1]
    return grid


def dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    """The ``d``-th of the 8 symmetries of the square applied to ``grid``."""
    return _rot90(grid.T if d >= 4 else grid, d)


def inverse_dihedral(grid: np.ndarray, d: int) -> np.ndarray:
    """Undo :func:`dihedral`: ``inverse_dihedral(dihedral(g, d), d) == g``."""
    back = _rot90(grid, -d)
    return back.T if d >= 4 else back


def apply_view(grid: np.ndarray, d: int, perm: np.ndarray) -> np.ndarray:
    """Colour permutation after the dihedral transform (they commute)."""
    return perm[dihedral(grid, d)]


def invert_view(grid: np.ndarray, d: int, perm: np.ndarray) -> np.ndarray:
    """Map a grid seen in view (d, perm) back to the original puzzle's orientation and colours."""
    return inverse_dihedral(np.argsort(perm)[grid], d)


def random_perm(rng: np.random.Generator) -> np.ndarray:
    """A colour permutation that keeps 0 (the background) in place."""
    return np.concatenate([[0], rng.permutation(9) + 1]).astype(np.int8)


def encode(
    grid: np.ndarray,
    canvas: int,
    offset: tuple[int, int] = (0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Grid (h, w) of colours -> canvas (C, C) int8 tokens with the EOS border (written into
    ``out``, which must hold zeros, when given)."""
    h, w = grid.shape
    r, c = offset
    if out is None:
        out = np.zeros((canvas, canvas), dtype=np.int8)
    out[r : r + h, c : c + w] = grid + COLOUR0
    if r + h < canvas:
        out[r + h, c : c + w] = EOS
    if c + w < canvas:
        out[r : r + h, c + w] = EOS
    return out


def decode_sizes(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heights and widths of the grids on canvases (N, C, C) placed at offset (0, 0).

    The width is the run of colour tokens along the first row; the height the number of
    leading rows whose first ``width`` cells are all colours. A prediction whose EOS border
    is exact gives the true size; a ragged one gives the largest top-left rectangle it
    supports along its first row. Zero when the top-left cell is not a colour."""
    colour = tokens >= COLOUR0  # (N, C, C)
    run = np.cumprod(colour, axis=2).sum(axis=2)  # (N, C): colour run from column 0, per row
    width = run[:, 0]
    rows_ok = run >= width[:, None]
    height = np.cumprod(rows_ok, axis=1).sum(axis=1) * (width > 0)
    return height, width


def decode(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Canvas (C, C) or (C*C,) tokens -> the grid at ``offset`` (possibly 0 x 0)."""
    canvas = int(round(np.sqrt(tokens.size)))
    shifted = tokens.reshape(canvas, canvas)[offset[0] :, offset[1] :]
    h, w = decode_sizes(shifted[None])
    return (shifted[: h[0], : w[0]] - COLOUR0).astype(np.int8)
