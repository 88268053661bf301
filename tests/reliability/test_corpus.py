"""The size of the fault corpus, by category, counted from the case lists themselves (the
table in docs/reliability.md is this test's output: ``pytest -s`` prints it)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _cases(path: str) -> dict:
    return runpy.run_path(str(TESTS / path))


def corpus() -> dict[str, int]:
    bad = _cases("core/test_bad_inputs.py")
    cfg = _cases("reliability/test_config_faults.py")
    data = _cases("reliability/test_data_faults.py")
    fs = _cases("reliability/test_fs_faults.py")
    kill = _cases("reliability/test_kill9.py")
    n = len
    return {
        "config files and values": n(bad["CONFIG_CASES"]) + n(bad["FILE_CASES"])
        + 1 + n(cfg["CASES"]) + n(cfg["LONG_CASES"]) + 2 + 2,  # + run/ablate, file, 3000 lines
        "overrides": n(bad["OVERRIDE_CASES"]),
        "ablation files": n(bad["ABLATION_CASES"]) + n(bad["ABLATION_FILE_CASES"]) + 1,
        "data files": n(data["JSONL_CASES"]) + n(data["TRM_CASES"]) + n(data["NPZ_CASES"])
        + n(data["TASK_CASES"]),
        "file system": n(fs["SPECIAL_CASES"]) + n(fs["OUT_CASES"]) + 1 + 2 + 1 + 1 + 1 + 1
        + 3 + 1,  # read-only, disk full x5, umask; test_bad_inputs' caches
        "run folders": n(bad["RUN_DIR_CASES"]) + 2 + n(fs["RUN_DIR_CASES"]),
        "non-finite training": 3,
        "signals (kill -9)": n(kill["RUN_POINTS"]) + 2 * n(kill["TWICE"]) + n(kill["ABLATE_POINTS"]),
    }  # fmt: skip


def test_corpus_has_250_faults_and_40_kill_points():
    counts = corpus()
    print(json.dumps(counts, indent=1))
    kills = counts["signals (kill -9)"]
    assert kills >= 40, kills
    assert sum(counts.values()) - kills >= 250, counts
