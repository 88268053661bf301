"""Statistics over seeds and puzzles: mean and sample std, differences between two variants,
their 95% intervals and p-values, and the Holm adjustment across a table of comparisons.

``difference``: the mean of per-seed differences when both variants ran the same seeds
(paired; standard error sd/sqrt(n)), else the difference of means (Welch standard error and
degrees of freedom); 95% intervals use Student's t (``scipy.stats.t``). It sees seeds only.

``bootstrap_difference``: where every run saved its per-puzzle outcomes (``eval/puzzles.npz``),
a paired hierarchical bootstrap over seeds and puzzles, so that the evaluation set's noise is in
the interval (see ``docs/intervals.md``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

#: bootstrap replicates of a report; at B = 4000 the interval's ends move by about 1% of its
#: width between RNG seeds (sd over 30 seeds, 3 seeds x 200 puzzles)
BOOTSTRAP_B = 4000
#: the bootstrap's RNG seed: the same run folders give the same report
BOOTSTRAP_SEED = 20260407
# counts matrices larger than this many cells are drawn in chunks of replicates
_CHUNK_CELLS = 4_000_000


def t_quantile(q: float, df: float) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``)."""
    from scipy import stats  # imported when used: scipy.stats takes a second to import

    return float(stats.t.ppf(q, df))


@attrs.frozen
class Stat:
    mean: float
    std: float | None  # sample std (ddof=1); None with one value
    n: int


@attrs.frozen
class Delta:
    """variant - reference: the mean difference, its standard error and degrees of freedom."""

    mean: float
    se: float | None
    n: int  # seeds of the variant (paired: seeds both ran)
    n_ref: int  # seeds of the reference
    paired: bool
    df: float | None = None

    @property
    def seeds(self) -> str:
        return str(self.n) if self.paired else f"{self.n} vs {self.n_ref}"

    def ci95(self) -> tuple[float, float] | None:
        if self.se is None or not self.df:
            return None
        t = t_quantile(0.975, self.df)
        return self.mean - t * self.se, self.mean + t * self.se

    def p_value(self) -> float | None:
        """Two-sided p-value of "difference = 0" from Student's t; None without an interval.
        A zero standard error gives 1 for a zero mean and 0 otherwise."""
        if self.se is None or not self.df:
            return None
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        from scipy import stats

        return float(2 * stats.t.sf(abs(self.mean) / self.se, self.df))


def describe(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def difference(variant: dict[int, float], reference: dict[int, float]) -> Delta | None:
    """Paired when both ran the same seeds, else the difference of means (Welch)."""
    if not variant or not reference:
        return None
    if set(variant) == set(reference):
        diffs = [variant[s] - reference[s] for s in sorted(variant)]
        d = describe(diffs)
        se = d.std / math.sqrt(d.n) if d.std is not None else None
        return Delta(d.mean, se, d.n, d.n, True, d.n - 1 if d.n > 1 else None)
    a, b = describe(list(variant.values())), describe(list(reference.values()))
    if a.std is None or b.std is None:
        return Delta(a.mean - b.mean, None, a.n, b.n, False)
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1)) if va + vb > 0 else None
    return Delta(a.mean - b.mean, se, a.n, b.n, False, df)


# -- the paired hierarchical bootstrap -----------------------------------------------------------
@attrs.frozen
class Puzzles:
    """One run's per-puzzle values of a metric at its final evaluation, in evaluation order.
    ``eval_set`` names the puzzles evaluated (a digest of their inputs and labels): runs with
    the same ``eval_set`` saw the same puzzles in the same order and are paired by puzzle."""

    eval_set: str
    values: np.ndarray  # (N,) float64

    @property
    def mean(self) -> float:
        return float(self.values.mean())


@attrs.frozen
class Interval:
    """variant - reference with its 95% interval and the p-value of "difference = 0".

    ``method`` is ``bootstrap`` (seeds and puzzles) or ``t`` (seeds only: a run without
    per-puzzle outcomes); ``lo``/``hi``/``p`` are None where no interval exists (``t`` with one
    seed)."""

    mean: float
    lo: float | None
    hi: float | None
    p: float | None
    n: int
    n_ref: int
    paired: bool  # by seed
    method: str
    puzzles_paired: bool = False
    # the seed-only standard error (``t``); the bootstrap's sd (``seeds_and_puzzles``: the
    # larger of that and the seed-only one, as the interval is the wider of the two)
    se: float | None = None

    @property
    def seeds(self) -> str:
        return str(self.n) if self.paired else f"{self.n} vs {self.n_ref}"

    def ci95(self) -> tuple[float, float] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)

    @property
    def one_seed(self) -> bool:
        return min(self.n, self.n_ref) < 2


def t_interval(delta: Delta) -> Interval:
    """A seed-only ``difference`` as an :class:`Interval` (method ``t``)."""
    ci = delta.ci95()
    lo, hi = ci if ci else (None, None)
    return Interval(
        delta.mean, lo, hi, delta.p_value(), delta.n, delta.n_ref, delta.paired, "t", se=delta.se
    )


