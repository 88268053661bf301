"""Statistics over seeds: mean and sample std, and differences between two variants.

Mean and sample standard deviation (ddof=1; none with one value). A difference is the mean of
per-seed differences when both variants ran the same seeds (paired; standard error sd/sqrt(n)),
else the difference of means (Welch standard error and degrees of freedom); 95% intervals use
Student's t.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs

# t_{0.975, df} for df = 1..30; above that the normal 1.96 is close enough
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


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
        t = T975[min(int(self.df), len(T975)) - 1] if self.df <= len(T975) else 1.96
        return self.mean - t * self.se, self.mean + t * self.se


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
