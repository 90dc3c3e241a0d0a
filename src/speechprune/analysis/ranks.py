"""Rank statistics as pure functions (scipy is not a dependency)."""

from __future__ import annotations

import math
from typing import Sequence


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; ``nan`` when fewer than two points or either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"pearson: lengths differ ({len(x)} vs {len(y)})")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks, so ties are handled like ``scipy.stats.spearmanr``);
    ``nan`` when fewer than two points or either side is constant. Non-finite values are not allowed."""
    if any(not math.isfinite(v) for v in [*x, *y]):
        raise ValueError("spearman: values must be finite")
    return pearson(average_ranks(x), average_ranks(y))
