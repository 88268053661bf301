"""benchmarks/curves.py: learning curves of unfinished grids, compared at equal steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import curves  # noqa: E402


def write_run(root: Path, key: str, evals: dict[int, float]) -> None:
    run = root / key
    run.mkdir(parents=True)
    lines = [{"step": s, "loss": 2.0 - s / 1000, "eval/raw/token_acc": v} for s, v in evals.items()]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_means_only_where_every_run_of_a_variant_reached(tmp_path):
    write_run(tmp_path, "a/seed0", {200: 0.10, 400: 0.30})
    write_run(tmp_path, "a/seed1", {200: 0.20, 400: 0.50})
    write_run(tmp_path, "b/seed0", {200: 0.40, 400: 0.60})
    write_run(tmp_path, "b/seed1", {200: 0.30})  # stopped early
    runs = curves.read_runs(tmp_path)
    assert set(runs) == {"a", "b"} and set(runs["b"]) == {"b/seed0", "b/seed1"}
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")[1:]]
        for line in curves.table(runs, "eval/raw/token_acc")
        if line.startswith("| `")
    }
    assert rows["`a` mean (n=2)"] == ["15.00", "40.00"]
    assert rows["`b` mean (n=2)"] == ["35.00", ""]  # seed 1 never reached step 400
    assert rows["`b/seed1`"] == ["30.00", ""]
    assert (curves.plot(runs, tmp_path / "c.png") or tmp_path / "c.png").exists()
