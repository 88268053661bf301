"""Voting, pass@k and the submission format, against hand-computed and brute-force answers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from ponderkit.plugins.arc.voting import (
    pass_at_k,
    rank,
    scores,
    submission,
    validate_submission,
)

A = np.array([[1, 2]])
B = np.array([[3], [4]])
C = np.array([[5]])
EMPTY = np.zeros((0, 0), dtype=np.int64)


def names(grids):
    table = {A.tobytes() + bytes(A.shape): "A", B.tobytes() + bytes(B.shape): "B"}
    table[C.tobytes() + bytes(C.shape)] = "C"
    return [table[g.tobytes() + bytes(g.shape)] for g in grids]


def test_count_vote_on_hand_made_predictions():
    # A: 2 votes (conf .1 + .2); B: 2 votes (.9 + .8); C: 1 vote (1.0); EMPTY never counts
    preds = [(A, 0.1), (B, 0.9), (C, 1.0), (A, 0.2), (B, 0.8), (EMPTY, 1.0)]
    assert names(rank(preds, "count")) == ["B", "A", "C"]  # tie A/B broken by mean conf
    # sums: A .3, B 1.7, C 1.0
    assert names(rank(preds, "confidence")) == ["B", "C", "A"]
    # full ties (count and confidence) go to the first predicted
    assert names(rank([(C, 0.5), (A, 0.5)], "count")) == ["C", "A"]


def test_pass_at_k_needs_every_test_output():
    ranked = {"t1": [[A, B], [C]], "t2": [[B, A, C]]}
    truth = {"t1": [B, C], "t2": [C]}
    assert pass_at_k(ranked, truth, 1) == {"t1": False, "t2": False}
    assert pass_at_k(ranked, truth, 2) == {"t1": True, "t2": False}
    s = scores(ranked, truth)
    assert s["pass@1"] == 0 and s["pass@2"] == 0.5
    assert s["outputs_pass@1"] == 1 / 3 and s["outputs_pass@2"] == 2 / 3


def brute_force_pass2(views, truth) -> float:
    """Score tasks from raw per-view predictions with a separate implementation: count
    each distinct grid with Counter, order by (count, mean confidence, first index)."""
    solved = 0
    for task, tests in views.items():
        ok = True
        for j, preds in enumerate(tests):
            keys = [tuple(map(tuple, g.tolist())) for g, _ in preds if g.size]
            confs = [c for g, c in preds if g.size]
            counts = Counter(keys)
            first = {k: keys.index(k) for k in counts}
            mean = {
                k: np.mean([c for kk, c in zip(keys, confs, strict=True) if kk == k])
                for k in counts
            }
            top = sorted(counts, key=lambda k: (-counts[k], -mean[k], first[k]))[:2]
            ok &= tuple(map(tuple, truth[task][j].tolist())) in top
        solved += ok
    return solved / len(views)


grid_st = st.sampled_from([A, B, C, np.array([[1, 2]]) * 0 + 9, EMPTY])
view_st = st.tuples(grid_st, st.sampled_from([0.1, 0.5, 0.9]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.lists(view_st, min_size=1, max_size=8), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_pass_at_2_matches_a_brute_force_scorer(tasks, data):
    views = {f"t{i}": tests for i, tests in enumerate(tasks)}
    truth = {
        t: [data.draw(st.sampled_from([A, B, C])) for _ in tests] for t, tests in views.items()
    }
    ranked = {t: [rank(p, "count") for p in tests] for t, tests in views.items()}
    assert scores(ranked, truth)["pass@2"] == brute_force_pass2(views, truth)


def test_submission_follows_the_documented_schema():
    ranked = {"t1": [[A, B], [C]], "t2": [[]]}
    sub = json.loads(json.dumps(submission(ranked)))
    assert validate_submission(sub, {"t1": 2, "t2": 1}) == []
    assert sub["t1"][0] == {"attempt_1": [[1, 2]], "attempt_2": [[3], [4]]}
    assert sub["t1"][1] == {"attempt_1": [[5]], "attempt_2": [[5]]}  # one candidate: repeated
    assert sub["t2"][0] == {"attempt_1": [[0]], "attempt_2": [[0]]}  # none readable


def test_submission_validator_rejects_what_departs_from_the_schema():
    good = {"t1": [{"attempt_1": [[1]], "attempt_2": [[2, 3]]}]}
    assert validate_submission(good, {"t1": 1}) == []
    bad = [
        ([], "top level"),
        ({}, "missing tasks: t1"),
        ({**good, "x": []}, "unknown tasks: x"),
        ({"t1": []}, "expected a list of 1"),
        ({"t1": [{"attempt_1": [[1]]}]}, "exactly the keys"),
        ({"t1": [{"attempt_1": [[1], [2, 3]], "attempt_2": [[1]]}]}, "unequal length"),
        ({"t1": [{"attempt_1": [[10]], "attempt_2": [[1]]}]}, "ints 0..9"),
        ({"t1": [{"attempt_1": [[True]], "attempt_2": [[1]]}]}, "ints 0..9"),
        ({"t1": [{"attempt_1": [], "attempt_2": [[1]]}]}, "1..30 rows"),
        ({"t1": [{"attempt_1": [[0] * 31], "attempt_2": [[1]]}]}, "1..30 columns"),
    ]
    for obj, message in bad:
        errors = validate_submission(obj, {"t1": 1})
        assert any(message in e for e in errors), (obj, errors)
