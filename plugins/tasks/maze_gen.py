"""Maze generator in pure Python + numpy (no torch).

Encoding (vocab 6): 0 pad, 1 wall, 2 space, 3 start, 4 goal, 5 path.  A maze is a flat int8
array of ``size*size`` cells in row-major order; batches are ``(N, size*size)``.  The input
holds walls, spaces, one start and one goal; the target is the input with the cells of the
shortest start-to-goal path (start and goal excluded) set to 5.

Generation
    1. A perfect maze is carved by a randomised depth-first search on the lattice of cells
       with even coordinates (walls between them at odd coordinates; for even sizes the last
       row and column start as wall).  Depth-first carving gives long winding corridors.
    2. Loops and open areas: every remaining wall cell is opened with probability
       ``open_prob`` (default 0.08): opened walls between two lattice cells add alternative
       routes, opened "pillars" and edge cells widen corridors into small open areas.
    3. A random open cell becomes the start; a breadth-first search counts shortest paths
       (capped at 2) and the goal is drawn among cells whose shortest path has more than
       ``min_path_len`` moves AND is unique, so the target is well defined.  If no cell
       qualifies, a few other starts are tried, then a new maze is drawn.

Path length is counted in moves: a path with ``k`` cells marked 5 has length ``k + 1``.  The
Maze-Hard setting is ``size=30, min_path_len=110``; measured over 200 such mazes: 53% of the
cells are open, ~27 independent cycles and ~13 open 2x2 blocks per maze, shortest paths of
111-190 moves (median 114).
"""

from __future__ import annotations

import functools
from collections import deque

import numpy as np

PAD, WALL, SPACE, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB = 6
OPEN_PROB = 0.08
_STARTS_PER_MAZE = 4
_MAX_MAZES = 2000


@functools.cache
def _neighbours(size: int) -> tuple[tuple[int, ...], ...]:
    out = []
    for r in range(size):
        for c in range(size):
            nb = []
            if r > 0:
                nb.append((r - 1) * size + c)
            if r < size - 1:
                nb.append((r + 1) * size + c)
            if c > 0:
                nb.append(r * size + c - 1)
            if c < size - 1:
                nb.append(r * size + c + 1)
            out.append(tuple(nb))
    return tuple(out)


def _flat(grid: np.ndarray, size: int) -> np.ndarray:
    a = np.asarray(grid).reshape(-1)
    if a.size != size * size:
        raise ValueError(f"expected {size * size} cells for size {size}, got {a.size}")
    return a


def carve(size: int, rng: np.random.Generator, open_prob: float = OPEN_PROB) -> np.ndarray:
    """A maze of walls (1) and spaces (2): DFS perfect maze plus randomly opened walls."""
    if size < 3:
        raise ValueError(f"maze size must be >= 3, got {size}")
    grid = np.full((size, size), WALL, dtype=np.int8)
    lat = (size + 1) // 2  # lattice cells per side, at even coordinates
    seen = np.zeros((lat, lat), dtype=bool)
    r0, c0 = (int(x) for x in rng.integers(lat, size=2))
    seen[r0, c0] = True
    grid[2 * r0, 2 * c0] = SPACE
    stack = [(r0, c0)]
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
    draws = rng.integers(24, size=lat * lat * 2).tolist()
    orders = [
        (a, b, c, d)
        for a in range(4)
        for b in range(4)
        for c in range(4)
        for d in range(4)
        if len({a, b, c, d}) == 4
    ]
    k = 0
    while stack:
        r, c = stack[-1]
        order = orders[draws[k % len(draws)]]
        k += 1
        for j in order:
            dr, dc = steps[j]
            nr, nc = r + dr, c + dc
            if 0 <= nr < lat and 0 <= nc < lat and not seen[nr, nc]:
                seen[nr, nc] = True
                grid[2 * nr, 2 * nc] = SPACE
                grid[r + nr, c + nc] = SPACE  # the wall between (2r,2c) and (2nr,2nc)
                stack.append((nr, nc))
                break
        else:
            stack.pop()
    opened = (rng.random((size, size)) < open_prob) & (grid == WALL)
    grid[opened] = SPACE
    return grid.reshape(-1)


def _bfs(passable: list[bool], size: int, src: int) -> tuple[list[int], list[int]]:
    """Distances (-1 unreachable) and shortest-path counts capped at 2 from ``src``."""
    nbs = _neighbours(size)
    dist = [-1] * (size * size)
    ways = [0] * (size * size)
    dist[src], ways[src] = 0, 1
    q = deque([src])
    while q:
        u = q.popleft()
        du, wu = dist[u] + 1, ways[u]
        for v in nbs[u]:
            if passable[v]:
                if dist[v] < 0:
                    dist[v], ways[v] = du, wu
                    q.append(v)
                elif dist[v] == du and ways[v] < 2:
                    ways[v] = min(2, ways[v] + wu)
    return dist, ways


