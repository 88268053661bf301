"""The task ladder: how long TRM takes to reach 50% and 90% exact accuracy on each rung.

Usage::

    python benchmarks/ladder.py --rungs sudoku4 sudoku6 maze9 --device cpu --max-time 180
    python benchmarks/ladder.py --device cuda --max-time 1200        # every rung, on a GPU

Each rung is an experiment plus overrides.  Its data set is generated (and cached) before the
clock starts; the run evaluates every ``--eval-every`` steps and the table gives the training
seconds (evaluation included) and step at the first evaluation reaching 50% and 90% exact
accuracy.  Writes ``benchmarks/results/ladder-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from ponderkit import BuildContext, Plugins, load_experiment

ROOT = Path(__file__).resolve().parent.parent
EXP = ROOT / "experiments"
RUNGS: dict[str, tuple[str, list[str]]] = {
    "sort": ("sort_demo.yaml", []),
    "sudoku4": ("trm_sudoku4_cpu.yaml", ["train.steps=2000", "train.batch_size=64"]),
    "sudoku6": ("trm_sudoku6_cpu.yaml", ["train.batch_size=64"]),
    "sudoku6-hard": ("trm_sudoku6_cpu.yaml", ["task.difficulty=hard"]),
    "maze9": ("trm_maze9_cpu.yaml", []),
    "maze15": ("trm_maze9_cpu.yaml", ["task.size=15", "task.min_path_len=30"]),
    "sudoku9-medium": ("trm_sudoku_mlp.yaml", ["task.difficulty=medium"]),
    "sudoku9-hard": ("trm_sudoku_mlp.yaml", []),
    "sudoku9-extreme": ("trm_sudoku_mlp.yaml", ["task.difficulty=extreme"]),
    "maze30": ("trm_maze.yaml", []),
}


def prepare(path: Path, overrides: list[str]) -> None:
    """Generate and cache the rung's data set so that generation is not timed."""
    plugins = Plugins()
    exp = load_experiment(path, overrides, registry=plugins.registry)
    task = BuildContext(plugins.registry, seed=exp.config.seed).build(exp.config.task)
    getattr(task, "data", None)


def crossing(records: list[dict], bar: float) -> dict | None:
    for r in records:
        if r.get("eval/exact_acc", -1.0) >= bar:
            return {"step": r["step"], "seconds": round(r["elapsed_s"], 1)}
    return None


def run_rung(name: str, args: argparse.Namespace, out: Path) -> dict:
    file, overrides = RUNGS[name]
    overrides = [
        *overrides,
        f"train.device={args.device}",
        f"train.max_time_s={args.max_time}",
        f"train.eval_every={args.eval_every}",
        f"train.log_every={args.eval_every}",
        *([f"train.threads={args.threads}"] if args.device == "cpu" else []),
    ]
    prepare(EXP / file, overrides)
    run_dir = out / name
    cmd = [sys.executable, "-m", "ponderkit", "run", str(EXP / file), "--out", str(run_dir)]
    subprocess.run([*cmd, "--quiet", *overrides], check=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/exact_acc" in r]
    last = evals[-1] if evals else {}
    return {
        "rung": name,
        "experiment": file,
        "overrides": overrides,
        "exact_50": crossing(evals, 0.5),
        "exact_90": crossing(evals, 0.9),
        "final_exact": last.get("eval/exact_acc"),
        "final_step": last.get("step"),
        "seconds": round(last.get("elapsed_s", 0.0), 1),
    }


def _cell(x: dict | None) -> str:
    return f"{x['seconds']:.0f} s (step {x['step']})" if x else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rungs", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-time", type=float, default=180.0, help="seconds per rung")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="run directories (default: temp)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ladder-"))
    rows = []
    print(f"  {'rung':16s} {'to 50% exact':>20s} {'to 90% exact':>20s} {'final exact':>12s}")
    for name in args.rungs:
        row = run_rung(name, args, out)
        rows.append(row)
        final = f"{row['final_exact']:.3f} @ {row['final_step']}" if evals_ok(row) else "-"
        print(
            f"  {name:16s} {_cell(row['exact_50']):>20s} {_cell(row['exact_90']):>20s} "
            f"{final:>12s}",
            flush=True,
        )
    result = {
        "device": args.device,
        "threads": args.threads,
        "max_time_s": args.max_time,
        "machine": platform.platform(),
        "rungs": rows,
    }
    path = ROOT / "benchmarks" / "results" / f"ladder-{args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def evals_ok(row: dict) -> bool:
    return row["final_exact"] is not None


if __name__ == "__main__":
    main()
