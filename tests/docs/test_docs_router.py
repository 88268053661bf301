"""docs/plugins.md's "plugin contract" router, followed verbatim: its conformance test passes and it
trains inside dynmoe with exact and static dispatch, its aux loss part of the training loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer


@pytest.fixture
def package(tmp_path, monkeypatch, doc_files) -> Path:
    files = doc_files("docs/plugins.md", "The plugin contract")
    assert set(files) == {"top_two_router.py", "test_top_two_router.py", "top_two_sort.yaml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_docs_router_passes_its_own_conformance_test(package):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_top_two_router.py"],
        cwd=package,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package), "PATH": str(Path(sys.executable).parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


@pytest.mark.parametrize("dispatch", ["exact", "static"])
def test_the_docs_router_trains_inside_dynmoe(package, dispatch):
    registry = Plugins(["top_two_router"], autoload=False).registry
    overrides = [
        f"model.recursion.block.ffn.dispatch={dispatch}",
        "train.steps=60",
        "train.log_every=20",
        "train.eval_every=60",
        "train.threads=1",
    ]
    config = load_experiment(package / "top_two_sort.yaml", overrides, registry=registry).config
    Trainer(config, registry, run_dir=package, quiet=True).fit()
    records = [json.loads(line) for line in (package / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:  # fixed halting: the loss is the task loss plus the router's aux loss
        assert r["router/balance"] > 0
        assert abs(r["loss"] - r["lm_loss"] - r["router/balance"]) < 1e-5
    assert records[-1]["lm_loss"] < 0.9 * records[0]["lm_loss"]  # it learns