def _endpoints(a: np.ndarray) -> tuple[int, int]:
    starts, goals = np.flatnonzero(a == START), np.flatnonzero(a == GOAL)
    if starts.size != 1 or goals.size != 1:
        raise ValueError(
            f"a maze needs exactly one start (3) and one goal (4); got {starts.size} and "
            f"{goals.size}"
        )
    return int(starts[0]), int(goals[0])


def shortest_path_length(grid: np.ndarray, size: int) -> int:
    """Moves on a shortest start-to-goal path through non-wall cells, or -1 if none."""
    a = _flat(grid, size)
    s, g = _endpoints(a)
    dist, _ = _bfs([v not in (WALL, PAD) for v in a.tolist()], size, s)
    return dist[g]


def count_shortest_paths(grid: np.ndarray, size: int) -> int:
    """The exact number of distinct shortest start-to-goal paths (0 if unreachable)."""
    a = _flat(grid, size)
    s, g = _endpoints(a)
    passable = [v not in (WALL, PAD) for v in a.tolist()]
    dist, _ = _bfs(passable, size, s)
    if dist[g] < 0:
        return 0
    nbs = _neighbours(size)
    ways = [0] * (size * size)
    ways[s] = 1
    for u in sorted((v for v in range(size * size) if dist[v] >= 0), key=dist.__getitem__):
        for v in nbs[u]:
            if dist[v] == dist[u] + 1:
                ways[v] += ways[u]
    return ways[g]


def _path_to(dist: list[int], size: int, goal: int) -> list[int]:
    """Cells strictly between start and ``goal`` on one shortest path, walking back."""
    nbs = _neighbours(size)
    cells, u = [], goal
    while dist[u] > 1:
        u = next(v for v in nbs[u] if dist[v] == dist[u] - 1)
        cells.append(u)
    return cells


def canonical(grid: np.ndarray, size: int) -> np.ndarray:
    """The lexicographically smallest of a maze's 8 dihedral images: equal for a maze and all
    its augmentations, so a held-out maze that is one of them is caught (leak safety)."""
    images = np.stack([dihedral(grid, k, size) for k in range(8)])  # (8, size*size)
    order = np.lexsort(images.T[::-1])
    return images[order[0]]


def leaks(train: np.ndarray, evaluation: np.ndarray, size: int) -> list[int]:
    """Indices of ``evaluation`` mazes that are dihedral images of a ``train`` maze."""
    seen = {canonical(x, size).tobytes() for x in np.asarray(train)}
    return [i for i, x in enumerate(np.asarray(evaluation)) if canonical(x, size).tobytes() in seen]


