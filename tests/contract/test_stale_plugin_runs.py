"""A run records a digest of each plugin's sources (meta.json); `ablate` refuses a finished
run whose plugin was edited since, in one line, instead of counting it as the edited code's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ponderkit.app.cli import main

HERE = Path(__file__).resolve().parent

ABLATION = "name: abl\nbase: base.yaml\nvariants:\n  only: {}\nseeds: 1\nbudget: {steps: 1}\n"


def test_ablate_refuses_a_run_whose_plugin_was_edited(tmp_path, monkeypatch, capsys, tiny_sort):
    plugin = tmp_path / "plugin_under_edit.py"  # a plugin module the user is working on
    shutil.copy(HERE / "third_party_router.py", plugin)
    ffn = "{name: dynmoe, experts: 4, hidden: 8, router: top1_no_counts}"
    train = "{steps: 1, batch_size: 8, log_every: 1, eval_every: 1, threads: 1}"
    (tmp_path / "base.yaml").write_text(tiny_sort("base", ffn, train))
    (tmp_path / "abl.yaml").write_text(ABLATION)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.chdir(tmp_path)
    args = ["ablate", "abl.yaml", "--out", "out", "--plugin", "plugin_under_edit"]
    # train the one run in this process, as ablate's worker does (the parent's report and
    # processes are not what this test is about)
    assert main([*args, "--worker", "--only", "only/seed0"]) == 0
    run = tmp_path / "out" / "only" / "seed0"
    recorded = json.loads((run / "meta.json").read_text())["plugin_sources"]
    assert len(recorded["plugin_under_edit"]) == 16
    assert main([*args, "--worker", "--only", "only/seed0"]) == 0  # unchanged: reused
    assert json.loads((run / "meta.json").read_text())["plugin_sources"] == recorded
    capsys.readouterr()
    plugin.write_text(plugin.read_text().replace("argmax(-1)", "argmin(-1)"))  # an edit
    assert main([*args, "--only", "only/seed0"]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err == (
        "error: only/seed0: out/only/seed0 was trained with plugin plugin_under_edit as it was "
        "before its source changed; move the run away to train it again with the plugin as it "
        "is now"
    )
    assert json.loads((run / "meta.json").read_text())["plugin_sources"] == recorded
