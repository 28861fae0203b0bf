"""The percentile helper: the nearest-rank percentile of an ascending list, in exact integer arithmetic.

``percentile(ordered, q)`` is the smallest value with at least ``q`` percent of the values at or below it
(rank ``ceil(n * q / 100)``, at least 1). The aggregator's feed-lag p50/p99 (``FeedMetrics``,
``source=aggregator``) and the benchmarks' latency figures use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T", int, float)


def percentile(ordered: Sequence[T], q: float) -> T:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of a non-empty ascending sequence."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
