"""Time the built-in data generators and measure the Sudoku difficulty distribution.

Usage::

    python benchmarks/datagen.py                 # 1000 of each, all cores
    python benchmarks/datagen.py --n 200 --workers 2 --dist 1000

Prints a table and writes ``benchmarks/results/datagen.json``.  The ``guesses`` distribution
is measured on random minimal 9x9 puzzles (the "medium" tier with no upper bound), which is
what ``sudoku_gen.HARD_MIN_GUESSES`` was chosen from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from ponderkit.plugins.tasks import maze_gen, sudoku_gen

RESULTS = Path(__file__).resolve().parent / "results" / "datagen.json"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(n: int, workers: int, dist_n: int, seed: int) -> dict:
    cases = [
        ("sudoku 9x9 hard", lambda: sudoku_gen.generate(n, 9, "hard", seed, workers)),
        ("sudoku 9x9 medium", lambda: sudoku_gen.generate(n, 9, "medium", seed, workers)),
        ("sudoku 9x9 easy", lambda: sudoku_gen.generate(n, 9, "easy", seed, workers)),
        ("sudoku 4x4 hard", lambda: sudoku_gen.generate(n, 4, "hard", seed, workers)),
        ("maze 30x30 hard (>110)", lambda: maze_gen.generate(n, 30, 110, seed, workers)),
        ("maze 11x11 (>12)", lambda: maze_gen.generate(n, 11, 12, seed, workers)),
    ]
    rows = []
    for name, fn in cases:
        out, secs = _timed(fn)
        row = {"case": name, "n": n, "seconds": round(secs, 3), "ms_per_item": 1000 * secs / n}
        if name.startswith("sudoku"):
            clues = (out[0] != 0).sum(axis=1)
            row["clues_median"] = float(np.median(clues))
            row["guesses_median"] = float(np.median(out[2]))
        else:
            row["path_len_median"] = float(np.median((out[1] == maze_gen.PATH).sum(axis=1) + 1))
        rows.append(row)
        print(f"  {name:26s} {n:6d} {secs:9.1f} s {row['ms_per_item']:9.1f} ms/item", flush=True)

    (p, _, g), secs = _timed(
        lambda: sudoku_gen.generate(dist_n, 9, "medium", seed + 1, workers, min_guesses=10**9)
    )
    qs = [10, 25, 50, 60, 70, 75, 80, 90, 95, 99]
    thr = sudoku_gen.HARD_MIN_GUESSES[9]
    dist = {
        "n_minimal_puzzles": dist_n,
        "seconds": round(secs, 3),
        "percentiles": {str(q): float(np.percentile(g, q)) for q in qs},
        "share_guesses_0": float(np.mean(g == 0)),
        "share_at_or_above": {str(t): float(np.mean(g >= t)) for t in (2, 6, 10, 20, 30, 50)},
        "hard_threshold": thr,
        "clues_median": float(np.median((p != 0).sum(axis=1))),
        "max_guesses": int(g.max()),
    }
    print(
        f"\n  guesses over {dist_n} random minimal 9x9 puzzles: "
        + ", ".join(f"p{q}={v:g}" for q, v in dist["percentiles"].items())
        + f"; share with 0: {dist['share_guesses_0']:.2f}; share >= {thr} (hard): "
        + f"{np.mean(g >= thr):.3f}"
    )
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workers": workers,
        "seed": seed,
        "results": rows,
        "sudoku_guesses_distribution": dist,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="items per case (default 1000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes")
    ap.add_argument("--dist", type=int, default=2000, help="minimal puzzles for the histogram")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    print(f"data generation, {args.workers} worker(s), {os.cpu_count()} CPU(s)")
    print(f"  {'case':26s} {'n':>6s} {'time':>11s} {'per item':>14s}")
    report = run(args.n, args.workers, args.dist, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
