"""Intervals for differences between variants: the bootstrap over seeds and puzzles, its
coverage on synthetic experiments whose true difference is known, Holm's adjustment and the t
quantiles, each against an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ponderkit.lab.stats import (
    Puzzles,
    bootstrap_difference,
    difference,
    holm,
    seeds_and_puzzles,
    t_quantile,
)


def test_t_quantiles_are_the_known_values():
    # printed tables: t_{0.975,1} = 12.706205, t_{0.975,2} = 4.302653, t_{0.975,30} = 2.042272
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    # df = 2 has a closed form: t_q = (2q - 1) sqrt(2 / (1 - (2q - 1)^2)), here q = 0.9
    assert t_quantile(0.9, 2) == pytest.approx(0.8 * math.sqrt(2 / (1 - 0.64)), rel=1e-12)
    # Welch's fractional degrees of freedom are used as they are, not rounded
    assert t_quantile(0.975, 2.5) < t_quantile(0.975, 2)


def test_holm_against_hand_computed_adjusted_p_values():
    # p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005, 0.01, 0.03, 0.04, times m - i + 1
    # = 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; made non-decreasing: 0.02, 0.03, 0.06, 0.06.
    # Back in the given order: 0.01 -> 0.03, 0.04 -> 0.06, 0.03 -> 0.06, 0.005 -> 0.02.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None (no interval) is neither adjusted nor counted: m = 2 here; capped at 1
    assert holm([0.3, None, 0.6]) == [pytest.approx(0.6), None, pytest.approx(0.6)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def runs(values: np.ndarray, eval_set: str | list[str] = "set") -> dict[int, Puzzles]:
    """(S, N) per-puzzle values -> one run per seed."""
    sets = [eval_set] * len(values) if isinstance(eval_set, str) else eval_set
    return {s: Puzzles(sets[s], np.asarray(v, float)) for s, v in enumerate(values)}


def test_identical_seed_differences_with_different_puzzles_keep_a_width():
    """The issue's case: two seeds, each beats the baseline by the same one puzzle of 64. The
    seed-only interval is [1.5625, 1.5625] pp ("better"); over puzzles, the one puzzle is
    absent from (63/64)^64 = 36.5% of resamples, so the interval reaches 0 and p is large."""
    base = np.zeros((2, 64))
    base[:, :32] = 1  # half the puzzles solved by both arms
    variant = base.copy()
    variant[:, 40] = 1  # and one more by the variant, the same puzzle in both seeds
    seed_only = difference({0: 33 / 64, 1: 33 / 64}, {0: 0.5, 1: 0.5})
    assert seed_only.se == 0  # the old interval: zero width
    iv = seeds_and_puzzles(runs(variant), runs(base))
    assert iv.method == "bootstrap" and iv.paired and iv.puzzles_paired
    assert iv.mean == pytest.approx(1 / 64)
    assert iv.lo == 0 and iv.hi >= 2 / 64 and iv.hi > iv.lo
    share_without = (63 / 64) ** 64
    assert iv.p == pytest.approx(min(1.0, 2 * share_without), abs=0.05)


def test_one_seed_bootstrap_matches_the_standard_error_of_paired_puzzles():
    """With one seed each and paired puzzles the bootstrap is the ordinary one over puzzle
    differences d_j: its sd -> sd(d) sqrt((N-1)/N) / sqrt(N) (the plug-in standard error)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 400)), rng.random((1, 400))
    d = a[0] - b[0]
    iv = bootstrap_difference(runs(a), runs(b), replicates=4000)
    plug_in = d.std(ddof=0) / math.sqrt(len(d))
    assert iv.se == pytest.approx(plug_in, rel=0.05)
    assert iv.mean == pytest.approx(d.mean())
    # the same values on different evaluation sets are not paired by puzzle: the interval
    # then carries both arms' puzzle noise, not the noise of their differences
    correlated = np.vstack([a[0] + 0.1 * rng.random(400)])
    paired = bootstrap_difference(runs(correlated), runs(a), replicates=2000)
    unpaired = bootstrap_difference(runs(correlated, "x"), runs(a, "y"), replicates=2000)
    assert not unpaired.puzzles_paired and paired.puzzles_paired
    assert unpaired.se > 5 * paired.se


