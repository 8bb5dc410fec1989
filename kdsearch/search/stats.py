"""Paired statistics for the final comparison: students that share seeds differ by seed, not by luck of init.

Pure functions of plain numbers; no torch, no scipy (Student's t quantiles come from a table).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` paired by seed: mean, sample std and 95% t-interval of the per-seed differences.

    With one pair the std and interval are None ("n/a"); ``significant`` only when the interval excludes 0.
    """

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    @property
    def significant(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, unit: str = " pp") -> str:
        """``+1.23 pp [95% CI +0.40, +2.06]``, ``n/a`` for the interval of one seed; values × ``scale``."""
        mean = f"{self.mean * scale:+.2f}{unit}"
        if self.low is None or self.high is None:
            return f"{mean} [95% CI n/a: 1 seed]"
        mark = ", significant" if self.significant else ""
        return f"{mean} [95% CI {self.low * scale:+.2f}, {self.high * scale:+.2f}{mark}]"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """Per-pair differences ``a[i] - b[i]`` summarised with a two-sided 95% Student-t interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need the same, non-zero length (got {len(a)} and {len(b)})")
    diffs = [x - y for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n == 1:
        return PairedDifference(1, mean, None, None, None)
    std = statistics.stdev(diffs)
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return PairedDifference(n, mean, std, mean - half, mean + half)


def paired_by_seed(values: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDifference | None:
    """``paired_difference`` of ``values`` minus ``baseline`` (each seed → value) over the seeds both have;
    None when they share none."""
    shared = [seed for seed in values if seed in baseline]
    if not shared:
        return None
    return paired_difference([values[s] for s in shared], [baseline[s] for s in shared])
