"""Paired statistics for the final comparison: students that share seeds differ by seed, not by luck of init.

Pure functions of plain numbers; no torch, no scipy (Student's t quantiles come from a table).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

# Two-sided 95% quantiles t_{0.975, df} of Student's t, df = 1..30 (exact to 4 decimals).
# fmt: off
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
# fmt: on
_Z975 = 1.959963985


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom: the table up to 30, then the Cornish-Fisher expansion
    (within 1e-4 of the exact value beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz, as in Numerical
    Recipes' ``betacf``), converged to 1e-14."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value of Student's t statistic ``t`` with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: rejecting those under alpha controls the
    family-wise error rate at alpha across the family."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` paired by seed: mean, sample std, 95% t-interval and two-sided p-value of the per-seed differences.

    With one pair the std, interval and p are None ("n/a"). ``significant``: the interval excludes 0 (p < 0.05),
    or, when the row is one of several compared with the same baseline, its Holm-adjusted p (``holm_p``) < 0.05.
    """

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    p: float | None = None
    holm_p: float | None = None  # set by ``with_holm`` across a family of comparisons (None: not corrected)

    @property
    def significant(self) -> bool:
        if self.holm_p is not None:
            return self.holm_p < 0.05
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, unit: str = " pp") -> str:
        """``+1.23 pp [95% CI +0.40, +2.06]`` (``; Holm p 0.031`` when corrected), ``n/a`` for the interval of one
        seed; values × ``scale``."""
        mean = f"{self.mean * scale:+.2f}{unit}"
        if self.low is None or self.high is None:
            return f"{mean} [95% CI n/a: 1 seed]"
        holm = f"; Holm p {self.holm_p:.3f}" if self.holm_p is not None else ""
        mark = ", significant" if self.significant else ""
        return f"{mean} [95% CI {self.low * scale:+.2f}, {self.high * scale:+.2f}{holm}{mark}]"


def with_holm(family: Sequence[PairedDifference]) -> list[PairedDifference]:
    """``family`` (comparisons with one baseline) with Holm-adjusted p-values; unchanged when fewer than two of
    them have a p-value (one comparison needs no correction)."""
    tested = [i for i, d in enumerate(family) if d.p is not None]
    if len(tested) < 2:
        return list(family)
    adjusted = holm_adjusted([family[i].p for i in tested])  # type: ignore[misc]
    out = list(family)
    for i, q in zip(tested, adjusted):
        out[i] = replace(family[i], holm_p=q)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Per-pair differences ``a[i] - b[i]`` summarised with a two-sided 95% Student-t interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same, non-zero length (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        return PairedDifference(1, mean, None, None, None)
    std = statistics.stdev(diffs)
    se = std / math.sqrt(n)
    half = t_quantile_975(n - 1) * se
    p = (1.0 if mean == 0 else 0.0) if se == 0 else t_two_sided_p(mean / se, n - 1)
    return PairedDifference(n, mean, std, mean - half, mean + half, p)


def paired_by_seed(values: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference | None:
    """``paired_difference`` of ``values`` minus ``baseline`` (each seed → value) over the seeds both have;
    None when they share none."""
    shared = [seed for seed in values if seed in baseline]
    if not shared:
        return None
    return paired_difference([values[s] for s in shared], [baseline[s] for s in shared])