def bootstrap_difference(
    variant: Mapping[int, Puzzles],
    reference: Mapping[int, Puzzles],
    *,
    replicates: int = BOOTSTRAP_B,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """variant - reference (the mean over seeds of each run's mean over puzzles), with a
    percentile 95% interval and a two-sided p-value from a hierarchical bootstrap.

    Each replicate draws, for every evaluation set, one multiset of its puzzles (N from N with
    replacement) that every run evaluated on that set reuses: runs of both variants on the same
    set are so paired by puzzle, and a set shared by all seeds (the usual case: the data seed
    is not the run seed) keeps the puzzle noise common to the seeds, as it is, rather than
    shrinking it by averaging independent draws. Seeds are then drawn S from S with
    replacement, the same draw for both variants when they ran the same seeds (paired by
    seed), else independently. p = 2 min(P*(d <= 0), P*(d >= 0)), each with the +1 of a
    Monte Carlo p-value. Identical per-seed differences do not give a zero-width interval:
    the puzzles still vary."""
    if not variant or not reference:
        return None
    rng = np.random.default_rng(seed)
    runs = [("v", s, p) for s, p in variant.items()] + [("r", s, p) for s, p in reference.items()]
    # (B, run) resampled per-run means, one puzzle draw per evaluation set and replicate
    means = np.empty((replicates, len(runs)))
    sets: dict[tuple[str, int], list[int]] = {}
    for i, (_, _, p) in enumerate(runs):
        sets.setdefault((p.eval_set, len(p.values)), []).append(i)
    paired_puzzles = True
    for (_, n), members in sets.items():
        arms = {runs[i][0] for i in members}
        paired_puzzles &= arms == {"v", "r"}
        values = np.stack([runs[i][2].values for i in members]).astype(np.float64).T  # (N, R)
        chunk = max(1, _CHUNK_CELLS // max(n, 1))
        for start in range(0, replicates, chunk):
            b = min(chunk, replicates - start)
            counts = _draw_counts(rng, b, n).astype(np.float64)  # (b, N)
            means[start : start + b, members] = counts @ values / n
    v_idx = {s: i for i, (arm, s, _) in enumerate(runs) if arm == "v"}
    r_idx = {s: i for i, (arm, s, _) in enumerate(runs) if arm == "r"}
    paired = set(v_idx) == set(r_idx)
    point_v = statistics.fmean(p.mean for p in variant.values())
    point_r = statistics.fmean(p.mean for p in reference.values())
    if paired:
        order = sorted(v_idx)
        diff = means[:, [v_idx[s] for s in order]] - means[:, [r_idx[s] for s in order]]
        estimates = _resample_seeds(rng, diff)
    else:
        estimates = _resample_seeds(rng, means[:, list(v_idx.values())]) - _resample_seeds(
            rng, means[:, list(r_idx.values())]
        )
    lo, hi = np.quantile(estimates, [0.025, 0.975])
    below, above = np.count_nonzero(estimates <= 0), np.count_nonzero(estimates >= 0)
    p = min(1.0, 2 * min(below + 1, above + 1) / (replicates + 1))
    return Interval(
        point_v - point_r,
        float(lo),
        float(hi),
        p,
        len(variant),
        len(reference),
        paired,
        "bootstrap",
        puzzles_paired=paired_puzzles,
        se=float(estimates.std(ddof=1)),
    )


def seeds_and_puzzles(
    variant: Mapping[int, Puzzles],
    reference: Mapping[int, Puzzles],
    *,
    replicates: int = BOOTSTRAP_B,
    seed: int = BOOTSTRAP_SEED,
) -> Interval | None:
    """The interval a report shows: the bootstrap over seeds and puzzles, widened to the
    seed-only t interval where that is wider (p the larger of the two).

    Why both: a percentile bootstrap over 3 seeds cannot reach past the seeds it has (its
    interval is about [min, max] of them), so where seeds dominate the spread it covers ~77%
    (see ``docs/intervals.md``); Student's t knows how little 3 seeds say, and the bootstrap
    adds the puzzles that t cannot see."""
    boot = bootstrap_difference(variant, reference, replicates=replicates, seed=seed)
    if boot is None:
        return None
    seeds = difference(
        {s: p.mean for s, p in variant.items()}, {s: p.mean for s, p in reference.items()}
    )
    ci, p = (seeds.ci95(), seeds.p_value()) if seeds is not None else (None, None)
    if ci is None or p is None:  # one seed on a side: the puzzles alone
        return boot
    lo, hi, se = min(boot.lo, ci[0]), max(boot.hi, ci[1]), max(boot.se, seeds.se)
    return attrs.evolve(boot, lo=lo, hi=hi, p=max(boot.p, p), se=se)


def _resample_seeds(rng: np.random.Generator, means: np.ndarray) -> np.ndarray:
    """(B,) the mean over S seeds drawn with replacement from each replicate's (B, S) means."""
    b, s = means.shape
    weights = _draw_counts(rng, b, s)  # (B, S) times each seed is drawn
    return (weights * means).sum(axis=1) / s


def _draw_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows, n) how often each of n items is drawn in n draws with replacement, per row (a
    multinomial; drawn as indices and counted, several times faster than rng.multinomial)."""
    picks = rng.integers(n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n)


# -- multiple comparisons ------------------------------------------------------------------------
def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the given order (None stays None and is not
    counted): the i-th smallest of m is multiplied by m - i + 1, then made non-decreasing."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
