"""Write a generated Sudoku or maze set to disk for ``task/files`` or other tools.

``python -m ponderkit.plugins.tasks.export sudoku --size 9 --difficulty extreme --train 1000
--test 200 --out data/sudoku9x`` writes ``train/`` and ``test/`` in the TRM/HRM builder layout
(``--format npz`` writes ``train.npz`` and ``test.npz``).  Tokens are ponderkit's (and TRM's):
Sudoku 1 = blank, d + 1 = digit d; mazes 1 wall, 2 space, 3 start, 4 goal, 5 path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from . import maze_gen, sudoku_gen
from .file_formats import write_trm_split


def generate(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, int]:
    n = args.train + args.test
    if args.kind == "sudoku":
        p, s, _ = sudoku_gen.generate(
            n, args.size, args.difficulty, args.seed, args.workers, distinct=args.distinct
        )
        return p.astype(np.int64) + 1, s.astype(np.int64) + 1, args.size + 2
    x, y = maze_gen.generate(n, args.size, args.min_path_len, args.seed, args.workers)
    return x.astype(np.int64), y.astype(np.int64), maze_gen.VOCAB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["sudoku", "maze"])
    ap.add_argument("--size", type=int, default=9)
    ap.add_argument("--difficulty", default="hard", choices=sudoku_gen.DIFFICULTIES)
    ap.add_argument("--min-path-len", type=int, default=12)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--format", choices=["trm", "npz"], default="trm")
    ap.add_argument(
        "--distinct",
        choices=["canonical", "exact"],
        default="canonical",
        help="Sudoku: no two puzzles equal up to augmentation (default), or only not identical "
        "(4x4 has about 40 minimal puzzles up to augmentation)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    x, y, vocab = generate(args)
    parts = {"train": slice(0, args.train), "test": slice(args.train, None)}
    for split, part in parts.items():
        if args.format == "trm":
            write_trm_split(args.out / split, x[part], y[part], vocab)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            np.savez(args.out / f"{split}.npz", inputs=x[part], labels=y[part])
    print(f"wrote {args.train} train and {args.test} test examples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
