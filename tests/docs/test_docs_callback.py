"""docs/plugins.md's callback, followed verbatim: it registers, its hook runs at every step
with the arguments it names, and a run logs what it added."""

from __future__ import annotations

import json

from ponderkit.app.cli import main

EXPERIMENT = """
name: counted
task: {name: sort, length: 4, values: 5, eval_size: 16}
model:
  d_model: 16
  recursion: {name: stacked, layers: 1, block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: swiglu}}
  halting: fixed
callbacks: [count_steps]
train: {steps: 3, batch_size: 8, log_every: 1, eval_every: 0, threads: 1}
"""


def test_the_documented_callback_runs_at_every_step(doc_files, tmp_path, monkeypatch):
    files = doc_files("docs/plugins.md", "Callbacks are pluggy hooks")
    (tmp_path / "count_steps.py").write_text(files["count_steps.py"])
    (tmp_path / "counted.yaml").write_text(EXPERIMENT.lstrip("\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    run = tmp_path / "run"
    args = ["run", str(tmp_path / "counted.yaml"), "--out", str(run), "--quiet"]
    assert main([*args, "--plugin", "count_steps"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step_seen"] for r in records if "step_seen" in r] == [1.0, 2.0, 3.0]
