"""Command-line niceties: diff's exit status, list PATTERN and list experiments, per-field help
in show for every built-in component, predict on a puzzle that is not uniquely solvable."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from ponderkit.app.cli import main
from ponderkit.app.cli_tools import field_help
from ponderkit.contract.config import fields_of
from ponderkit.contract.registry import KINDS
from ponderkit.plugins.tasks.sudoku_solver import count_solutions

REPO = Path(__file__).resolve().parents[2]


def test_diff_exits_1_when_the_inputs_differ(sort_yaml, write, capsys):
    other = write("other.yaml", sort_yaml.read_text().replace("d_model: 32", "d_model: 16"))
    assert main(["diff", str(sort_yaml), str(sort_yaml)]) == 0
    assert main(["diff", str(sort_yaml), str(other)]) == 1
    assert "model.d_model" in capsys.readouterr().out


def test_list_pattern_matches_names_and_kind_slash_name(registry, capsys):
    assert main(["list", "*moe*"]) == 0
    out = capsys.readouterr().out
    want = [n for n in registry.names("ffn") if "moe" in n]  # by hand: dynmoe
    assert want and all(f"  {n} " in out for n in want) and "swiglu" not in out
    assert main(["list", "halting/*"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "halting:"
    assert all(f"  {n} " in out for n in registry.names("halting"))
    assert main(["list", "*no-such*"]) == 1
    assert "no component matches '*no-such*'" in capsys.readouterr().err


def test_list_experiments_names_every_shipped_file(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["list", "experiments"]) == 0
    out = capsys.readouterr().out.splitlines()
    shipped = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))
    assert [line.split()[0] for line in out[1:]] == shipped
    row = next(x for x in out if x.split()[0] == "trm_sudoku_mlp.yaml")
    assert " run " in row and "TRM on Sudoku-Extreme" in row  # its first comment line
    row = next(x for x in out if x.split()[0] == "ablate_eavi.yaml")
    assert " ablation " in row


def test_every_field_of_every_built_in_component_has_help(registry):
    missing = [
        f"{kind}/{name}.{f.name}"
        for kind in KINDS
        for name in registry.names(kind)
        for f in fields_of(registry.get(kind, name).config_cls)
        if not field_help(registry.get(kind, name).config_cls).get(f.name, "").strip()
    ]
    assert not missing, f"{len(missing)} fields without help: {', '.join(missing)}"


def test_show_prints_each_fields_help(capsys):
    assert main(["show", "callback/tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "  dir: str = 'tensorboard'  # event-file folder, relative to the run directory" in out


def _brute_force_4x4(puzzle: np.ndarray) -> int:
    """Solutions of a 4x4 Sudoku by trying every grid of permuted rows (24^4)."""
    rows = list(itertools.permutations(range(1, 5)))
    grid = puzzle.reshape(4, 4)
    options = [
        [r for r in rows if all(g == 0 or g == v for g, v in zip(grid[i], r, strict=True))]
        for i in range(4)
    ]
    count = 0
    for pick in itertools.product(*options):
        g = np.array(pick)
        boxes = [g[r : r + 2, c : c + 2].ravel() for r in (0, 2) for c in (0, 2)]
        if all(len(set(u)) == 4 for u in [*g.T, *boxes]):
            count += 1
    return count


@pytest.mark.parametrize(
    "text",
    [
        "1..4.4....4.4..1",
        "1.........4.4..1",
        "12343412214343.1",
        "11..............",
        "1234341221434321",
    ],
)
def test_count_solutions_against_brute_force(text):
    puzzle = np.array([0 if c == "." else int(c) for c in text])
    assert count_solutions(puzzle, 4, limit=2) == min(2, _brute_force_4x4(puzzle))


SUDOKU4 = """
name: tiny_sudoku4
task: {name: sudoku, size: 4, difficulty: easy, train_size: 64, eval_size: 16, leak_check: false}
model:
  d_model: 16
  positions: none
  recursion:
    name: trm
    layers: 1
    H_cycles: 1
    L_cycles: 1
    block: {name: post_norm, mixer: {name: mlp_t, expansion: 2}, ffn: {name: swiglu, expansion: 2}}
  halting: {name: q_head, max_steps: 2}
schedule: deep_supervision
train: {steps: 2, batch_size: 16, log_every: 1, eval_every: 0, threads: 1, flops_every: 0}
"""


def test_predict_says_when_the_puzzle_is_not_uniquely_solvable(write, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(write("s.yaml", SUDOKU4)), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    cases = {
        "1..4\n.4..\n..4.\n4..1\n": "more than one solution",  # brute force: 2
        "11..\n....\n....\n....\n": "no solution",
        "1234\n3412\n2143\n43.1\n": None,  # one blank: unique
    }
    for text, note in cases.items():
        puzzle = tmp_path / "p.txt"
        puzzle.write_text(text)
        main(["predict", str(run), str(puzzle)])
        out, err = capsys.readouterr()
        assert out.splitlines()[-1].startswith("valid: ")  # stdout as before
        if note is None:
            assert "note:" not in err
        else:
            assert f"note: the puzzle has {note}" in err
    assert os.environ.get("PONDERKIT_CACHE")  # the conftest's cache, not the user's
