"""The accuracy-vs-cost front of a study's candidate students: which are not beaten by a cheaper one.

Pure functions on plain numbers (no torch, no Optuna), used for the validation front that the final comparison
retrains and for the report's test-split front.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping


def dominated_by(points: Mapping[str, tuple[float, float]]) -> dict[str, str | None]:
    """For each name of ``points`` (name → (cost, value); lower cost and higher value are better): the name of a
    point that dominates it (cost ≤, value ≥, one of them strictly; the cheapest such, then the best), or None
    when none does: those form the front. A NaN value is dominated by any point with a number."""
    out: dict[str, str | None] = {}
    for name, (cost, value) in points.items():
        better = [
            (c, -v, other)
            for other, (c, v) in points.items()
            if other != name
            and not math.isnan(v)
            and (math.isnan(value) or (c <= cost and v >= value and (c < cost or v > value)))
        ]
        out[name] = min(better)[2] if better else None
    return out


def front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The names on the front of ``points`` (see ``dominated_by``), cheapest first."""
    beaten = dominated_by(points)
    return sorted((n for n, by in beaten.items() if by is None), key=lambda n: (points[n][0], n))


def over_budget(costs: Mapping[str, Mapping[str, float | None]], budgets: Mapping[str, float]) -> dict[str, str]:
    """Name → why, for each of ``costs`` (name → cost field → value) over any of ``budgets`` (field → most
    allowed); a cost that was not measured (None, e.g. no ONNX file) counts as over its budget."""
    out: dict[str, str] = {}
    for name, cost in costs.items():
        why = []
        for field, most in budgets.items():
            value = cost.get(field)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                why.append(f"{field} not measured")
            elif value > most:
                why.append(f"{field} {value:.4g} > {most:.4g}")
        if why:
            out[name] = ", ".join(why)
    return out


def hypervolume(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` ((cost, value); lower cost and higher value are better) and bounded by
    ``reference`` (a cost no point should exceed, a value none should fall below): the 2-D hypervolume. Points
    at or beyond the reference, or with a NaN, add nothing; 0.0 for none."""
    ref_cost, ref_value = reference
    kept = sorted((c, v) for c, v in points if not (math.isnan(c) or math.isnan(v)) and c < ref_cost and v > ref_value)
    area, best = 0.0, ref_value
    for i, (cost, value) in enumerate(kept):  # cheapest first: each point adds the strip up to the next cost
        best = max(best, value)
        next_cost = kept[i + 1][0] if i + 1 < len(kept) else ref_cost
        area += (next_cost - cost) * (best - ref_value)
    return area
