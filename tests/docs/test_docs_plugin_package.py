"""docs/plugins.md's "A plugin by hand" section, followed verbatim in a temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_docs_plugin_package_installs_lists_and_runs(tmp_path, doc_files):
    files = doc_files("docs/plugins.md", "A plugin by hand")
    assert set(files) == {
        "ponderkit-parallel/pyproject.toml",
        "ponderkit-parallel/ponderkit_parallel.py",
        "ponderkit-parallel/parallel_sort.yaml",
    }
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body)
    site = tmp_path / "site"
    # `pip install ./ponderkit-parallel`, into a separate folder so the test venv stays clean
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            "./ponderkit-parallel",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", None)

    def ponderkit(*args: str) -> str:
        result = subprocess.run(
            [str(BIN / "ponderkit"), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = ponderkit("list", "block")
    assert re.search(
        r"parallel\s+Parallel residual block.*\[ponderkit-parallel:parallel\]", listing
    )
    assert "from ponderkit-parallel:parallel 0.1.0" in ponderkit("show", "block/parallel")
    assert ponderkit("validate", "ponderkit-parallel/parallel_sort.yaml").startswith("ok: ")
    out = ponderkit(
        "run",
        "ponderkit-parallel/parallel_sort.yaml",
        "--out",
        "run",
        "train.steps=20",
        "train.log_every=10",
        "train.eval_every=20",
    )
    assert "done:" in out
    meta = (tmp_path / "run" / "meta.json").read_text()
    assert "ponderkit-parallel:parallel" in meta