def _one(
    size: int, min_path_len: int, open_prob: float, ss: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(ss)
    for _ in range(_MAX_MAZES):
        grid = carve(size, rng, open_prob)
        passable = (grid == SPACE).tolist()
        free = np.flatnonzero(grid == SPACE)
        for start in rng.choice(free, size=min(_STARTS_PER_MAZE, free.size), replace=False):
            dist, ways = _bfs(passable, size, int(start))
            ok = [v for v in range(size * size) if dist[v] > min_path_len and ways[v] == 1]
            if ok:
                goal = ok[int(rng.integers(len(ok)))]
                inp = grid.copy()
                inp[start], inp[goal] = START, GOAL
                tgt = inp.copy()
                tgt[_path_to(dist, size, goal)] = PATH
                return inp, tgt, canonical(inp, size)
    raise RuntimeError(
        f"no {size}x{size} maze with a unique shortest path longer than {min_path_len} in "
        f"{_MAX_MAZES} draws; lower min_path_len or open_prob"
    )


def generate(
    n: int,
    size: int,
    min_path_len: int,
    seed: int,
    workers: int | None = None,
    open_prob: float = OPEN_PROB,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` mazes, no two dihedral images of each other: ``(inputs, targets)``,
    each int8 ``(n, size*size)``.

    Every maze has a unique shortest start-to-goal path of more than ``min_path_len`` moves.
    Sample ``i`` comes from ``SeedSequence(seed, spawn_key=(i, attempt))``, so the result
    depends only on the arguments, not on ``workers`` (default ``os.cpu_count()``).
    """
    from ponderkit import datacache

    if min_path_len >= size * size // 2:
        raise ValueError(
            f"min_path_len={min_path_len} is out of reach for size {size}; "
            f"use less than about size*size/4 (Maze-Hard: size 30, min_path_len 110)"
        )
    if n == 0:
        empty = np.zeros((0, size * size), dtype=np.int8)
        return empty, empty.copy()
    make = functools.partial(_one, size, min_path_len, open_prob)
    inputs, targets, _ = datacache.generate_distinct(make, n, seed, workers, key_field=2)
    return inputs, targets


def is_valid_path(inputs: np.ndarray, prediction: np.ndarray, size: int) -> bool:
    """True if ``prediction`` marks one simple 4-connected start-to-goal path on open cells.

    Every cell not marked 5 must equal the input; cells marked 5 must be spaces in the input;
    in the set {start, goal, cells marked 5} start and goal have exactly one neighbour, every
    other cell exactly two, and the set is connected.
    """
    a, p = _flat(inputs, size), _flat(prediction, size)
    try:
        s, g = _endpoints(a)
    except ValueError:
        return False
    marked = p == PATH
    if not np.array_equal(p[~marked], a[~marked]) or not np.all(a[marked] == SPACE):
        return False
    on = set(np.flatnonzero(marked).tolist()) | {s, g}
    nbs = _neighbours(size)
    for u in on:
        deg = sum(1 for v in nbs[u] if v in on)
        if deg != (1 if u in (s, g) else 2):
            return False
    seen, stack = {s}, [s]
    while stack:
        u = stack.pop()
        for v in nbs[u]:
            if v in on and v not in seen:
                seen.add(v)
                stack.append(v)
    return len(seen) == len(on)


def is_shortest_path(inputs: np.ndarray, prediction: np.ndarray, size: int) -> bool:
    """True if ``prediction`` is a valid path (see :func:`is_valid_path`) of shortest length."""
    if not is_valid_path(inputs, prediction, size):
        return False
    moves = int(np.count_nonzero(_flat(prediction, size) == PATH)) + 1
    return moves == shortest_path_length(inputs, size)


@functools.cache
def _dihedral_perms(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (8, size*size): forward permutations and their inverses."""
    idx = np.arange(size * size).reshape(size, size)
    fwd = np.stack([np.rot90(idx if k < 4 else idx.T, k % 4).reshape(-1) for k in range(8)])
    inv = np.argsort(fwd, axis=1)
    fwd.flags.writeable = inv.flags.writeable = False
    return fwd, inv


def _apply(grid_batch: np.ndarray, k: int | np.ndarray, size: int, table: np.ndarray) -> np.ndarray:
    g = np.asarray(grid_batch)
    if g.shape[-1] != size * size:
        raise ValueError(f"expected last dimension {size * size}, got {g.shape}")
    ks = np.asarray(k)
    if np.any((ks < 0) | (ks > 7)):
        raise ValueError(f"dihedral k must be in 0..7, got {k!r}")
    if ks.ndim == 0:
        return g[..., table[int(ks)]]
    g2 = g.reshape(-1, size * size)
    if ks.shape != (g2.shape[0],):
        raise ValueError(f"per-sample k needs shape ({g2.shape[0]},), got {ks.shape}")
    return np.take_along_axis(g2, table[ks], axis=1).reshape(g.shape)


def dihedral(grid_batch: np.ndarray, k: int | np.ndarray, size: int) -> np.ndarray:
    """Apply dihedral transform ``k`` (0-3: rotations by k*90 degrees; 4-7: transpose then
    rotate) to ``(size*size,)`` or ``(N, size*size)`` grids; ``k`` is an int or one per row."""
    return _apply(grid_batch, k, size, _dihedral_perms(size)[0])


def dihedral_inverse(grid_batch: np.ndarray, k: int | np.ndarray, size: int) -> np.ndarray:
    """Undo :func:`dihedral`: ``dihedral_inverse(dihedral(g, k, s), k, s) == g``."""
    return _apply(grid_batch, k, size, _dihedral_perms(size)[1])


def augment(
    inputs: np.ndarray, targets: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply one random dihedral transform per sample to inputs and targets alike.

    Returns ``(inputs, targets, k)``; ``dihedral_inverse(..., k, size)`` maps predictions back.
    """
    x, y = np.asarray(inputs), np.asarray(targets)
    n = x.reshape(-1, size * size).shape[0]
    k = rng.integers(8, size=n)
    if x.ndim == 1:
        return dihedral(x, int(k[0]), size), dihedral(y, int(k[0]), size), k[0]
    return dihedral(x, k, size), dihedral(y, k, size), k
