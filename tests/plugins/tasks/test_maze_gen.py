"""Maze generator: path lengths against an independent BFS, path checks, dihedral transforms."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from ponderkit.plugins.tasks import maze_gen

WALL, SPACE, START, GOAL, PATH = 1, 2, 3, 4, 5

# --- an independent reference (shares no code with the module under test) ---


def _ref_bfs(grid, size: int) -> tuple[int, int]:
    """(shortest distance in moves, number of shortest paths) on a 2-D grid, -1/0 if none."""
    m = np.asarray(grid).reshape(size, size)
    (sr,), (sc,) = np.nonzero(m == START)
    (gr,), (gc,) = np.nonzero(m == GOAL)
    dist = np.full((size, size), -1)
    count = np.zeros((size, size), dtype=object)
    dist[sr, sc], count[sr, sc] = 0, 1
    q = deque([(sr, sc)])
    while q:
        r, c = q.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < size and 0 <= nc < size and m[nr, nc] != WALL:
                if dist[nr, nc] == -1:
                    dist[nr, nc] = dist[r, c] + 1
                    q.append((nr, nc))
                if dist[nr, nc] == dist[r, c] + 1:
                    count[nr, nc] += count[r, c]
    return int(dist[gr, gc]), int(count[gr, gc])


def _check(inputs, targets, size: int, min_len: int) -> None:
    for x, y in zip(inputs, targets, strict=True):
        assert set(np.unique(x).tolist()) <= {WALL, SPACE, START, GOAL}
        assert (x == START).sum() == 1 and (x == GOAL).sum() == 1
        dist, count = _ref_bfs(x, size)
        assert dist > min_len
        assert count == 1, "the shortest path must be unique"
        assert maze_gen.shortest_path_length(x, size) == dist
        assert maze_gen.count_shortest_paths(x, size) == 1
        assert np.array_equal(y[y != PATH], x[y != PATH])
        assert (y == PATH).sum() + 1 == dist
        assert maze_gen.is_valid_path(x, y, size) and maze_gen.is_shortest_path(x, y, size)


@pytest.fixture(scope="module")
def small():
    return maze_gen.generate(10, 11, 12, seed=0, workers=1)


@pytest.fixture(scope="module")
def hard30():
    return maze_gen.generate(3, 30, 110, seed=1, workers=1)


def test_small_mazes(small):
    x, y = small
    assert x.shape == y.shape == (10, 121) and x.dtype == y.dtype == np.int8
    _check(x, y, 11, 12)
    assert len({row.tobytes() for row in x}) == 10


def test_hard_mazes(hard30):
    x, y = hard30
    _check(x, y, 30, 110)
    assert (x == WALL).mean() < 0.6  # not a solid block: corridors and open cells


def test_mazes_have_loops(hard30):
    """Not only perfect mazes: the open-cell graph has cycles (edges > cells - 1)."""
    x = hard30[0][0].reshape(30, 30) != WALL
    cells = int(x.sum())
    edges = int((x[1:] & x[:-1]).sum() + (x[:, 1:] & x[:, :-1]).sum())
    assert edges > cells


def test_count_shortest_paths_open_room():
    g = np.full((5, 5), SPACE, dtype=np.int8)
    g[0, 0], g[2, 2] = START, GOAL
    assert maze_gen.shortest_path_length(g.reshape(-1), 5) == 4
    assert maze_gen.count_shortest_paths(g.reshape(-1), 5) == 6  # C(4, 2)
    g[1, :] = WALL
    assert maze_gen.shortest_path_length(g.reshape(-1), 5) == -1
    assert maze_gen.count_shortest_paths(g.reshape(-1), 5) == 0


def test_is_valid_path_rejects_broken_paths(small):
    x, y = small[0][0], small[1][0]
    size = 11
    assert maze_gen.is_valid_path(x, y, size)
    path = np.flatnonzero(y == PATH)
    walls = np.flatnonzero(x == WALL)
    # a gap
    gap = y.copy()
    gap[path[len(path) // 2]] = SPACE
    assert not maze_gen.is_valid_path(x, gap, size)
    # a path cell on a wall
    through = y.copy()
    through[walls[0]] = PATH
    assert not maze_gen.is_valid_path(x, through, size)
    # a changed wall
    changed = y.copy()
    changed[walls[0]] = SPACE
    assert not maze_gen.is_valid_path(x, changed, size)
    # a branch: a spur off the path onto a free space cell
    on = set(path.tolist())
    spur = None
    for u in path.tolist():
        r, c = divmod(u, size)
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            v = nr * size + nc
            if 0 <= nr < size and 0 <= nc < size and x[v] == SPACE and v not in on:
                spur = v
    assert spur is not None
    branch = y.copy()
    branch[spur] = PATH
    assert not maze_gen.is_valid_path(x, branch, size)
    # a prediction with nothing marked, or with the start removed
    assert not maze_gen.is_valid_path(x, x, size)
    nostart = y.copy()
    nostart[nostart == START] = SPACE
    assert not maze_gen.is_valid_path(x, nostart, size)


def test_valid_but_not_shortest():
    g = np.full((5, 5), SPACE, dtype=np.int8)
    g[0, 0], g[0, 4] = START, GOAL
    x = g.reshape(-1)
    detour = g.copy()
    detour[1, :] = PATH
    assert maze_gen.is_valid_path(x, detour.reshape(-1), 5)
    assert not maze_gen.is_shortest_path(x, detour.reshape(-1), 5)
    straight = g.copy()
    straight[0, 1:4] = PATH
    assert maze_gen.is_shortest_path(x, straight.reshape(-1), 5)


def test_dihedral_preserves_paths(small):
    x, y = small
    size = 11
    for k in range(8):
        tx, ty = maze_gen.dihedral(x, k, size), maze_gen.dihedral(y, k, size)
        for a, b, orig in zip(tx, ty, x, strict=True):
            assert maze_gen.is_shortest_path(a, b, size)
            assert maze_gen.shortest_path_length(a, size) == maze_gen.shortest_path_length(
                orig, size
            )
        assert np.array_equal(maze_gen.dihedral_inverse(tx, k, size), x)
    grid = np.arange(size * size)
    images = {maze_gen.dihedral(grid, k, size).tobytes() for k in range(8)}
    assert len(images) == 8
    assert np.array_equal(maze_gen.dihedral(grid, 0, size), grid)
    assert np.array_equal(
        maze_gen.dihedral(grid, 1, size).reshape(size, size), np.rot90(grid.reshape(size, size))
    )


def test_augment_per_sample(small):
    x, y = small
    ax, ay, k = maze_gen.augment(x, y, 11, np.random.default_rng(0))
    assert k.shape == (10,) and len(set(k.tolist())) > 1
    for i in range(10):
        assert np.array_equal(ax[i], maze_gen.dihedral(x[i], int(k[i]), 11))
        assert maze_gen.is_shortest_path(ax[i], ay[i], 11)
    assert np.array_equal(maze_gen.dihedral_inverse(ay, k, 11), y)


def test_determinism_and_workers(small):
    again = maze_gen.generate(10, 11, 12, seed=0, workers=2)
    other = maze_gen.generate(10, 11, 12, seed=1, workers=1)
    for a, b in zip(small, again, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(small[0], other[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_path_len"):
        maze_gen.generate(1, 5, 100, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        maze_gen.dihedral(np.zeros(25), 8, 5)


def test_leak_check_catches_planted_dihedral_images():
    x, _ = maze_gen.generate(12, 9, 12, seed=3, workers=1)
    train, evaluation = x[:6], x[6:].copy()
    assert maze_gen.leaks(train, evaluation, 9) == []
    rot = np.rot90(train[2].reshape(9, 9)).reshape(-1)
    flip = train[4].reshape(9, 9)[:, ::-1].reshape(-1)
    evaluation[1], evaluation[4] = rot, flip
    assert maze_gen.leaks(train, evaluation, 9) == [1, 4]
