"""A grid's wall time one run at a time vs packed (`ponderkit ablate --jobs K`), GPU or CPU.

The grid: one experiment (default the TRM of `experiments/trm_sudoku6_cpu.yaml`, moved to the
device) x N seeds, a fixed number of optimizer steps each. It runs twice into fresh
directories, `--jobs 1` and `--jobs K`; on one GPU the second packs up to K runs onto it by
their probed memory (see `ponderkit.lab.packing`), on the CPU it shares the cores. Both grids
must train the same thing: the final exact accuracies are compared run by run.

    python benchmarks/grid_packing.py --seeds 6 --steps 1500 --jobs 6          # GPU, ~30 s a run
    python benchmarks/grid_packing.py --smoke                                   # CPU, seconds

Prints a table and writes benchmarks/results/grid_packing[_smoke].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def ablation_text(base: Path, seeds: int, steps: int, overrides: dict) -> str:
    lines = [f"name: grid_packing\nbase: {base.resolve().as_posix()}", "overrides:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in overrides.items()]
    lines += [f"seeds: {seeds}", f"budget: {{steps: {steps}}}"]
    return "\n".join(lines) + "\n"


def run_grid(file: Path, out: Path, jobs: int) -> tuple[float, list[str]]:
    cmd = [sys.executable, "-P", "-m", "ponderkit", "ablate", str(file), "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run([*cmd, "--jobs", str(jobs)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"ablate --jobs {jobs} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return wall, done.stdout.splitlines()


def final_exact(out: Path) -> dict[str, float]:
    found = {}
    for metrics in sorted(out.glob("*/seed*/metrics.jsonl")):
        evals = [json.loads(x) for x in metrics.read_text().splitlines() if "eval/exact_acc" in x]
        found[f"{metrics.parent.parent.name}/{metrics.parent.name}"] = evals[-1]["eval/exact_acc"]
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "experiments" / "trm_sudoku6_cpu.yaml"))
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny: 2 runs of 10 steps")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    overrides = {
        "train.device": "cuda" if cuda else "cpu",
        "train.max_time_s": None,  # the step budget alone decides
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.log_every": 50,
        "train.threads": 1,
    }
    if args.smoke:
        args.seeds, args.steps, args.jobs = 2, 10, 2
        overrides.update({"task.train_size": 200, "task.eval_size": 50, "train.log_every": 5})
    name = "grid_packing_smoke" if args.smoke else "grid_packing"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "grid.yaml"
        file.write_text(ablation_text(Path(args.config), args.seeds, args.steps, overrides))
        rows = {}
        for jobs in (1, args.jobs):
            out = Path(tmp) / f"jobs{jobs}"
            wall, log = run_grid(file, out, jobs)
            log = [line.replace(tmp, "<grid>") for line in log]  # no machine paths
            rows[jobs] = {"wall_s": wall, "exact_acc": final_exact(out), "log": log}
            print(f"--jobs {jobs}: {wall:.1f} s")
    one, packed = rows[1], rows[args.jobs]
    same = one["exact_acc"] == packed["exact_acc"]
    device = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    result = {
        "device": device,
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "runs": args.seeds,
        "steps_per_run": args.steps,
        "jobs": args.jobs,
        "one_at_a_time_s": one["wall_s"],
        "packed_s": packed["wall_s"],
        "speedup": one["wall_s"] / packed["wall_s"],
        "same_exact_acc_per_run": same,
        "exact_acc": {"one_at_a_time": one["exact_acc"], "packed": packed["exact_acc"]},
        "packed_log": packed["log"],
    }
    table = "\n".join(
        [
            f"Grid: {args.seeds} runs of `{result['config']}` x {args.steps} steps on {device}",
            "",
            "| grid | wall time (s) | speed-up |",
            "|---|---|---|",
            f"| one at a time (`--jobs 1`) | {one['wall_s']:.1f} | 1.00 |",
            f"| packed (`--jobs {args.jobs}`) | {packed['wall_s']:.1f} | {result['speedup']:.2f} |",
            "",
            f"Final exact accuracy identical run by run: {same}.",
        ]
    )
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
