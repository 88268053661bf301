"""Leak safety for Sudoku sets: a fingerprint that every augmentation of a puzzle shares.

Training augments a puzzle with digit permutations, band/stack permutations, row-within-band
and column-within-stack permutations and (square boxes) transposition, so an evaluation
puzzle that is any such image of a training puzzle has in effect been trained on.

:func:`fingerprint` encodes a puzzle as a graph and hashes its Weisfeiler-Lehman colour
refinement.  Nodes: cells (coloured by clue / blank), lines (rows and columns share one
colour, so transposition maps the graph onto itself), boxes, bands and stacks (one colour),
digits.  Edges: cell-row, cell-column, cell-box, clue cell-its digit, row-its band,
column-its stack.  Every augmentation is a relabelling of this graph, so augmented copies get
the same fingerprint: the check never misses a leak.  (Exact minimal-lexicographic canonical
forms need a search over ~3.4M row/column arrangements per 9x9 puzzle; the refinement costs
about a millisecond.)  Different puzzles could in principle share a fingerprint; that only
makes the check stricter (a puzzle is redrawn), and on generated sets it has not happened.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .sudoku_solver import box_shape

_ROUNDS = 4


def _graph(puzzle: np.ndarray, size: int) -> tuple[list[int], list[list[int]]]:
    br, bc = box_shape(size)
    n = size * size
    # node ids: cells [0, n), rows, cols, boxes, bands, stacks, digits
    row0, col0, box0 = n, n + size, n + 2 * size
    band0 = n + 3 * size
    stack0 = band0 + size // br
    digit0 = stack0 + size // bc
    total = digit0 + size
    colour = [0] * total
    adj: list[list[int]] = [[] for _ in range(total)]

    def link(a: int, b: int) -> None:
        adj[a].append(b)
        adj[b].append(a)

    cells = np.asarray(puzzle).reshape(-1).tolist()
    for c, v in enumerate(cells):
        r, k = divmod(c, size)
        colour[c] = 1 if v else 0
        link(c, row0 + r)
        link(c, col0 + k)
        link(c, box0 + (r // br) * (size // bc) + k // bc)
        if v:
            link(c, digit0 + v - 1)
    for r in range(size):
        colour[row0 + r] = colour[col0 + r] = 2
        link(row0 + r, band0 + r // br)
        link(col0 + r, stack0 + r // bc)
    for i in range(box0, box0 + size):
        colour[i] = 3
    for i in range(band0, digit0):
        colour[i] = 4
    for i in range(digit0, total):
        colour[i] = 5
    return colour, adj


def fingerprint(puzzle: np.ndarray, size: int) -> bytes:
    """16 bytes, equal for a puzzle and all its augmentations."""
    colour, adj = _graph(puzzle, size)
    for _ in range(_ROUNDS):
        # tuples of ints hash the same in every process (no string-hash randomisation)
        colour = [
            hash((colour[v], tuple(sorted(colour[u] for u in adj[v])))) for v in range(len(adj))
        ]
    digest = hashlib.blake2b(repr((size, sorted(colour))).encode(), digest_size=16)
    return digest.digest()


def fingerprints(puzzles: np.ndarray, size: int) -> list[bytes]:
    return [fingerprint(p, size) for p in np.asarray(puzzles).reshape(-1, size * size)]


def leaks(train: np.ndarray, evaluation: np.ndarray, size: int) -> list[int]:
    """Indices of ``evaluation`` puzzles that are augmentations of a ``train`` puzzle (or of
    another puzzle sharing its fingerprint); grids use 0 for blanks."""
    seen = set(fingerprints(train, size))
    return [i for i, f in enumerate(fingerprints(evaluation, size)) if f in seen]
