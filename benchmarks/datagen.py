"""Time the built-in data generators and measure each Sudoku tier's search effort.

Usage::

    python benchmarks/datagen.py                        # 1000 of each, all cores
    python benchmarks/datagen.py --n 200 --n-extreme 40 --workers 2 --dist 1000

Prints a table (items/s; Sudoku clues and guesses: median and p90, mean guesses) and the
``guesses`` histogram of each tier, and writes ``benchmarks/results/datagen.json``.  The
``guesses`` percentiles of random minimal 9x9 puzzles (the "medium" tier with no upper bound)
are what ``sudoku_gen.HARD_MIN_GUESSES`` was chosen from.  ``--reference FILE`` (one
81-character puzzle per line, ``.`` or ``0`` for blanks, e.g. a copy of magictour_top1465)
adds a row measured with the same guess counter, for comparison with an outside collection.
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
BINS = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 10**9]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def effort(puzzles: np.ndarray, guesses: np.ndarray) -> dict:
    clues = (puzzles != 0).sum(axis=1)
    hist, _ = np.histogram(guesses, bins=BINS)
    labels = [
        f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(BINS[:-1], BINS[1:], strict=True)
    ]
    labels[-1] = f">={BINS[-2]}"
    return {
        "clues_median": float(np.median(clues)),
        "clues_p90": float(np.percentile(clues, 90)),
        "guesses_median": float(np.median(guesses)),
        "guesses_p90": float(np.percentile(guesses, 90)),
        "guesses_mean": float(np.mean(guesses)),
        "guesses_histogram": {k: int(v) for k, v in zip(labels, hist, strict=True) if v},
    }


def load_reference(path: Path) -> np.ndarray:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if len(line) >= 81 and not line.startswith("#"):
            rows.append([0 if ch in ".0" else int(ch) for ch in line[:81]])
    return np.array(rows, dtype=np.int8)


def run(n: int, n_extreme: int, workers: int, dist_n: int, seed: int, reference: Path | None):
    cases = [
        (
            "sudoku 9x9 extreme",
            n_extreme,
            lambda k: sudoku_gen.generate(k, 9, "extreme", seed, workers),
        ),
        ("sudoku 9x9 hard", n, lambda k: sudoku_gen.generate(k, 9, "hard", seed, workers)),
        ("sudoku 9x9 medium", n, lambda k: sudoku_gen.generate(k, 9, "medium", seed, workers)),
        ("sudoku 9x9 easy", n, lambda k: sudoku_gen.generate(k, 9, "easy", seed, workers)),
        ("sudoku 6x6 hard", n, lambda k: sudoku_gen.generate(k, 6, "hard", seed, workers)),
        ("sudoku 6x6 medium", n, lambda k: sudoku_gen.generate(k, 6, "medium", seed, workers)),
        (
            "sudoku 4x4 hard",
            n,
            lambda k: sudoku_gen.generate(k, 4, "hard", seed, workers, distinct="exact"),
        ),
        ("maze 30x30 hard (>110)", n, lambda k: maze_gen.generate(k, 30, 110, seed, workers)),
        ("maze 15x15 (>30)", n, lambda k: maze_gen.generate(k, 15, 30, seed, workers)),
        ("maze 9x9 (>12)", n, lambda k: maze_gen.generate(k, 9, 12, seed, workers)),
    ]
    rows = []
    head = f"  {'case':24s} {'n':>5s} {'items/s':>8s}  clues p50/p90  guesses p50/p90/mean"
    print(head, flush=True)
    for name, k, fn in cases:
        if k <= 0:
            continue
        out, secs = _timed(lambda fn=fn, k=k: fn(k))
        row = {"case": name, "n": k, "seconds": round(secs, 3), "items_per_s": k / secs}
        if name.startswith("sudoku"):
            row.update(effort(out[0], out[2]))
            tail = (
                f"  {row['clues_median']:5g} / {row['clues_p90']:<5g}  "
                f"{row['guesses_median']:5g} / {row['guesses_p90']:g} / {row['guesses_mean']:.1f}"
            )
        else:
            row["path_len_median"] = float(np.median((out[1] == maze_gen.PATH).sum(axis=1) + 1))
            tail = f"  path length median {row['path_len_median']:g}"
        rows.append(row)
        print(f"  {name:24s} {k:5d} {row['items_per_s']:8.2f}{tail}", flush=True)
    if reference is not None:
        puzzles = load_reference(reference)
        guesses = np.array([sudoku_gen.solve(p, 9).guesses for p in puzzles])
        row = {"case": f"reference {reference.name}", "n": len(puzzles), **effort(puzzles, guesses)}
        rows.append(row)
        print(
            f"  {row['case'][:24]:24s} {len(puzzles):5d} {'':>8s}  {row['clues_median']:5g} / "
            f"{row['clues_p90']:<5g}  {row['guesses_median']:5g} / {row['guesses_p90']:g} / "
            f"{row['guesses_mean']:.1f}"
        )
    print("\n  guesses histograms:")
    for row in rows:
        if "guesses_histogram" in row:
            hist = ", ".join(f"{k}: {v}" for k, v in row["guesses_histogram"].items())
            print(f"  {row['case']:24s} {hist}")

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
        "share_at_or_above": {str(t): float(np.mean(g >= t)) for t in (2, 6, 10, 12, 20, 30, 50)},
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
    ap.add_argument("--n-extreme", type=int, default=200, help="extreme puzzles (default 200)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="processes")
    ap.add_argument("--dist", type=int, default=2000, help="minimal puzzles for the percentiles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", type=Path, help="a puzzle file measured with the same counter")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    print(f"data generation, {args.workers} worker(s), {os.cpu_count()} CPU(s)")
    report = run(args.n, args.n_extreme, args.workers, args.dist, args.seed, args.reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