def test_the_same_folders_give_the_same_interval():
    rng = np.random.default_rng(1)
    a, b = runs(rng.random((3, 50))), runs(rng.random((3, 50)))
    assert seeds_and_puzzles(a, b) == seeds_and_puzzles(a, b)


def coverage(make, truth: float, experiments: int = 300) -> tuple[float, float, float]:
    """Shares of ``experiments`` synthetic experiments whose 95% interval holds ``truth``:
    the report's interval, the bootstrap alone and the seed-only t interval."""
    rng = np.random.default_rng(2026)
    hits = np.zeros(3)
    for i in range(experiments):
        a, b = make(rng)
        # 500 replicates: the interval's ends move by a little, its coverage by less
        boot = bootstrap_difference(a, b, replicates=500, seed=i)
        shown = seeds_and_puzzles(a, b, replicates=500, seed=i)
        t = difference({s: p.mean for s, p in a.items()}, {s: p.mean for s, p in b.items()})
        lo, hi = t.ci95()
        hits += [shown.lo <= truth <= shown.hi, boot.lo <= truth <= boot.hi, lo <= truth <= hi]
    return tuple(hits / experiments)


def test_coverage_when_puzzles_make_the_noise():
    """3 seeds on one shared set of 64 puzzles drawn from a population: x[a, s, j] = mu_a +
    v_j + w_aj (puzzle difficulty v, arm-by-puzzle w, sd 0.5 each, no seed effect). The true
    difference is mu_A - mu_B = 0.1; every seed shows the same difference, so the seed-only t
    interval has width 0 and almost never holds the truth."""

    def make(rng):
        v, w = rng.normal(0, 0.5, 64), rng.normal(0, 0.5, (2, 64))
        a, b = np.tile(0.1 + v + w[0], (3, 1)), np.tile(v + w[1], (3, 1))
        return runs(a), runs(b)

    shown, boot, t = coverage(make, 0.1)
    assert 0.91 <= shown <= 0.99 and 0.91 <= boot <= 0.99
    assert t < 0.1


def test_coverage_when_seeds_make_the_noise():
    """3 seeds per arm, seed effects (sd 0.3) far above the puzzle noise (arm-by-puzzle sd
    0.1, per-run noise sd 0.1) on one set of 64 puzzles; truth 0.1. The percentile bootstrap
    over 3 seeds cannot reach past them and covers ~75%; the report's interval, widened to
    Student's t, covers ~95%."""

    def make(rng):
        v, w = rng.normal(0, 0.5, 64), rng.normal(0, 0.1, (2, 64))
        u = rng.normal(0, 0.3, (2, 3, 1))
        noise = rng.normal(0, 0.1, (2, 3, 64))
        a = 0.1 + v + w[0] + u[0] + noise[0]
        b = v + w[1] + u[1] + noise[1]
        return runs(a), runs(b)

    shown, boot, t = coverage(make, 0.1)
    assert 0.91 <= shown <= 0.99 and 0.91 <= t <= 0.99
    assert boot < 0.85


def test_unpaired_seeds_and_per_seed_sets():
    """Seeds 0-2 against 3-5, each run on an evaluation set of its own (a task whose puzzles
    follow the run seed): nothing is paired, and the point estimate is the difference of the
    seed means."""
    rng = np.random.default_rng(3)
    a = runs(rng.random((3, 30)), [f"a{s}" for s in range(3)])
    b = {s + 3: p for s, p in runs(rng.random((3, 30)), [f"b{s}" for s in range(3)]).items()}
    iv = seeds_and_puzzles(a, b)
    assert not iv.paired and not iv.puzzles_paired and iv.seeds == "3 vs 3"
    want = np.mean([p.mean for p in a.values()]) - np.mean([p.mean for p in b.values()])
    assert iv.mean == pytest.approx(want)
    assert iv.lo < iv.mean < iv.hi
